"""The status page in a real headless Chromium: token prompt, states, advice, auto-refresh, buttons."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import serve_in_thread
from fakes import FakeSupervisor
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from supervisor.api.app import create_app
from supervisor.core.states import Cause, State
from supervisor.core.views import ReplicaStatus

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "page-token-123"
WAIT = 20.0  # generous: two cores shared by several test runs

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="llm-supervisor-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _text(driver: WebDriver, css: str) -> str:
    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _wait_text(driver: WebDriver, css: str, expected: str) -> None:
    """Wait until the element at `css` contains `expected` (the page re-renders every 2 s)."""
    deadline = time.monotonic() + WAIT
    while expected not in (seen := _text(driver, css)):
        if time.monotonic() > deadline:
            pytest.fail(f"{css!r} never showed {expected!r}; last seen {seen!r}")
        time.sleep(0.1)


def _click(driver: WebDriver, css: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:  # the row may be re-rendered between finding and clicking the button
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
        else:
            return


def test_page_asks_for_token_then_shows_models_and_stop_works(browser: WebDriver, tmp_path: Path) -> None:
    """With a token set, the page asks for it, then shows states, advice and events; Stop stops the model."""
    sup = FakeSupervisor(["qwen", "llama"], tmp_path / "logs")
    sup.set_status(
        "llama",
        State.FAILED,
        failure_cause=Cause.OOM,
        failure_advice="Lower --gpu-memory-utilization",
        restart_count=3,
    )
    with serve_in_thread(create_app(sup, token=TOKEN)) as url:
        browser.get(url + "/")
        _wait_text(browser, "#token-reason", "missing bearer token")
        browser.find_element(By.ID, "token-input").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()

        _wait_text(browser, 'tr[data-model="qwen"] .state', "healthy")
        _wait_text(browser, 'tr[data-model="llama"] .state', "failed")
        _wait_text(browser, 'tr[data-model="llama"] .cause', "oom")
        _wait_text(browser, 'tr[data-model="llama"] .advice', "Lower --gpu-memory-utilization")
        _wait_text(browser, 'tr[data-model="llama"] .restarts', "3/3")
        _wait_text(browser, 'tr[data-model="qwen"] .uptime', "12s")

        _click(browser, 'button[data-action="stop"][data-model="qwen"]')
        _wait_text(browser, 'tr[data-model="qwen"] .state', "stopped")
        _wait_text(browser, "#message", "stop of 'qwen' begun")
        _wait_text(browser, "#events", "stop_requested")
        assert sup.calls == [("stop", "qwen")]

        # Auto-refresh: a change made behind the page's back shows up without a reload.
        sup.set_status("llama", State.BACKOFF)
        _wait_text(browser, 'tr[data-model="llama"] .state', "backoff")

        # A refused action shows the supervisor's reason.
        _click(browser, 'button[data-action="stop"][data-model="qwen"]')
        _wait_text(browser, "#message", "already stopped")


def test_page_lists_replicas_and_restarts_one(browser: WebDriver, tmp_path: Path) -> None:
    """A model of two replicas shows a row per replica (state, draining, in flight); its button restarts that one."""
    sup = FakeSupervisor(["qwen"], tmp_path / "logs")
    replicas = (
        ReplicaStatus(0, 8001, State.HEALTHY, 11, True, 0, None, None, 3, False),
        ReplicaStatus(1, 8002, State.STARTING, 12, False, 1, 1, Cause.CRASH, 0, True),
    )
    sup.set_status("qwen", State.HEALTHY, replicas=replicas)
    with serve_in_thread(create_app(sup, token=None)) as url:
        browser.get(url + "/")
        _wait_text(browser, "tr.replica:nth-of-type(2) .id", "replica 0 :8001")
        _wait_text(browser, "tr.replica:nth-of-type(2) .health", "ok, 3 in flight")
        _wait_text(browser, "tr.replica:nth-of-type(3) .state", "starting")
        _wait_text(browser, "tr.replica:nth-of-type(3) .muted", "(draining)")
        _wait_text(browser, "tr.replica:nth-of-type(3) .cause", "crash")
        _click(browser, 'button[data-action="restart"][data-replica="1"]')
        _wait_text(browser, "#message", "restart of 'qwen' begun")
        assert sup.restart_options == [(1, False)]
