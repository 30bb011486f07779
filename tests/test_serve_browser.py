"""The chat page in a real headless browser: type, watch the reply stream in, see the shading.

Debian's chromium and chromium-driver, driven by Selenium (installed by .ci/run where missing);
the test skips when either is absent. The page talks to a real server on 127.0.0.1 whose
scripted decoder replies slowly enough to stream and refuses a question about a capital, so
the abstention mark shows. The screenshot lands in the test's tmp_path (its path is printed).
"""

from __future__ import annotations

import os
import shutil

import pytest
from test_serve import ScriptDecoder, fake_app, serving

from tilelli.chat.template import END, REFUSAL

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", \
    shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")

GREETING = "Hello! I am a tiny model. Ça va? 🙂"


def reply(prompt: bytes) -> bytes:
    return (REFUSAL if b"capital" in prompt.split(b"\xfe")[-1] else GREETING).encode() + bytes([END])


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1100,800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_chat_page_streams_a_reply_shades_it_and_marks_abstention(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    with serving(fake_app(ScriptDecoder(reply, delay=0.02), cap=200)) as base:
        browser.get(base + "/")
        wait.until(lambda d: "ready" in d.find_element(By.ID, "status").get_attribute("class"))
        assert "fake" in browser.find_element(By.ID, "status").text

        temperature = browser.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")  # greedy: the scripted reply, byte for byte
        box = browser.find_element(By.ID, "input")
        box.send_keys("Hi there!", Keys.ENTER)
        seen_streaming = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state]"))
        assert seen_streaming
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant").get_attribute("data-state") == "done")
        first = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
        assert first.find_element(By.CLASS_NAME, "body").text == GREETING
        chars = first.find_elements(By.CSS_SELECTOR, ".c[data-p]")
        assert len(chars) == len(GREETING)  # one shaded span per character, the emoji included
        probs = {float(c.get_attribute("data-p")) for c in chars}
        assert len(probs) > 3 and all(0 <= p <= 1 for p in probs)
        assert first.get_attribute("data-abstained") is None

        box.send_keys("What is the capital of Peru?", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state=done]")) == 2)
        second = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[1]
        assert second.get_attribute("data-abstained") == "true"
        assert "abstained" in second.find_element(By.CLASS_NAME, "abstained").text
        assert second.find_element(By.CLASS_NAME, "body").text == REFUSAL
        assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2

        shot = tmp_path / "chat-page.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
