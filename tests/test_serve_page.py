"""The chat page in headless Chromium (Selenium): type a message, see the reply stream in, press Stop."""

from __future__ import annotations

import shutil
import time

import pytest
from serve_helpers import Slow, busy, loaded_tiny, running_server, tiny_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser():
    """A headless Chromium driven by Selenium, or skip with the reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (shutil.os.path.exists(CHROMIUM) and shutil.os.path.exists(CHROMEDRIVER)):
        pytest.skip("no browser: install Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver) to run the page test")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--metrics-recording-only", "--mute-audio"):
        options.add_argument(flag)
    try:
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as e:  # a browser that cannot start here (e.g. a missing library)
        pytest.skip(f"headless Chromium did not start: {type(e).__name__}: {str(e).splitlines()[0]}")


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_chat_page_streams_and_stops():
    from selenium.webdriver.common.by import By

    driver = browser()
    with running_server(loaded_tiny(Slow(tiny_model(endless=True), 0.05))) as (url, srv):
        try:
            driver.get(url + "/")
            wait_for(lambda: driver.find_element(By.ID, "model").text == "tiny-chat", what="the model's name")
            driver.find_element(By.ID, "temperature").clear()
            driver.find_element(By.ID, "temperature").send_keys("0")
            driver.find_element(By.ID, "max-tokens").clear()
            driver.find_element(By.ID, "max-tokens").send_keys("200")
            driver.find_element(By.ID, "input").send_keys("Hello there")
            driver.find_element(By.ID, "send").click()
            reply = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"), what="a reply bubble")[0]
            first = wait_for(lambda: reply.text, what="streamed text")
            wait_for(lambda: len(reply.text) > len(first), what="more streamed text")  # it streams, piece by piece
            assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "Hello there"
            assert driver.find_element(By.ID, "stop").is_enabled()
            driver.find_element(By.ID, "stop").click()
            wait_for(lambda: driver.find_element(By.ID, "status").text == "stopped", what="the stopped status")
            stopped = reply.text
            wait_for(lambda: busy(srv.state.engine) == 0, 5, "the server to free the row")
            time.sleep(0.3)
            assert reply.text == stopped  # nothing more arrives
            assert 0 < len(stopped.encode()) < 200
            assert driver.find_element(By.ID, "send").is_enabled()
        finally:
            driver.quit()
