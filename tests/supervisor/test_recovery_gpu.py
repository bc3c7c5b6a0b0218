"""Smart recovery on the GPU (docs/recovery.md): our own leftovers stopped and waited for, foreign holders named
and left alone, torch's named holders attributed, and no figures made up without NVML. NVML is a stand-in
module listing real processes (there is no GPU in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from supervisor.core.adapt import Floors, TorchHolder
from supervisor.core.clock import RealClock
from supervisor.core.diagnosis import RunDiagnosis
from supervisor.core.states import EventKind, State
from supervisor.loop import recovery
from supervisor.loop.adapter import Adapter
from supervisor.runtime.gpu import Nvml
from supervisor.runtime.process_group import RUN_MARKER_ENV
from supervisor.runtime.usage import INSTANCE_ENV

GIB = 1 << 30
US = recovery.Us("m", 2)
SLEEP = "import time; print('up', flush=True); time.sleep(60)"
FREE_LINE = (
    "ValueError: Free memory on device (13.91/79.33 GiB) on startup is less than desired GPU memory utilization "
    "(0.95, 75.36 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
)


class FakeNvmlError(Exception):
    pass


def nvml_listing(held: dict[int, int], *, fail: bool = False, keep: frozenset[int] = frozenset()) -> Nvml:
    """NVML whose one GPU lists each pid of `held` while that process is alive (those in `keep` always: the
    driver still freeing a dead process's memory)."""

    def processes(_: object) -> list[types.SimpleNamespace]:
        return [
            types.SimpleNamespace(pid=pid, usedGpuMemory=used)
            for pid, used in held.items()
            if pid in keep or _alive(pid)
        ]

    def init() -> None:
        if fail:
            raise FakeNvmlError("Driver Not Loaded")

    module: Any = types.SimpleNamespace(
        NVMLError=FakeNvmlError,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: "NVIDIA H200",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 * GIB, used=sum(held.values())),
        nvmlDeviceGetComputeRunningProcesses=processes,
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [],
    )
    return Nvml(module)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def sleeper() -> Iterator[Any]:
    """Start sleeping processes in their own sessions, some carrying a run marker; all killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(marker: str | None = None, instance: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        for name, value in ((RUN_MARKER_ENV, marker), (INSTANCE_ENV, instance)):
            env.pop(name, None)
            if value is not None:
                env[name] = value
        proc = subprocess.Popen([sys.executable, "-c", SLEEP], env=env, stdout=subprocess.PIPE, start_new_session=True)
        started.append(proc)
        assert proc.stdout is not None
        with proc.stdout:  # once it speaks, its command line and environment are its own
            assert proc.stdout.readline() == b"up\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_own_leftover_is_stopped_and_waited_for_a_foreign_one_named(sleeper: Any) -> None:
    """Our earlier run's process is stopped and its memory waited for; a foreign holder is named, not killed."""
    own, foreign = sleeper("m:1"), sleeper()
    nvml = nvml_listing({own.pid: 20 * GIB, foreign.pid: 30 * GIB})
    notes = await recovery.release_gpu(nvml, US, RealClock(), lambda: True)
    assert own.wait(timeout=10) is not None
    assert foreign.poll() is None
    assert notes == (
        f"GPU memory is held by pid {foreign.pid} ({sys.executable} -c {SLEEP}) 30.00 GiB (foreign): not ours to stop.",
    )


async def test_another_models_process_is_named_not_stopped(sleeper: Any) -> None:
    """A process of another model of this supervisor is not this model's to stop: named as that model's."""
    other = sleeper("n:4")
    notes = await recovery.release_gpu(nvml_listing({other.pid: GIB}), US, RealClock(), lambda: True)
    assert other.poll() is None
    assert "(model n): not ours to stop" in notes[0]


async def test_another_supervisors_run_of_the_same_model_id_is_not_ours(sleeper: Any) -> None:
    """Two supervisors on one host may both run a model "m": the other's run is named, never stopped."""
    theirs, ours = sleeper("m:1", instance="b" * 12), sleeper("m:1", instance="a" * 12)
    nvml = nvml_listing({theirs.pid: GIB, ours.pid: GIB})
    notes = await recovery.release_gpu(nvml, recovery.Us("m", 2, "a" * 12), RealClock(), lambda: True)
    assert ours.wait(timeout=10) is not None
    assert theirs.poll() is None
    assert "(another supervisor's model m): not ours to stop" in notes[0]


async def test_without_nvml_the_wait_is_skipped_with_the_reason() -> None:
    """No driver: nothing is waited for or made up; the note says why."""
    notes = await recovery.release_gpu(nvml_listing({}, fail=True), US, RealClock(), lambda: True)
    assert notes == ("GPU memory was not checked before the restart: NVML: Driver Not Loaded.",)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_memory_still_held_by_a_dead_process_is_waited_for_boundedly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid NVML lists after it died (the driver still freeing) is waited for, up to the bound."""
    monkeypatch.setattr(recovery, "GPU_RELEASE_TIMEOUT", 0.2)
    dead = _dead_pid()
    nvml = nvml_listing({dead: GIB}, keep=frozenset({dead}))
    notes = await recovery.release_gpu(nvml, US, RealClock(), lambda: True)
    assert notes[0] == f"GPU memory of pids [{dead}] was not released within 0.2s."


async def test_a_stop_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the restart is no longer wanted (the operator stopped the model), the wait ends at once."""
    monkeypatch.setattr(recovery, "GPU_RELEASE_TIMEOUT", 30.0)
    dead = _dead_pid()
    notes = await recovery.release_gpu(
        nvml_listing({dead: GIB}, keep=frozenset({dead})), US, RealClock(), lambda: False
    )
    assert "was not released within 30s" in notes[0]


def test_torch_holders_are_attributed(sleeper: Any) -> None:
    """torch's "Process P has X GiB" becomes pid, command, memory and whose it is."""
    own, foreign = sleeper("m:1"), sleeper()
    text = recovery.describe_torch_holders([TorchHolder(own.pid, 84.48), TorchHolder(foreign.pid, 1.0)], US)
    assert text is not None
    assert f"pid {own.pid} (" in text
    assert "84.48 GiB (own)" in text
    assert "1.00 GiB (foreign)" in text
    assert recovery.describe_torch_holders([], US) is None


class ArgvRuntime:
    """A runtime as far as smart recovery sees one: its argv."""

    def __init__(self, *args: str) -> None:
        self.argv = ("vllm", *args)


async def test_gpu_utilization_adapted_to_what_a_foreign_holder_leaves(sleeper: Any) -> None:
    """vLLM's free-memory guard with a foreign holder: the next run asks for what is free, and the change is
    recorded; an operator's start puts the configured value back."""
    foreign = sleeper()
    runtime = ArgvRuntime("serve", "m", "--gpu-memory-utilization", "0.95")
    adapter = Adapter("m", runtime, Floors(1024, 0.1), nvml_listing({foreign.pid: 60 * GIB}), RealClock())
    diagnosis = RunDiagnosis()
    diagnosis.observe(FREE_LINE)
    plan = await adapter.at_exit(1, diagnosis)
    assert plan.change is not None
    assert plan.retry == "gpu_memory_utilization 0.95 -> 0.16 (13.91 of 79.33 GiB free)"
    record = adapter.commit(plan.change, State.BACKOFF)
    assert record.kind is EventKind.ADAPTED
    assert runtime.argv == ("vllm", "serve", "m", "--gpu-memory-utilization", "0.16")
    assert [c.after for c in adapter.changes] == ["0.16"]
    back = adapter.reset(State.STARTING, "operator start")
    assert back is not None
    assert back.detail == "configured args restored (operator start)"
    assert runtime.argv == ("vllm", "serve", "m", "--gpu-memory-utilization", "0.95")
    assert adapter.reset(State.STARTING, "operator start") is None


async def test_gpu_utilization_not_adapted_to_our_own_leftover_or_without_nvml(sleeper: Any) -> None:
    """Memory held only by our own leftover comes back after the wait: no change. Without NVML whose memory it
    is cannot be told: no change, and the advice says why."""
    own = sleeper("m:1")
    diagnosis = RunDiagnosis()
    diagnosis.observe(FREE_LINE)
    runtime = ArgvRuntime("--gpu-memory-utilization", "0.95")
    adapter = Adapter("m", runtime, Floors(1024, 0.1), nvml_listing({own.pid: 60 * GIB}), RealClock())
    assert (await adapter.at_exit(2, diagnosis)).change is None
    blind = Adapter("m", runtime, Floors(1024, 0.1), nvml_listing({}, fail=True), RealClock())
    plan = await blind.at_exit(2, diagnosis)
    assert plan.change is None
    assert "not adapted: whose memory it is cannot be told" in plan.notes[0]


async def test_adapt_off_or_estimate_too_low_changes_nothing() -> None:
    """adapt off: no change; an estimate under the floor: no change, and the advice says so."""
    diagnosis = RunDiagnosis()
    diagnosis.observe(
        "ValueError: ... KV cache is needed, which is larger than the available KV cache memory "
        "(1 GiB). Based on the available memory, the estimated maximum model length is 512."
    )
    runtime = ArgvRuntime("--max-model-len", "4096")
    off = Adapter("m", runtime, None, nvml_listing({}), RealClock())
    assert (await off.at_exit(1, diagnosis)).change is None
    on = Adapter("m", runtime, Floors(), nvml_listing({}), RealClock())
    plan = await on.at_exit(1, diagnosis)
    assert plan.change is None
    assert "below adapt_min_max_model_len 1024" in plan.notes[0]


def test_effective_args_mask_secret_values() -> None:
    """--api-key's value never reaches the status, in either form."""
    runtime = ArgvRuntime("--api-key", "sk-verysecret", "--hf-token=hf_abcdefgh", "--port", "8001")
    shown = Adapter("m", runtime, None, nvml_listing({}), RealClock()).shown_args()
    assert shown == ("--api-key", "[REDACTED]", "--hf-token=[REDACTED]", "--port", "8001")
    assert Adapter("m", object(), None, nvml_listing({}), RealClock()).shown_args() is None  # type: ignore[arg-type]
