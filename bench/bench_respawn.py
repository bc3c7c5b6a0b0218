"""Crash -> respawn latency with the fastest honest restart settings: ours, and with --peers PM2's and supervisord's.

The same crasher runs under each tool: a tiny program that appends its own start time to a file, then its own
exit time, and exits 1. Latency = the next run's start stamp - the previous run's exit stamp, both written by
the children themselves, so the tools are measured identically. The crasher's own start-up is in every figure
alike; `--crasher bash` (the default: bash's $EPOCHREALTIME, about 2 ms to start) keeps that share small, so
the figures show the tools; `--crasher python` (`-I -S`, about 10 ms) is the heavier alternative.

Settings: ours `restart_policy: always, restart_delay: 0, max_restarts: null`; PM2 `autorestart, restart_delay
0, max_restarts` large, no exponential backoff; supervisord `autorestart=true, startsecs=0, startretries`
large. PM2 (npm) and supervisord (PyPI) are installed into a temporary folder that is removed afterwards,
together with every process still running from it; nothing global is installed or left running.

Ours and PM2 are measured in alternating rounds, so that the load of a shared machine falls on both alike;
supervisord, which restarts about once a second, is measured once.

    .venv/bin/python bench/bench_respawn.py [--restarts 30] [--rounds 3] [--peers] [--crasher bash|python]
        [--python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from supervisor.config.schema import parse_config
from supervisor.core.states import EventKind
from supervisor.loop.fleet import Fleet

# The first statement takes the start stamp; time, os and sys are built in or frozen: nothing is read from disk.
CRASHER = """\
import time
start = time.time()
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, f"start {start!r}\\n".encode())
os.write(fd, f"exit {time.time()!r}\\n".encode())
os._exit(1)
"""
INSTALL_TIMEOUT = 300.0
CONTROL_TIMEOUT = 60.0  # one pm2 command, or supervisord's shutdown


@dataclass
class Figures:
    """One tool's latencies in ms, pooled over its rounds, with each round's median."""

    tool: str
    latencies: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    problem: str | None = None  # why the tool was not (fully) measured

    def add(self, latencies: list[float]) -> None:
        self.latencies += latencies
        if latencies:
            self.round_medians.append(statistics.median(latencies))

    def median(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None


# bash expands both stamps before printf writes them: start, then exit, as the Python crasher does.
BASH_CRASHER = 'printf "start %s\\nexit %s\\n" "$EPOCHREALTIME" "$EPOCHREALTIME" >> "$1"; exit 1'


class Crasher:
    """The crasher's command line, and the file its runs stamp."""

    def __init__(self, folder: Path, python: str, name: str, kind: str = "bash") -> None:
        self.stamps = folder / f"stamps-{name}.txt"
        if kind == "bash":
            bash = shutil.which("bash") or "/bin/bash"
            self.argv = [bash, "--norc", "--noprofile", "-c", BASH_CRASHER, "crasher", str(self.stamps)]
        else:
            script = folder / "crasher.py"
            script.write_text(CRASHER)
            self.argv = [python, "-I", "-S", str(script), str(self.stamps)]

    def starts(self) -> int:
        try:
            return self.stamps.read_text().count("start ")
        except FileNotFoundError:
            return 0

    def stamps_of(self, kind: str) -> list[float]:
        lines = self.stamps.read_text().splitlines()
        return [float(stamp) for what, _, stamp in (line.partition(" ") for line in lines) if what == kind]

    def latencies(self, restarts: int) -> list[float]:
        """ms from each run's exit stamp to the next run's start stamp, for the first `restarts` restarts."""
        exits, starts = self.stamps_of("exit"), self.stamps_of("start")
        return [(start - exit_) * 1000 for exit_, start in zip(exits, starts[1:], strict=False)][:restarts]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


# --- the floor ------------------------------------------------------------------------------------------------


def run_bare(crasher: Crasher, runs: int) -> list[float]:
    """ms from just before starting the crasher to its start stamp: the start-up inside every figure."""
    before = []
    for _ in range(runs):
        before.append(time.time())
        subprocess.run(crasher.argv, check=False, timeout=CONTROL_TIMEOUT)
    return [(start - at) * 1000 for at, start in zip(before, crasher.stamps_of("start"), strict=True)]


# --- ours -----------------------------------------------------------------------------------------------------


async def run_ours(crasher: Crasher, state_dir: Path, restarts: int, timeout: float) -> list[float]:
    """Supervise the crasher until it has restarted `restarts` times; returns exit stamp -> `spawned` event."""
    config = parse_config(
        {
            "supervisor": {"state_dir": str(state_dir)},
            "llmModels": {
                "crasher": {
                    "command": crasher.argv[0],
                    "args": crasher.argv[1:],
                    "restart_policy": "always",
                    "restart_delay": 0,
                    "max_restarts": None,
                }
            },
        },
        "bench",
    )
    fleet = Fleet(config)

    def spawned() -> list[float]:
        return [e.time for e in fleet.events("crasher") if e.kind is EventKind.SPAWNED]

    await fleet.start()
    try:
        # Our in-memory timeline first: the bench shares the supervisor's event loop, so it reads little.
        async with asyncio.timeout(timeout):
            while len(spawned()) <= restarts or crasher.starts() <= restarts:
                await asyncio.sleep(0.05)
    finally:
        await fleet.shutdown()
    exits = crasher.stamps_of("exit")
    return [(spawn - exit_) * 1000 for exit_, spawn in zip(exits, spawned()[1:], strict=False)][:restarts]


# --- PM2 ------------------------------------------------------------------------------------------------------


class Pm2:
    def __init__(self, folder: Path) -> None:
        prefix = folder / "pm2"
        npm_flags = ["--cache", str(folder / "npm-cache"), "--no-audit", "--no-fund", "--no-update-notifier"]
        install(["npm", "install", "--prefix", str(prefix), *npm_flags, "--loglevel=error", "pm2"])
        self.folder = folder
        self.pm2 = str(prefix / "node_modules" / ".bin" / "pm2")
        self.version = json.loads((prefix / "node_modules" / "pm2" / "package.json").read_text())["version"]
        self.env = {**os.environ, "PM2_HOME": str(folder / "pm2-home")}

    def run(self, crasher: Crasher, restarts: int, timeout: float) -> list[float]:
        app = {
            "name": "crasher",
            "script": crasher.argv[0],
            "args": crasher.argv[1:],
            "interpreter": "none",
            "exec_mode": "fork",
            "autorestart": True,
            "restart_delay": 0,
            "max_restarts": 1_000_000,  # PM2 gives up after this many restarts within min_uptime each
            "vizion": False,
        }
        ecosystem = self.folder / "pm2-crasher.json"
        ecosystem.write_text(json.dumps({"apps": [app]}))
        try:
            self._control("start", str(ecosystem))
            wait_for(lambda: crasher.starts() > restarts, timeout, f"{restarts} PM2 restarts")
        finally:
            self._control("kill", check=False)  # stops the app and the daemon
        return crasher.latencies(restarts)

    def _control(self, *args: str, check: bool = True) -> None:
        subprocess.run([self.pm2, *args], env=self.env, capture_output=True, timeout=CONTROL_TIMEOUT, check=check)


# --- supervisord ----------------------------------------------------------------------------------------------

SUPERVISORD_CONF = """\
[supervisord]
nodaemon=true
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}

[program:crasher]
command={command}
autorestart=true
startsecs=0
startretries=1000000
"""


class Supervisord:
    def __init__(self, folder: Path) -> None:
        self.target = folder / "supervisord"
        install(
            [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--target", str(self.target), "supervisor"]
        )
        self.folder = folder
        dist = next(self.target.glob("supervisor-*.dist-info")).name
        self.version = dist.removeprefix("supervisor-").removesuffix(".dist-info")

    def run(self, crasher: Crasher, restarts: int, timeout: float) -> list[float]:
        conf = self.folder / "supervisord.conf"
        # supervisord splits the command like a shell and expands %(...)s in it: quote, and double each %.
        command = shlex.join(crasher.argv).replace("%", "%%")
        conf.write_text(SUPERVISORD_CONF.format(folder=self.folder, command=command))
        # Our package is called `supervisor` too: -P keeps the working directory off sys.path, and PYTHONPATH
        # puts the installed supervisord ahead of our editable install.
        output = self.folder / "supervisord.out"
        with output.open("wb") as sink:
            daemon = subprocess.Popen(
                [sys.executable, "-P", "-m", "supervisor.supervisord", "-c", str(conf)],
                env={**os.environ, "PYTHONPATH": str(self.target)},
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def restarted_enough() -> bool:
            if daemon.poll() is not None:
                raise RuntimeError(f"supervisord exited ({daemon.returncode}): {output.read_text()[-300:]}")
            return crasher.starts() > restarts

        try:
            wait_for(restarted_enough, timeout, f"{restarts} supervisord restarts")
        finally:
            daemon.terminate()  # supervisord stops its programs on SIGTERM
            try:
                daemon.wait(CONTROL_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(CONTROL_TIMEOUT)
        return crasher.latencies(restarts)


# --- plumbing -------------------------------------------------------------------------------------------------


class InstallError(Exception):
    pass


def install(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise InstallError(f"{' '.join(argv[:2])} exited {done.returncode}: {' / '.join(last)}")


def sweep(folder: Path) -> list[str]:
    """Kill whatever still runs from `folder` (a daemon that ignored its shutdown); returns what was found."""
    mark = str(folder)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if proc.pid != os.getpid() and any(mark in part for part in cmdline):
                found.append(f"{proc.pid} {' '.join(cmdline)[:80]}")
                proc.kill()
    return found


def summary(figures: Figures) -> str:
    if not figures.latencies:
        return f"{figures.tool:<28} not measured: {figures.problem}"
    values = sorted(figures.latencies)
    p90 = values[int(0.9 * (len(values) - 1))]
    rounds = ", ".join(f"{m:.2f}" for m in figures.round_medians)
    line = f"{figures.tool:<28} {statistics.median(values):8.2f} {p90:8.2f} {values[-1]:8.2f} {len(values):5d}"
    line += f"   per round: {rounds}" if len(figures.round_medians) > 1 else ""
    return line + (f"  ({figures.problem})" if figures.problem else "")


def measure(args: argparse.Namespace, folder: Path) -> list[Figures]:
    timeout = 30 + 3.0 * args.restarts  # supervisord restarts about once a second, sometimes twice as slowly
    ours, to_spawned = Figures("llm-supervisor"), Figures("  ours, to `spawned` event")
    bare = Figures("crasher start-up alone")
    pm2_figures, supervisord_figures = Figures("PM2"), Figures("supervisord")
    pm2: Pm2 | None = None
    supervisord: Supervisord | None = None
    if args.peers:
        try:
            pm2 = Pm2(folder)
            pm2_figures.tool = f"PM2 {pm2.version}"
        except InstallError as exc:
            pm2_figures.problem = f"could not install pm2 from npm: {exc}"
        try:
            supervisord = Supervisord(folder)
            supervisord_figures.tool = f"supervisord {supervisord.version}"
        except InstallError as exc:
            supervisord_figures.problem = f"could not install supervisor from PyPI: {exc}"
    for number in range(args.rounds):
        bare.add(run_bare(Crasher(folder, args.python, f"bare-{number}", args.crasher), args.restarts))
        crasher = Crasher(folder, args.python, f"ours-{number}", args.crasher)
        to_spawned.add(asyncio.run(run_ours(crasher, folder / f"ours-{number}", args.restarts, timeout)))
        ours.add(crasher.latencies(args.restarts))
        if pm2 is not None:
            try:
                pm2_figures.add(
                    pm2.run(Crasher(folder, args.python, f"pm2-{number}", args.crasher), args.restarts, timeout)
                )
            except (OSError, subprocess.SubprocessError, TimeoutError) as exc:
                pm2_figures.problem = f"round {number + 1} failed: {exc}"
                pm2 = None
    if supervisord is not None:
        try:
            supervisord_figures.add(
                supervisord.run(Crasher(folder, args.python, "supervisord", args.crasher), args.restarts, timeout)
            )
        except (OSError, RuntimeError, subprocess.SubprocessError, TimeoutError) as exc:
            supervisord_figures.problem = f"failed: {exc}"
    return [ours, to_spawned, *([pm2_figures, supervisord_figures] if args.peers else []), bare]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restarts", type=int, default=30, help="restarts measured per round (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and PM2 (default 3)")
    parser.add_argument("--peers", action="store_true", help="also measure PM2 and supervisord (in a temp dir)")
    parser.add_argument(
        "--crasher", choices=("bash", "python"), default="bash", help="the crasher, the same for all (default bash)"
    )
    parser.add_argument("--python", default=sys.executable, help="the crasher's interpreter, the same for all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-respawn-") as tmp:
        try:
            results = measure(args, Path(tmp))
        finally:
            leftovers = sweep(Path(tmp))
    shown = "bash $EPOCHREALTIME" if args.crasher == "bash" else f"{args.python} -I -S"
    print(f"crash -> respawn: crasher's exit stamp -> next crasher's start stamp, ms ({shown})")
    print(f"{'':<28} {'median':>8} {'p90':>8} {'max':>8} {'n':>5}")
    for figures in results:
        print(summary(figures))
    print("(start-up alone: from just before a plain subprocess.run of the crasher to its start stamp)")
    ours, pm2 = results[0], results[2] if args.peers else None
    ours_median, pm2_median = ours.median(), pm2.median() if pm2 else None
    if ours_median is not None and pm2_median is not None and pm2 is not None:
        ratios = [o / p for o, p in zip(ours.round_medians, pm2.round_medians, strict=False)]
        print(
            f"ours / PM2 median: {ours_median / pm2_median:.2f} (goal <= 0.50); per round: "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
        )
    if leftovers:
        print(f"killed after the run: {'; '.join(leftovers)}")


if __name__ == "__main__":
    main()
