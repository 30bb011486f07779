"""Re-check studies/serve_load/results/serve_load.json (docs/results/serve_load.md): re-run the same
load (same checkpoint, endpoint, max_tokens, threads, clients x requests) against a fresh
`tilelli serve` on 127.0.0.1 and compare.

Exact: errors (0) and the bytes generated in each phase (greedy decoding over fixed prompts).
Within 50 %: the 16-client / 1-client ratio of aggregate bytes/s (absolute speed depends on the
machine and its load; the ratio much less). serve_load.md must render serve_load.json.

    python -m studies.serve_load.check        # ~2 minutes on 2 CPU cores; pause other work first
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from studies.checker import Checker
from studies.common import rerun
from studies.serve_load.benchmark import RESULTS, markdown

RATIO_TOLERANCE = 0.5


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, before minutes of work
    checker = Checker()
    pub = json.loads((RESULTS / "serve_load.json").read_text())
    s = pub["settings"]
    clients = max(p["clients"] for p in pub["phases"])
    with tempfile.TemporaryDirectory() as tmp:
        rerun("studies.serve_load.benchmark", "--clients", str(clients), "--requests", str(s["requests_per_client"]),
              "--max-tokens", str(s["max_tokens"]), "--endpoint", s["endpoint"], "--threads", str(s["threads"]),
              "--out", tmp, "--docs", tmp, quiet=False)
        now = json.loads((Path(tmp) / "serve_load.json").read_text())
    checker.check("checkpoint", pub["checkpoint"], now["checkpoint"])
    for p, n in zip(pub["phases"], now["phases"], strict=True):
        checker.check(f"{p['clients']} client(s): errors", p["errors"], n["errors"])
        checker.check(f"{p['clients']} client(s): bytes generated", p["bytes"], n["bytes"])
    if len(pub["phases"]) == 2:
        ratio = lambda r: r["phases"][1]["bytes_per_s"] / r["phases"][0]["bytes_per_s"]  # noqa: E731
        checker.check(f"{clients} clients / 1 client, bytes/s", ratio(pub), ratio(now), RATIO_TOLERANCE)
    checker.page("serve_load", markdown(pub))
    return checker.finish("server load")


if __name__ == "__main__":
    sys.exit(main())
