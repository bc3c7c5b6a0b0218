"""The status page in a real headless Chromium: token prompt, states, advice, auto-refresh, buttons."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import serve_in_thread
from fakes import FakeSupervisor
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from supervisor.api.app import create_app
from supervisor.core.states import Cause, EventKind, State
from supervisor.core.views import ArgChange, ReplicaStatus
from supervisor.store import logs

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
        sup.refuse_next = "the supervisor is shutting down"
        _click(browser, 'button[data-action="start"][data-model="qwen"]')
        _wait_text(browser, "#message", "start qwen: the supervisor is shutting down")


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


def _js(driver: WebDriver, script: str) -> Any:
    return driver.execute_script(script)


def _wait_js(driver: WebDriver, script: str, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not _js(driver, script):
        if time.monotonic() > deadline:
            pytest.fail(f"the page never showed {what}")
        time.sleep(0.1)


def test_events_show_their_own_numbers_unclipped_and_no_repeated_state(browser: WebDriver, tmp_path: Path) -> None:
    """Each event shows its seq (#12 fully inside the list's box), and a kind equal to its state is said once."""
    sup = FakeSupervisor(["qwen"], tmp_path / "logs")
    for _ in range(4):
        sup.emit("qwen", EventKind.SPAWNED, State.STARTING, detail="run 1 pid 7")
        sup.emit("qwen", EventKind.HEALTHY, State.HEALTHY)
        sup.emit("qwen", EventKind.PROBE_FAILED, State.HEALTHY)
    with serve_in_thread(create_app(sup, token=None)) as url:
        browser.get(url + "/")
        _wait_text(browser, "#events li:first-child .seq", "#12")
        events = browser.find_element(By.ID, "events")
        box = events.rect
        seq = events.find_element(By.CSS_SELECTOR, "li:first-child .seq")
        assert seq.rect["x"] >= box["x"]
        assert seq.rect["x"] + seq.rect["width"] <= box["x"] + box["width"]
        lines = [li.text for li in events.find_elements(By.TAG_NAME, "li")]
        assert [line.split()[0] for line in lines] == [f"#{n}" for n in range(12, 0, -1)]
        healthy = [li.text for li in events.find_elements(By.CSS_SELECTOR, "li.event-healthy")]
        assert len(healthy) == 4
        assert all(line.endswith(" healthy") for line in healthy), healthy
        assert any("spawned → starting (run 1 pid 7)" in line for line in lines)
        assert any("probe_failed → healthy" in line for line in lines)


def test_log_pane_keeps_the_readers_place(browser: WebDriver, tmp_path: Path) -> None:
    """The log pane follows new lines at its bottom, but a reader who scrolled up stays where they are."""
    sup = FakeSupervisor(["qwen"], tmp_path / "logs")
    log = logs.log_path(sup.log_dir(), "qwen")
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"Traceback line {n}\n" for n in range(200)))
    at_bottom = "const p = document.getElementById('logs'); return p.scrollHeight - p.scrollTop - p.clientHeight < 8;"
    with serve_in_thread(create_app(sup, token=None)) as url:
        browser.get(url + "/")
        _wait_js(browser, "return document.getElementById('logs').textContent.endsWith('line 199');", "the tail")
        _wait_js(browser, at_bottom, "the pane at its bottom")
        assert _js(browser, "return document.getElementById('logs').scrollTop;") > 0  # it really scrolls

        _js(browser, "document.getElementById('logs').scrollTop = 40;")
        for name in ("A", "C"):  # two refreshes that bring new lines
            with log.open("a") as out:
                out.write(f"new line {name}\n")
            _wait_js(browser, f"return document.getElementById('logs').textContent.endsWith('new line {name}');", name)
            assert _js(browser, "return document.getElementById('logs').scrollTop;") == 40

        _js(browser, "const p = document.getElementById('logs'); p.scrollTop = p.scrollHeight;")
        with log.open("a") as out:
            out.write("new line B\n")
        _wait_js(browser, "return document.getElementById('logs').textContent.endsWith('new line B');", "line B")
        _wait_js(browser, at_bottom, "the pane following the new line")


def test_buttons_follow_the_state_and_pid_and_desired_are_shown(browser: WebDriver, tmp_path: Path) -> None:
    """Start, stop and restart are enabled only where they would act; PID and desired state have columns."""
    sup = FakeSupervisor(["up", "parked", "broken", "leaving"], tmp_path / "logs")
    sup.set_status("parked", State.STOPPED)
    sup.set_status("broken", State.FAILED, failure_cause=Cause.CRASH)
    sup.set_status("leaving", State.STOPPING, desired="stopped")
    expected = {  # model: (start, stop, restart) enabled, pid, desired
        "up": ((False, True, True), "4242", "running"),
        "parked": ((True, False, False), "-", "stopped"),
        "broken": ((True, True, True), "-", "running"),
        "leaving": ((True, False, False), "4242", "stopped"),
    }
    with serve_in_thread(create_app(sup, token=None)) as url:
        browser.get(url + "/")
        _wait_text(browser, 'tr[data-model="leaving"] .state', "stopping")
        for model, (enabled, pid, desired) in expected.items():
            row = f'tr[data-model="{model}"]'
            buttons = [
                browser.find_element(By.CSS_SELECTOR, f'{row} button[data-action="{action}"]').is_enabled()
                for action in ("start", "stop", "restart")
            ]
            assert (tuple(buttons), _text(browser, f"{row} .pid"), _text(browser, f"{row} .desired")) == (
                enabled,
                pid,
                desired,
            ), model
        title = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="up"] button[data-action="start"]')
        assert title.get_attribute("title") == "already healthy"
        _click(browser, 'tr[data-model="parked"] button[data-action="stop"]')  # disabled: nothing is sent
        _click(browser, 'tr[data-model="up"] button[data-action="start"]')
        _click(browser, 'tr[data-model="parked"] button[data-action="start"]')
        _wait_text(browser, "#message", "start of 'parked' begun")
        assert sup.calls == [("start", "parked")]


def test_page_shows_smart_recoverys_changes(browser: WebDriver, tmp_path: Path) -> None:
    """A model whose args smart recovery changed shows each change (flag, before, after, reason) in its row."""
    sup = FakeSupervisor(["qwen"], tmp_path / "logs")
    change = ArgChange("--max-model-len", "131072", "21440", "vLLM's estimate", 1_700_000_000.0)
    sup.set_status("qwen", State.HEALTHY, adaptations=(change,))
    with serve_in_thread(create_app(sup, token=None)) as url:
        browser.get(url + "/")
        _wait_text(
            browser, 'tr[data-model="qwen"] .adapted', "adapted --max-model-len 131072 → 21440 (vLLM's estimate)"
        )
