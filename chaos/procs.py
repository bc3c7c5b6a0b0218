"""psutil helpers: which processes belong to a model's run, whether they live, and killing what is left.

A process is named by (pid, create_time), so a pid the kernel reused for something else is never mistaken
for a leftover, and never killed. Zombies count as gone: they hold no memory, GPU or port.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterable, Mapping

import psutil

Key = tuple[int, float]


def describe(pid: int) -> tuple[float, str, list[tuple[int, float, str]]] | None:
    """(create_time, name, descendants as (pid, create_time, name)) of a live process, or None."""
    try:
        proc = psutil.Process(pid)
        found = []
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found.append((child.pid, child.create_time(), _name(child)))
        return proc.create_time(), _name(proc), found
    except psutil.Error:
        return None


def _name(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        cmdline = []
    return _label(cmdline) if cmdline else proc.name()


def _label(cmdline: list[str]) -> str:
    """How a process is named in verdicts: its program and first arguments (`fake-vllm serve m1`)."""
    return " ".join(cmdline[:3])[:80]


def is_alive(key: Key) -> bool:
    pid, created = key
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(keys: set[Key]) -> frozenset[Key]:
    return frozenset(k for k in keys if is_alive(k))


def is_local_pid(pid: int) -> bool:
    return psutil.pid_exists(pid)


def _group_members(pid: int) -> list[psutil.Process]:
    """The live processes of `pid`'s process group (an engine whose API server died is still in it)."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return []
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def _is_named(proc: psutil.Process, name: str) -> bool:
    """A process renamed as setproctitle does (`VLLM::EngineCore`), or a program by its name."""
    try:
        first = next(iter(proc.cmdline()), "").strip()
        return name in (proc.name(), first, os.path.basename(first))
    except psutil.Error:
        return False


def find_in_group(pid: int, name: str) -> int | None:
    """The oldest process named `name` in `pid`'s process group, or None."""
    named = [proc for proc in _group_members(pid) if _is_named(proc, name)]
    with contextlib.suppress(psutil.Error):
        named.sort(key=lambda proc: proc.create_time())
    return named[0].pid if named else None


def group_names(pid: int) -> list[str]:
    """What runs in `pid`'s process group, for an error that says what was there instead."""
    return [f"{proc.pid} {_name(proc)}" for proc in _group_members(pid)]


def signal_process(pid: int, sig: signal.Signals, *, group: bool) -> str:
    """Send `sig` to the pid, or to its process group; refuses the harness's own group."""
    if group:
        pgid = os.getpgid(pid)
        if pgid == os.getpgrp():
            raise PermissionError(f"pid {pid} shares the harness's process group; refusing to signal it")
        os.killpg(pgid, sig)
        return f"{sig.name} to process group {pgid}"
    os.kill(pid, sig)
    return f"{sig.name} to pid {pid}"


def kill_leftovers(keys: set[Key], timeout: float = 5.0) -> list[Key]:
    """SIGKILL every still-living process of `keys` and its group; returns the ones that would not die."""
    own_group = os.getpgrp()
    for key in keys:
        if not is_alive(key):
            continue
        pid = key[0]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pgid = os.getpgid(pid)
            if pgid != own_group:
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    remaining = [k for k in keys if is_alive(k)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the kernel for the deaths we just caused; bounded by the deadline
        remaining = [k for k in remaining if is_alive(k)]
    return remaining


def find_servers(server_ports: Mapping[str, Iterable[int]]) -> list[tuple[str, int, float, str]]:
    """Processes started with `--port P` for one of the models' ports: (model, pid, create_time, name).

    The safety net for servers the observer never sighted (started after its last poll, or by a supervisor
    that died before it was ever asked), so clean-up still finds them.
    """
    ports = {port: model for model, model_ports in server_ports.items() for port in model_ports}
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = proc.info.get("cmdline") or []
        for flag, value in itertools.pairwise(cmdline):
            if flag == "--port" and value.isdigit() and int(value) in ports:
                found.append((ports[int(value)], proc.pid, proc.info["create_time"], _label(cmdline)))
                break
    return found
