"""The exported site (`tilelli export --web`) in headless Chromium, from a loopback static server:
the same greedy bytes as `tilelli generate`, the same chat replies and abstentions as `tilelli
chat`, and no request outside the page's own origin; the relaxed-SIMD module and the SIMD128 one
alike. Skips without the WebAssembly compiler (the `web` extra) or chromium + chromium-driver."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from exported import PROMPT, SHIPPED, chat_reply, detector_rule, export, generated, tiny_checkpoint
from test_serve_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401  (the browser fixture)

from tilelli.chat.abstain import AbstainRule
from tilelli.cli import main
from tilelli.web import wasm
from tilelli.web.site import static_server

needs_browser = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                   reason="needs Debian's chromium and chromium-driver")
pytestmark = pytest.mark.skipif(not wasm.available(), reason='needs the WebAssembly compiler: pip install -e ".[web]"')


def in_page(driver, script: str, *args):
    """Run `script` (a Promise-returning expression over window.tilelli and `args`) in the page."""
    driver.set_script_timeout(60)
    return driver.execute_async_script(
        f"const done = arguments[arguments.length - 1]; const args = arguments;"
        f"Promise.resolve({script}).then(done, (e) => done({{error: String(e)}}));", *args)


def completed(driver, url: str) -> str:
    driver.get(url + "/")
    return in_page(driver, "tilelli.ready.then(() => tilelli.complete(args[0], 64))", PROMPT)


@needs_browser
@pytest.mark.parametrize("kind", ["ternary", "fp32"])
def test_greedy_continuation_is_tilelli_generates_and_stays_on_its_origin(browser, tmp_path, capsysbinary, kind):  # noqa: F811
    ckpt = tiny_checkpoint(tmp_path, kind)
    site = export(ckpt, tmp_path / "site", "web")
    with static_server(site) as (url, requests):
        text = completed(browser, url)
        entries = browser.execute_script("return performance.getEntries().map((e) => e.name)")
    # a tiny model writes any byte: the page decodes as Python's "replace" does (the Unicode practice)
    assert PROMPT + text + "\n" == generated(ckpt, capsysbinary).decode("utf-8", "replace")
    assert all(e.startswith(url) for e in entries if "://" in e), entries
    assert {r.split("?")[0] for r in requests} <= {"/", "/tilelli.js", "/worker.js",
                                                   "/engine-relaxed.wasm", "/model.tlm", "/favicon.ico"}, requests


@needs_browser
@pytest.mark.parametrize("module", ["relaxed", "simd128"])
@pytest.mark.parametrize("options", [(), ("--no-int8",)], ids=["int8", "float"])
def test_shipped_default_model(browser, tmp_path, capsysbinary, options, module):  # noqa: F811
    """Both modules, both paths (the integer path, a ternary model's default, and the float
    path): the same bytes as `tilelli generate`. Chromium takes the relaxed-SIMD module; the
    SIMD128 one is tested by serving it under the relaxed one's name."""
    site = export(SHIPPED, tmp_path / "site", "web", *options)
    assert ("const INT8 = true;" in (site / "worker.js").read_text()) == (options == ())
    if module == "simd128":
        shutil.copyfile(site / "engine.wasm", site / "engine-relaxed.wasm")
    with static_server(site) as (url, _):
        text = completed(browser, url)
        assert in_page(browser, "fetch('engine-relaxed.wasm').then((r) => r.arrayBuffer())"
                                ".then((b) => WebAssembly.validate(b))")  # (what the worker asks)
    assert (PROMPT + text + "\n").encode() == generated(SHIPPED, capsysbinary, 64, *options)  # valid UTF-8


@needs_browser
@pytest.mark.parametrize("surprise", [1e9, 1.0], ids=["answers", "abstains"])
def test_chat_is_tilelli_chats(browser, tmp_path, surprise):  # noqa: F811
    rule = AbstainRule(0.5, surprise)
    ckpt = tiny_checkpoint(tmp_path, "ternary", rule)
    site = export(ckpt, tmp_path / "site", "web")
    text = "Tell me a story about a cat."
    with static_server(site) as (url, _):
        browser.get(url + "/")
        got = in_page(browser, "tilelli.chat([{role: 'user', content: args[0]}], {temperature: 0, maxTokens: 40})",
                      text)
        shown = typed(browser, text, 40)  # the page itself: its composer, its message view
    reply, abstained = chat_reply(ckpt, rule, text)
    assert (got["reply"], got["abstained"]) == (reply, abstained)
    assert shown == (reply, abstained)


def typed(driver, text: str, max_bytes: int) -> tuple[str, bool]:
    """Send `text` through the page's composer at temperature 0; the reply as the page shows it
    (every character a shaded span) and whether it is marked abstained."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    for field, value in (("temperature", "0"), ("max-tokens", str(max_bytes))):
        driver.find_element(By.ID, field).clear()
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    done = ".msg.assistant[data-state=done]"
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, done))
    msg = driver.find_element(By.CSS_SELECTOR, done)
    chars = msg.find_elements(By.CSS_SELECTOR, ".body .c[data-p]")
    reply = "".join(c.get_attribute("textContent") for c in chars)
    assert reply == msg.find_element(By.CLASS_NAME, "body").get_attribute("textContent")
    return reply, msg.get_attribute("data-abstained") == "true"


@needs_browser
@pytest.mark.parametrize("answers", [True, False], ids=["answers", "abstains"])
def test_chat_with_a_refusal_detector_is_tilelli_chats(browser, tmp_path, answers):  # noqa: F811
    """The detector's log-odds decide in the page as in Python, 1e-6 either side of the threshold."""
    text = "Tell me a story about a cat."
    ckpt = tiny_checkpoint(tmp_path, "ternary", AbstainRule(0.5))
    detector_rule(ckpt, text, answers)[0].save(ckpt)
    rule = AbstainRule.load(ckpt)
    site = export(ckpt, tmp_path / "site", "web")
    with static_server(site) as (url, _):
        browser.get(url + "/")
        got = in_page(browser, "tilelli.chat([{role: 'user', content: args[0]}], {temperature: 0, maxTokens: 40})",
                      text)
    assert (got["reply"], got["abstained"]) == chat_reply(ckpt, rule, text)
    assert got["abstained"] == (not answers)


def test_a_missing_compiler_is_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wasm, "available", lambda: False)
    assert main(["export", "--checkpoint", str(tiny_checkpoint(tmp_path, "ternary")), "--web",
                 "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[web]"' in err and not (tmp_path / "site").exists()


def test_a_failing_compiler_is_one_line_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wasm, "COMPILER", [sys.executable, "-c", "import sys; sys.exit('error: no wasm today')"])
    assert main(["export", "--checkpoint", str(tiny_checkpoint(tmp_path, "ternary")), "--web",
                 "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no wasm today" in err


def test_the_relaxed_module_holds_the_relaxed_dot_and_the_other_none():
    """The integer path's dot product is the relaxed instruction (opcode 0xfd 0x113) in one
    module only, and neither fuses float multiply-adds (relaxed_madd, 0xfd 0x105)."""
    modules = {name: path.read_bytes() for name, path in wasm.build_wasm().items()}
    dot, madd = bytes([0xFD, 0x93, 0x02]), bytes([0xFD, 0x85, 0x02])
    assert dot in modules["engine-relaxed.wasm"] and dot not in modules["engine.wasm"]
    assert madd not in modules["engine-relaxed.wasm"]
