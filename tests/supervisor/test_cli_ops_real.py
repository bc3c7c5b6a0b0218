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
    """A daemon with `up` (healthy) and `down` (crashed once with no restart budget: failed)."""
    models = {"up": fake_model(), "down": fake_model("--crash-after", "1", max_restarts=0)}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_data(tmp_path / "state", models)))
    with daemon(config) as d:
        wait_status(d.url, "up", lambda s: s["state"] == "healthy")
        wait_status(d.url, "down", lambda s: s["state"] == "failed")
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


def _exit_status(pid: int, fd: int) -> tuple[int, str]:
    """The child's exit code and what it wrote meanwhile; reading on so it never blocks on a full pty buffer."""
    deadline, written = time.monotonic() + WAIT, ""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
                written += os.read(fd, 65536).decode(errors="replace")
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:  # what it wrote last may still be unread
            while select.select([fd], [], [], 0)[0]:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                written += data.decode(errors="replace")
            return os.waitstatus_to_exitcode(status), written
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("monitor did not exit")


@pytest.mark.parametrize(("key", "why"), [(b"q", "q quits"), (b"\x03", "Ctrl-C"), (None, "SIGTERM")])
def test_live_monitor_in_a_terminal_quits_and_restores_it(fleet: Daemon, key: bytes | None, why: str) -> None:
    """In a pseudo-terminal: the full-screen view shows the models in cbreak mode; q (or Ctrl-C, or SIGTERM)
    exits 0 and leaves the terminal as it was (canonical mode and echo back, the main screen restored)."""
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
        if key is None:
            os.kill(pid, signal.SIGTERM)
        else:
            os.write(fd, key)
        code, written = _exit_status(pid, fd)
        assert code == 0, why
        assert "\x1b[?1049l" in written  # back on the main screen
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


def test_recover_and_reload_against_a_real_daemon(fleet: Daemon, tmp_path: Path) -> None:
    """`recover` starts the crashed model again and says so; `reload` prints what changed, and for a file that
    does not validate, exits 2 listing every problem with nothing changed."""
    healed = _cli("recover", "--url", fleet.url)
    assert healed.returncode == 0, healed.stderr
    assert healed.stdout.startswith("down: started ("), healed.stdout
    wait_status(fleet.url, "down", lambda s: s["pid"] is not None)

    config = tmp_path / "config.json"
    data = json.loads(config.read_text())
    data["llmModels"]["extra"] = fake_model()
    config.write_text(json.dumps(data))
    reloaded = _cli("reload", "--url", fleet.url)
    assert reloaded.returncode == 0, reloaded.stderr
    assert "added: extra" in reloaded.stdout.splitlines()
    wait_status(fleet.url, "extra", lambda s: s["state"] == "healthy")

    data["llmModels"]["up"]["restart_polcy"] = "always"
    data["llmModels"]["extra"]["max_restarts"] = -1
    config.write_text(json.dumps(data))
    refused = _cli("reload", "--url", fleet.url)
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert "nothing was changed" in refused.stderr
    assert "llmModels.up.restart_polcy" in refused.stderr
    assert "llmModels.extra.max_restarts" in refused.stderr
    assert _cli("check", "up", "extra", "--url", fleet.url).returncode == 0
