"""The seam between the supervisor loop and whatever runs a model (a local process group, a container).

The loop never touches pids or containers directly: it asks a `Runtime` to spawn a run and talks to the
returned `Run`. A run reports its end twice, because vLLM's engine children can outlive the API server:
`wait_exit()` returns when the main process (or container) exits, `wait_gone()` when nothing of the run is
left holding resources (every process of the group, or the container removed).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

from supervisor.core.states import ExitStatus


class Stream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


# Called once per complete output line, in arrival order, from the event loop thread.
LineSink = Callable[[Stream, str], None]


def discard_line(stream: Stream, text: str) -> None:
    """The sink of a run that is over: it lets go of the real one, which refers back to the model's owner."""


class SpawnError(Exception):
    """The run could not be started at all (command not found, image missing, daemon unreachable)."""


class Run(Protocol):
    """One run of a model: created by `Runtime.spawn`, finished when `wait_gone` returns."""

    @property
    def pid(self) -> int | None:
        """The main process id (None where the runtime has no host pid)."""

    @property
    def ident(self) -> str:
        """A stable identity for the journal: 'pid:start_time' or a container id."""

    async def wait_exit(self) -> ExitStatus:
        """Return the moment the main process exits (awaited, never polled)."""

    async def wait_gone(self) -> None:
        """Return when every process of the run is gone (after wait_exit). The run delivers no line after
        that and drops its sink: the sink refers to the model's owner, which refers to the run, and a replaced
        owner must be freed at once, not at the rare full collection of the garbage collector."""

    def terminate(self) -> None:
        """Ask the whole run to stop (SIGTERM to the process group)."""

    def kill(self) -> None:
        """Stop the whole run now (SIGKILL to the process group)."""


class Runtime(Protocol):
    async def spawn(self, model_id: str, run_number: int, sink: LineSink) -> Run:
        """Start one run; raise SpawnError when it cannot start. Output lines go to `sink`."""
