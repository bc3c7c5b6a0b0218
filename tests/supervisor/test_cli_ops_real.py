"""`check` and `monitor` against a real `llm-supervisor run` with real fake-vllm processes: plain output when
stdout is not a terminal, and the live view in a pseudo-terminal (`q` quits, Ctrl-C too, the terminal restored)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_fleet import config_data, fake_model
from test_cli_run import Daemon, daemon, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]
WAIT = 40.0
CLI = [sys.executable, "-m", "supervisor.cli.main"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon with `up` (healthy) and `down` (crashed once, restart_policy no: it stays down)."""
    models = {"up": fake_model(), "down": fake_model("--crash-after", "0.3", restart_policy="no")}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_data(tmp_path / "state", models)))
    with daemon(config) as d:
        wait_status(d.url, "up", lambda s: s["state"] == "healthy")
        wait_status(d.url, "down", lambda s: s["last_exit_code"] is not None and not s["is_running"])
        yield d


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT, check=False)


def test_check_and_plain_monitor_against_a_real_daemon(fleet: Daemon) -> None:
    """`check` exits 1 naming the crashed model, 0 for the healthy one; `monitor` piped prints one snapshot."""
    everything = _cli("check", "--url", fleet.url)
    assert everything.returncode == 1, everything.stderr
    lines = everything.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["up", "down"]
    assert lines[0].startswith("up: healthy (pid ")
    assert "cause crash" in lines[1]
    assert _cli("check", "up", "--url", fleet.url).returncode == 0

    shown = _cli("monitor", "--url", fleet.url)
    assert shown.returncode == 0, shown.stderr
    table, events = shown.stdout.split("EVENTS\n", 1)
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.split()[:1] in (["up"], ["down"])}
    assert rows["up"][1] == "healthy"
    assert rows["up"][2] == str(wait_status(fleet.url, "up", lambda s: True)["pid"])
    assert rows["down"][1] != "healthy"
    assert "spawned" in events
    assert "exited" in events


def _start_in_pty(*args: str) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child becomes the CLI)
        os.execvpe(CLI[0], [*CLI, *args], {**os.environ, "TERM": "xterm-256color"})
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    return pid, fd


def _read_until(fd: int, wanted: str, seen: str = "") -> str:
    deadline = time.monotonic() + WAIT
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {wanted!r}; got {seen[-2000:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                seen += os.read(fd, 65536).decode(errors="replace")
            except OSError:  # the child closed the terminal
                break
    return seen


def _exit_status(pid: int, fd: int) -> int:
    """Drain the terminal while waiting, so the child never blocks on a full pty buffer."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if select.select([fd], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("monitor did not exit")


@pytest.mark.parametrize(("key", "why"), [(b"q", "q quits"), (b"\x03", "Ctrl-C")])
def test_live_monitor_in_a_terminal_quits_and_restores_it(fleet: Daemon, key: bytes, why: str) -> None:
    """In a pseudo-terminal: the full-screen view shows the models in cbreak mode; q (or Ctrl-C) exits 0 and
    leaves the terminal as it was (canonical mode and echo back, the main screen restored)."""
    before = termios.tcgetattr(sys.stdin.fileno()) if sys.stdin.isatty() else None
    pid, fd = _start_in_pty("monitor", "--url", fleet.url, "--interval", "0.2")
    try:
        canonical = termios.tcgetattr(fd)[3]
        assert canonical & termios.ICANON
        assert canonical & termios.ECHO
        seen = _read_until(fd, "\x1b[?1049h")  # the alternate screen: full-screen
        seen = _read_until(fd, "down", seen)
        seen = _read_until(fd, "q quits", seen)
        assert "healthy" in seen
        assert not termios.tcgetattr(fd)[3] & termios.ICANON  # cbreak while it runs
        os.write(fd, key)
        assert _exit_status(pid, fd) == 0, why
        restored = termios.tcgetattr(fd)[3]
        assert restored & termios.ICANON
        assert restored & termios.ECHO
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    if before is not None:
        assert termios.tcgetattr(sys.stdin.fileno()) == before
