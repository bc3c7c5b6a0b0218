"""Behaviours measured the same way on any `vllm serve` look-alike: real vLLM and fake-vllm side by side.

Each measurement starts the program directly (no supervisor), in a session of its own, with its output in
files, and returns what an operator would see, as short text: the process tree, the answers of a few
endpoints, where the access log goes, what SIGSTOP and SIGKILL of the engine do, SIGTERM while loading, and
the exits of two failed starts. The test puts the two columns side by side.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.real_vllm.harness import ENGINE_CORE, alive, engine_core, free_port, group_members, kill_all

LOADING = "Initializing a V1 LLM engine"  # EngineCore's first line, in both
ACCESS_LINE = '"GET /v1/models HTTP/1.1" 200'
DEAD = "EngineDeadError"
TRACKER_ROW = "a multiprocessing resource tracker under the API server"
LATER = 10.0


@dataclass(frozen=True)
class Program:
    """A `vllm serve` look-alike: how to run it, with what environment and flags on every start."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    flags: tuple[str, ...]
    loading_flags: tuple[str, ...] = ()  # for the start that is stopped while loading (the fake loads at once)


class Run:
    """One start of a program on a free port; output in files; `kill()` leaves nothing of its group."""

    def __init__(self, program: Program, model: str, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = workdir / "stdout", workdir / "stderr"
        argv = [*program.argv, "serve", model, "--port", str(self.port), *program.flags, *extra]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=err, env={**os.environ, **program.env}, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def status(self, path: str) -> int | None:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + path, timeout=5).status_code
        return None

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                tail = (self.out() + self.err())[-1500:]
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; output tail:\n{tail}")
            time.sleep(0.1)  # polling a process we do not control; bounded by the deadline

    def exit_code(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        kill_all(group_members(self.process.pid))


Rows = dict[str, str]


def serving(program: Program, model: str, workdir: Path, start_limit: float) -> Rows:
    """One server from start to engine death: tree, endpoints, access log, SIGSTOP then SIGKILL of EngineCore."""
    run = Run(program, model, workdir)
    rows: Rows = {}
    try:
        run.wait(lambda: run.status("/health") == 200, start_limit, "/health 200")
        engine = engine_core(run.process.pid)
        assert engine is not None, f"{program.name}: no {ENGINE_CORE}"
        children = psutil.Process(run.process.pid).children(recursive=True)
        rows["processes under the API server"] = _names(children)
        rows[TRACKER_ROW] = "yes" if any(_is_tracker(p) for p in children) else "no"
        health = httpx.get(run.url + "/health", timeout=5)
        rows["GET /health"] = f"{health.status_code}, {len(health.content)} bytes"
        rows["GET /version"] = httpx.get(run.url + "/version", timeout=5).text
        listed = httpx.get(run.url + "/v1/models", timeout=5).json()["data"][0]["id"]
        rows["GET /v1/models: the model's id"] = "the path it serves" if listed == model else listed
        run.wait(lambda: ACCESS_LINE in run.out() + run.err(), 10, "the access log line")
        rows["access log"] = "stdout" if ACCESS_LINE in run.out() else "stderr"
        rows.update(_stopped_engine(run, engine))
        rows.update(_killed_engine(run, engine))
    finally:
        run.kill()
    return rows


def _complete(run: Run, timeout: float) -> str:
    body = {"model": "", "prompt": "hello", "max_tokens": 2}
    body["model"] = httpx.get(run.url + "/v1/models", timeout=5).json()["data"][0]["id"]
    try:
        return str(httpx.post(run.url + "/v1/completions", json=body, timeout=timeout).status_code)
    except httpx.TimeoutException:
        return f"no answer in {timeout:g} s"


def _stopped_engine(run: Run, engine: psutil.Process) -> Rows:
    engine.suspend()
    try:
        hung = _complete(run, 5)
        health = run.status("/health")
    finally:
        engine.resume()
    return {
        "SIGSTOP EngineCore: a completion": hung,
        "SIGSTOP EngineCore: /health": str(health),
        "SIGCONT: a completion": _complete(run, 60),
    }


def _killed_engine(run: Run, engine: psutil.Process) -> Rows:
    engine.kill()
    run.wait(lambda: run.status("/health") != 200, 30, "/health to change after SIGKILL of EngineCore")
    health = run.status("/health")
    code = run.exit_code(90)
    left = _names(p for p in group_members(run.process.pid) if alive(p))
    time.sleep(LATER)  # what is left a while after the exit: a fixed look, the same for both
    later = _names(p for p in group_members(run.process.pid) if alive(p))
    dead_in = "stdout" if DEAD in run.out() else "stderr" if DEAD in run.err() else "neither"
    return {
        "SIGKILL EngineCore: /health": str(health),
        "SIGKILL EngineCore: EngineDeadError on": dead_in,
        "SIGKILL EngineCore: the API server exits": "still running after 90 s" if code is None else f"exit {code}",
        "SIGKILL EngineCore: left when it exits": left or "nothing",
        f"SIGKILL EngineCore: left {LATER:g} s later": later or "nothing",
    }


def _is_tracker(proc: psutil.Process) -> bool:
    """Python's multiprocessing resource tracker, which vLLM's API server starts (the fake has none)."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _names(procs: Iterable[psutil.Process]) -> str:
    """The processes' names, sorted, the resource tracker left out (it has a row of its own)."""
    names = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if not _is_tracker(proc):
                names.append(proc.name())
    return ", ".join(sorted(names))


def sigterm_while_loading(program: Program, model: str, workdir: Path, start_limit: float) -> Rows:
    """SIGTERM to the group once the engine has begun loading: is the server still there 3 s later?"""
    run = Run(program, model, workdir, *program.loading_flags)
    try:
        run.wait(lambda: LOADING in run.out() + run.err(), start_limit, "the engine to begin loading")
        os.killpg(run.process.pid, signal.SIGTERM)
        code = run.exit_code(3)
        return {"SIGTERM while loading": "ignored" if code is None else f"obeyed (exit {code})"}
    finally:
        run.kill()


def failed_start(program: Program, model: str, workdir: Path, *extra: str) -> str:
    """Exit status and the last line on stderr of a start that fails."""
    run = Run(program, model, workdir, *extra)
    try:
        code = run.exit_code(180)
        lines = run.err().strip().splitlines()
        return f"exit {code}: {lines[-1] if lines else '(nothing on stderr)'}"
    finally:
        run.kill()
