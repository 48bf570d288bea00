"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, through selenium).

The page must show live values after a produce: the topic's row with its
log end offset, and charts that have drawn a non-zero produce rate and an
ack latency.  The screenshot is kept in ``$HPB_ARTIFACTS`` (default
``artifacts/`` at the top of the repository, which git ignores).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, free_port

ARTIFACTS = Path(os.environ.get("HPB_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium or chromedriver not found: apt-get install chromium chromium-driver", pytrace=False)
    o = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1700",
              "--no-first-run", "--disable-extensions"):
        o.add_argument(a)
    o.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=o)


def _produce(base: str, topic: str, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        body = b"\n".join(b"line %d" % (i + k) for k in range(50))
        req = urllib.request.Request(f"{base}/topics/{topic}/partitions/0", data=body,
                                     headers={"Content-Type": "application/x-ndjson"}, method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass
        i += 50
        time.sleep(0.05)


def test_dashboard_shows_live_values_after_a_produce(tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    b = BrokerProcess(tmp_path / "data", args=("--partitions", "2", "--http-port", str(free_port())))
    b.start()
    driver = None
    stop = threading.Event()
    producer = None
    try:
        base = b.wait_http()
        driver = _browser()
        driver.get(base + "/")
        producer = threading.Thread(target=_produce, args=(base, "dash", stop), daemon=True)
        producer.start()
        wait = WebDriverWait(driver, 45, poll_frequency=0.25)

        def topic_row(d):
            # one script call reads the whole table: the page replaces its rows every second
            rows = d.execute_script("return [...document.querySelectorAll('#topics-table tbody tr')]"
                                    ".map(tr => [...tr.cells].map(td => td.textContent))")
            for cells in rows:
                if cells[:2] == ["dash", "0"] and int(cells[3] or 0) > 0:
                    return cells
            return False

        cells = wait.until(topic_row)
        chart = driver.find_element("id", "chart-produce")
        wait.until(lambda d: float(chart.get_attribute("data-max") or 0) > 0)
        latency = driver.find_element("id", "chart-latency")
        wait.until(lambda d: float(latency.get_attribute("data-max") or 0) > 0)
        assert driver.find_element("id", "role").text == "standalone"
        assert driver.find_element("id", "ready").text == "ready"
        wait.until(lambda d: "serving on" in d.find_element("id", "logs").text)
        assert len(driver.find_elements("css selector", "#config details")) >= 6  # one per config section
        first = int(cells[3])
        wait.until(lambda d: int((topic_row(d) or cells)[3]) > first)  # live values, not a snapshot
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        stop.set()
        if producer is not None:
            producer.join(30)
        if driver is not None:
            driver.quit()
        b.stop()
