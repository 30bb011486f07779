"""`tilelli export --web`: a static site that chats with the model in the tab.

What it writes: index.html (the `tilelli serve` chat page, its API client replaced by
tilelli/web/page.js: one page, one look, one message view), tilelli.js and worker.js
(tilelli/web/, as they are), engine-relaxed.wasm and engine.wasm (`tilelli.web.wasm`: the
worker takes the first its browser accepts) and model.tlm (`tilelli.infer.model_file`, which
carries the chat template flag, the abstain rule's thresholds and refusal detector, and the
sampling defaults). Every file is fetched from the page's own origin: opened from any static
file server, it makes no other request.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tilelli.web.wasm import build_wasm

HERE = Path(__file__).parent
ASSETS = ("tilelli.js", "worker.js")
SERVE_PAGE = HERE.parent / "serve" / "static" / "index.html"
INT8_OFF = "const INT8 = false;"  # worker.js's switch for the integer path, as shipped


def tab_page() -> str:
    """The serve chat page with its own script (between page:start and page:end) replaced by the
    in-tab one, after tilelli.js."""
    page = SERVE_PAGE.read_text()
    own = re.search(r"// page:start\n.*?// page:end\n", page, re.S)
    assert own and page.count("<script>\n") == 1, f"{SERVE_PAGE} must mark its own script once"
    page = page[:own.start()] + (HERE / "page.js").read_text() + page[own.end():]
    return page.replace("<script>\n", '<script src="tilelli.js"></script>\n<script>\n')


def write_site(out: Path, int8: bool = False) -> None:
    """Everything but the model file into `out` (an existing directory); `int8`: the page runs
    the integer path (worker.js's INT8 constant)."""
    for name in ASSETS:
        shutil.copyfile(HERE / name, out / name)
    if int8:
        worker = (out / "worker.js").read_text()
        assert worker.count(INT8_OFF) == 1, f"worker.js must hold {INT8_OFF!r} once"
        (out / "worker.js").write_text(worker.replace(INT8_OFF, "const INT8 = true;"))
    (out / "index.html").write_text(tab_page())
    for name, module in build_wasm().items():
        shutil.copyfile(module, out / name)


@contextlib.contextmanager
def static_server(root: Path) -> Iterator[tuple[str, list[str]]]:
    """A static file server for `root` on 127.0.0.1; yields its URL and the paths requested (what the
    tests and studies/speed/web_runner.py load a site from, and check it asks for nothing else)."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
