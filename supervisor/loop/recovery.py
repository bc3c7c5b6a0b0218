"""Smart recovery's IO (docs/recovery.md): read and change the arguments of a model's next run, name and stop
what holds its port or its GPU memory. The decisions themselves are pure, in `supervisor.core.adapt`.

Only this supervisor's own leftovers are ever stopped: processes carrying this model's run marker from a run
that is not the current one (an orphan of an earlier run, or of an earlier life of the supervisor). A foreign
process, or one of another model, is named in `failure_advice` and left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from supervisor.core.adapt import TorchHolder, port_of
from supervisor.core.clock import Clock
from supervisor.runtime.gpu import GpuReading, Nvml
from supervisor.runtime.holders import Holder, describe_process, port_holders
from supervisor.runtime.process_group import stop_leftover

log = logging.getLogger(__name__)

GPU_RELEASE_TIMEOUT = 60.0  # how long a restart after an OOM waits for the GPU memory of our runs to go
GPU_POLL_INTERVAL = 0.5
LEFTOVER_STOP_TIMEOUT = 10.0  # SIGTERM grace for a leftover of ours before SIGKILL
_GIB = 1024**3


# --- the arguments of the next run --------------------------------------------------------------------


def runtime_args(runtime: Any) -> tuple[str, ...] | None:
    """The arguments the runtime passes to its command: a process's argv after the command, a container's
    command; None for a runtime whose arguments cannot be changed (a test's stand-in)."""
    argv = getattr(runtime, "argv", None)
    if isinstance(argv, tuple):
        return tuple(argv[1:])
    spec = getattr(runtime, "spec", None)
    if spec is not None and dataclasses.is_dataclass(spec) and hasattr(spec, "command"):
        return tuple(spec.command)
    return None


def set_runtime_args(runtime: Any, args: Iterable[str]) -> None:
    """Make the runtime's next spawn use `args` (the runtime must be one `runtime_args` can read)."""
    if isinstance(getattr(runtime, "argv", None), tuple):
        runtime.argv = (runtime.argv[0], *args)
    else:
        runtime.spec = dataclasses.replace(runtime.spec, command=list(args))


# --- whose is it --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Us:
    """Who is asking: the unit (model or replica), its current run, and this supervisor's instance (the
    LLM_SUPERVISOR_INSTANCE its process runs carry; None where the runtime does not set it)."""

    unit: str
    run: int
    instance: str | None = None


def whose(holder: Holder, us: Us) -> str:
    """'own' (this model's leftover: ours to stop), 'model X' (another model's: left alone), 'supervisor S's
    model X' (a run of another supervisor on this host, which may use the same model ids) or 'foreign'."""
    if holder.unit is None:
        return "foreign"
    if us.instance is not None and holder.instance != us.instance:
        return f"another supervisor's model {holder.unit}"
    if holder.unit == us.unit and holder.run != us.run:
        return "own"
    return f"model {holder.unit}"


async def stop_own(holder: Holder) -> bool:
    """Stop the whole process group of a leftover of ours; True if something was stopped."""
    assert holder.pid is not None
    try:
        pgid = os.getpgid(holder.pid)
        leader = psutil.Process(pgid) if psutil.pid_exists(pgid) else psutil.Process(holder.pid)
        created = leader.create_time()
    except (ProcessLookupError, psutil.Error):
        return False  # gone already
    log.warning("stopping a leftover of this supervisor: %s, group %d", holder.describe(), pgid)
    return await stop_leftover(f"{pgid}:{created:.2f}", LEFTOVER_STOP_TIMEOUT, marker=holder.marker)


# --- the port -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PortCheck:
    note: str | None  # for failure_advice: who holds the port
    freed: bool  # a leftover of ours held it and was stopped: retry at once


async def free_port(args: Iterable[str], us: Us) -> PortCheck:
    """Name whoever listens on the run's --port; stop it when it is a leftover of this model."""
    port = port_of(tuple(args))
    if port is None:
        return PortCheck(None, freed=False)
    holders = await asyncio.to_thread(port_holders, port)
    if not holders:
        return PortCheck(f"Nothing listens on port {port} any more.", freed=False)
    named, freed = [], False
    for holder in holders:
        owner = whose(holder, us)
        if owner == "own" and await stop_own(holder):
            named.append(f"{holder.describe()}, a leftover of this model's run {holder.run}, was stopped")
            freed = True
        else:
            named.append(f"{holder.describe()} ({owner}{', not stopped' if owner != 'own' else ''})")
    return PortCheck(f"Port {port} is held by " + "; ".join(named) + ".", freed)


# --- the GPU ------------------------------------------------------------------------------------------


def describe_torch_holders(holders: Iterable[TorchHolder], us: Us) -> str | None:
    """torch's "Process P has X GiB memory in use", each P attributed to a model or marked foreign."""
    parts = []
    for found in holders:
        holder = describe_process(found.pid)
        parts.append(f"{holder.describe()} {found.gib:.2f} GiB ({whose(holder, us)})")
    return ("torch names the GPU memory's holders: " + "; ".join(parts) + ".") if parts else None


@dataclasses.dataclass(frozen=True, slots=True)
class GpuHolders:
    reading: GpuReading
    holders: dict[int, tuple[Holder, int]]  # pid -> (who, bytes)

    def of(self, kind: Callable[[str], bool], us: Us) -> list[tuple[Holder, int]]:
        return [(h, b) for h, b in self.holders.values() if kind(whose(h, us))]


def read_gpu_holders(nvml: Nvml) -> GpuHolders:
    """NVML's reading and each holder named (blocking: call in a thread)."""
    reading = nvml.read()
    return GpuHolders(reading, {pid: (describe_process(pid), held) for pid, held in reading.holders().items()})


def name_foreign(found: GpuHolders, us: Us) -> str | None:
    others = found.of(lambda owner: owner != "own", us)
    if not others:
        return None
    listed = "; ".join(f"{h.describe()} {b / _GIB:.2f} GiB ({whose(h, us)})" for h, b in others)
    return f"GPU memory is held by {listed}: not ours to stop."


async def release_gpu(nvml: Nvml, us: Us, clock: Clock, still_wanted: Callable[[], bool]) -> tuple[str, ...]:
    """Before a restart after an OOM: stop this model's leftovers on the GPU, then wait (bounded) until NVML
    shows their memory released. Returns notes for failure_advice (why the wait was skipped, who else holds
    memory)."""
    found = await asyncio.to_thread(read_gpu_holders, nvml)
    if found.reading.error is not None:
        log.info("%s: GPU wait skipped: %s", us.unit, found.reading.error)
        return (f"GPU memory was not checked before the restart: {found.reading.error}.",)
    own = found.of(lambda owner: owner == "own", us)
    for holder, _ in own:
        await stop_own(holder)
    waited_for = {h.pid for h, _ in own}
    deadline = clock.now() + GPU_RELEASE_TIMEOUT
    notes: list[str] = []
    while True:
        held = await asyncio.to_thread(lambda: _still_held(nvml.read(), waited_for))
        if not held:
            break
        if clock.now() >= deadline or not still_wanted():
            notes.append(f"GPU memory of pids {sorted(held)} was not released within {GPU_RELEASE_TIMEOUT:g}s.")
            break
        await clock.sleep_until(clock.now() + GPU_POLL_INTERVAL)
    foreign = name_foreign(found, us)
    return (*notes, *([foreign] if foreign else []))


def _still_held(reading: GpuReading, ours: set[int | None]) -> set[int]:
    """Pids that still hold GPU memory and are ours, or dead (the driver is still releasing their memory)."""
    held = set()
    for pid in reading.holders():
        if pid in ours:
            held.add(pid)
        else:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    continue
            held.add(pid)
    return held
