"""Who holds a resource a model's run needs: the process listening on its port, the processes on the GPU.

Each process is named by pid and command, and by the run marker (`LLM_SUPERVISOR_RUN`, "unit:run") and the
supervisor's instance (`LLM_SUPERVISOR_INSTANCE`) when it is one of a supervisor's runs: that is how smart
recovery tells its own leftovers, which it may stop, from a foreign process, which it only names
(docs/recovery.md). Another user's process can only be seen in part without root: its sockets show no pid and
its environment is closed, so it counts as foreign.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil

from supervisor.runtime.process_group import RUN_MARKER_ENV
from supervisor.runtime.usage import INSTANCE_ENV

_COMMAND_MAX = 120


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that holds something; `pid` None where the kernel would not say (another user's socket)."""

    pid: int | None
    command: str
    marker: str | None = None  # the run marker when the process is one of a supervisor's runs
    instance: str | None = None  # which supervisor (LLM_SUPERVISOR_INSTANCE), where the run says

    @property
    def unit(self) -> str | None:
        """The unit (model or replica) of the supervisor run this process belongs to."""
        return None if self.marker is None else self.marker.rpartition(":")[0]

    @property
    def run(self) -> int | None:
        tail = None if self.marker is None else self.marker.rpartition(":")[2]
        return int(tail) if tail is not None and tail.isdigit() else None

    def describe(self) -> str:
        if self.pid is None:
            return "a process of another user (run as root to see which)"
        return f"pid {self.pid} ({self.command})"


def describe_process(pid: int) -> Holder:
    """The process's command line and run marker, as far as this user may read them."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            command = " ".join(proc.cmdline()) or proc.name()
    except psutil.NoSuchProcess:
        return Holder(pid, "gone")
    except psutil.Error:
        return Holder(pid, "unknown: access denied")
    env: dict[str, str] = {}
    with contextlib.suppress(psutil.Error):
        env = proc.environ()
    if len(command) > _COMMAND_MAX:
        command = command[: _COMMAND_MAX - 3] + "..."
    return Holder(pid, command, env.get(RUN_MARKER_ENV), env.get(INSTANCE_ENV))


def port_holders(port: int) -> list[Holder]:
    """The processes listening on TCP `port` (any address), each once."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # some platforms need root for the whole table; Linux gives it with pid None
        return []
    pids: list[int | None] = []
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid not in pids:
            pids.append(conn.pid)
    return [Holder(None, "unknown") if pid is None else describe_process(pid) for pid in pids]
