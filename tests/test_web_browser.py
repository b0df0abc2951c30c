"""The station's page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) against `station run` on `station sim`: it loads with no console error, shows the
pixels, the aging curve grows as samples arrive, and a stop from the page is refused without a key
and stops the job with an operator key. Screenshots of the views are kept in
$STATION_TEST_ARTIFACTS (default: test-artifacts/) under web/."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .webkit import AGING_JOB, OPERATOR_KEY, ROOT, SWEEP_JOB, Station, http, running_station, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("STATION_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "web"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None  # type: ignore[assignment]

if (webdriver is None or CHROMIUM is None or DRIVER is None) and not os.environ.get("CI"):
    pytest.skip("needs selenium, chromium and chromium-driver (scripts/bootstrap.sh --test)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    with running_station(tmp_path_factory.mktemp("webui"), speed=1000.0) as st:
        code, reply, _ = http("POST", st.url("/api/v1/jobs"), SWEEP_JOB, key=OPERATOR_KEY)
        assert code == 201
        sweep = reply["result"]["id"]
        wait_for(lambda: http("GET", st.url(f"/api/v1/jobs/{sweep}"))[1]["state"] == "completed",
                 "the sweep")
        yield st


@pytest.fixture()
def browser() -> Iterator[Any]:
    o = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,2400", "--hide-scrollbars"):
        o.add_argument(a)
    o.binary_location = CHROMIUM
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=o)
    try:
        yield d
    finally:
        d.quit()


def _errors(d: Any, allowed: tuple[str, ...] = ()) -> list[str]:
    return [e["message"] for e in d.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def _points(d: Any) -> int:
    return int(d.find_element(By.ID, "aging-plot").get_attribute("data-points") or 0)


def _shot(d: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / name
    d.save_screenshot(str(p))
    return p


def _job_state(st: Station, job_id: str) -> str:
    return http("GET", st.url(f"/api/v1/jobs/{job_id}"))[1]["state"]


def test_the_page_shows_the_station_and_the_aging_curve_grows(station, browser):
    code, reply, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, key=OPERATOR_KEY)
    assert code == 201
    job_id = reply["result"]["id"]
    try:
        browser.get(station.url("/"))
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#pixels .pixel")) == 4,
                 "the four pixels")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#pixels .pixel[data-state="aging"]'),
                 "an aging pixel on the page")
        assert "link up" in browser.find_element(By.ID, "b-link").text
        wait_for(lambda: browser.find_element(By.ID, "b-live").text == "live", "the push channel")
        first = wait_for(lambda: _points(browser), "the first aging points")
        wait_for(lambda: _points(browser) > first + 20, "the aging curve to grow")
        # the latest sweep of pixel 1 with its Table S1 row beside the seed's
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#s1-table tr[data-row="seed"]'),
                 "the Table S1 rows")
        assert "DBSA-PeNCs" in browser.find_element(By.ID, "s1-table").text
        assert browser.find_elements(By.CSS_SELECTOR, "#jvl-plot canvas")
        assert browser.find_elements(By.CSS_SELECTOR, "#spec-plot canvas")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]"), "runs")
        time.sleep(1.0)  # let a few more samples land for the screenshot
        _shot(browser, "overview-desktop.png")
        browser.execute_script("document.getElementById('sec-sweep').scrollIntoView()")
        browser.find_element(By.ID, "sec-sweep").screenshot(str(ARTIFACTS / "sweep.png"))
        browser.find_element(By.ID, "sec-aging").screenshot(str(ARTIFACTS / "aging.png"))
        browser.set_window_size(400, 3600)
        time.sleep(0.5)
        _shot(browser, "overview-phone.png")
        assert _errors(browser) == []
    finally:
        http("POST", station.url(f"/api/v1/jobs/{job_id}/stop"), key=OPERATOR_KEY)


def test_stop_from_the_page_needs_an_operator_key(station, browser):
    code, reply, _ = http("POST", station.url("/api/v1/jobs"), AGING_JOB, key=OPERATOR_KEY)
    assert code == 201
    job_id = reply["result"]["id"]
    wait_for(lambda: _job_state(station, job_id) == "running", "the job to run")
    browser.get(station.url("/"))
    stop = f'button[data-action="stop"][data-job="{job_id}"]'
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, stop), "the stop button")
    assert _errors(browser) == []
    wait_for(lambda: _try_click(browser, stop), "a click on stop")
    wait_for(lambda: "refused" in browser.find_element(By.ID, "message").text, "the refusal")
    assert "401" in browser.find_element(By.ID, "message").text
    assert "operator" in browser.find_element(By.ID, "message").text
    _shot(browser, "stop-refused.png")
    assert _job_state(station, job_id) == "running"  # nothing changed
    # the only console error is the refused request itself
    assert _errors(browser, allowed=("401 (Unauthorized)",)) == []

    browser.find_element(By.ID, "key").send_keys(OPERATOR_KEY)
    browser.find_element(By.CSS_SELECTOR, "#keyform button[type=submit]").click()
    wait_for(lambda: "alice: operator" in browser.find_element(By.ID, "role").text, "the key")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, stop), "the stop button")
    wait_for(lambda: _try_click(browser, stop), "a click on stop")
    wait_for(lambda: "is stopped" in browser.find_element(By.ID, "message").text, "the stop")
    assert _job_state(station, job_id) == "stopped"
    wait_for(lambda: http("GET", station.url("/api/v1/status"))[1]["aging_channels_active"] in (0, []),
             "the outputs off")
    wait_for(lambda: browser.find_elements(
        By.CSS_SELECTOR, f'#jobs-table tr[data-job="{job_id}"][data-state="stopped"]'),
        "the page to show the job stopped")
    _shot(browser, "stop-done.png")
    assert _errors(browser) == []


def _try_click(d: Any, selector: str) -> bool:
    """The jobs table is re-rendered when events arrive: click again if the button was replaced."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True
    except StaleElementReferenceException:
        return False
