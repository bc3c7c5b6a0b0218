"""Smart recovery end to end (docs/recovery.md): a real Fleet over fake-vllm, whose KV-cache check prints
vLLM's exact failure and estimate, and real processes listening on a model's port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from supervisor.core.states import Cause, EventKind, State
from supervisor.loop.runtimes import instance_id
from supervisor.runtime.process_group import RUN_MARKER_ENV
from supervisor.runtime.usage import INSTANCE_ENV
from tests.e2e.conftest import Supervised, fake_model, free_port, kinds, wait_until

# The cache holds 8192 tokens; one request of 100000 does not fit, so fake-vllm fails after its load with
# "the estimated maximum model length is 8192".
KV_FLAGS = ("--max-model-len", "100000", "--kv-cache-tokens", "8192")


def _listener(port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A real process listening on 127.0.0.1:port until it is stopped."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('listening', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env={**os.environ, **(env or {})}, start_new_session=True
    )
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == b"listening\n"
    return proc


async def test_kv_cache_too_small_next_run_gets_vllms_estimate(supervised: Supervised) -> None:
    """With adapt on, a --max-model-len beyond the KV cache comes up on the next run with vLLM's estimate,
    without spending the restart budget; an operator's start returns to the configured args."""
    model = fake_model(*KV_FLAGS, adapt=True, max_restarts=1)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 30, "the adapted run to serve")
        status = sup.status("m")
        adapted = kinds(sup.events("m"), EventKind.ADAPTED)
        assert [e.detail for e in adapted] == ["max_model_len 100000 -> 8192 (vLLM's estimate)"]
        assert status.restart_count == 0
        assert [(c.flag, c.before, c.after) for c in status.adaptations] == [("--max-model-len", "100000", "8192")]
        assert status.effective_args is not None
        assert status.effective_args[status.effective_args.index("--max-model-len") + 1] == "8192"
        assert kinds(sup.events("m"), EventKind.SPAWNED)[-1].reason == Cause.OOM.value
        order = [e.kind for e in sup.events("m")]
        assert order[order.index(EventKind.EXITED) :][:4] == [
            EventKind.EXITED,
            EventKind.BACKOFF,
            EventKind.ADAPTED,
            EventKind.SPAWNED,
        ]

        await sup.stop_model("m")
        await wait_until(lambda: sup.status("m").state is State.STOPPED, 20, "stopped")
        await sup.start_model("m")
        assert sup.status("m").adaptations == ()
        assert "100000" in (sup.status("m").effective_args or ())
        restored = kinds(sup.events("m"), EventKind.ADAPTED)[-1]
        assert restored.detail == "configured args restored (operator start)"
        order = [e.kind for e in sup.events("m")]
        assert order[order.index(EventKind.START_REQUESTED) :][:3] == [
            EventKind.START_REQUESTED,
            EventKind.ADAPTED,
            EventKind.SPAWNED,
        ]
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.ADAPTED)) == 3, 30, "adapted again")


async def test_without_adapt_the_args_stay_and_the_budget_is_spent(supervised: Supervised) -> None:
    """adapt off (the default): the same args fail until the budget is spent; the advice quotes the estimate."""
    model = fake_model(*KV_FLAGS, max_restarts=1, restart_window=None)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: sup.status("m").state is State.FAILED, 30, "the model to fail")
        status = sup.status("m")
        assert kinds(sup.events("m"), EventKind.ADAPTED) == []
        assert status.adaptations == ()
        assert "vLLM estimates 8192 fits" in (status.failure_advice or "")


@pytest.mark.parametrize("marker", [None, "m:0"])
async def test_foreign_port_holder_is_named_not_killed(supervised: Supervised, marker: str | None) -> None:
    """A port held by a foreign process, or by a run of another supervisor that has a model of the same id:
    failure_advice names its pid and command, and it lives on."""
    port = free_port()
    holder = _listener(port, None if marker is None else {RUN_MARKER_ENV: marker, INSTANCE_ENV: "elsewhere"})
    try:
        model = fake_model(max_restarts=0)
        model["args"][model["args"].index("--port") + 1] = str(port)
        model["endpoints"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        async with supervised({"m": model}) as sup:
            await wait_until(lambda: sup.status("m").state is State.FAILED, 30, "the model to fail")
            status = sup.status("m")
        assert status.failure_cause is Cause.PORT_IN_USE
        assert f"Port {port} is held by pid {holder.pid} ({sys.executable} -c" in (status.failure_advice or "")
        owner = "foreign" if marker is None else "another supervisor's model m"
        assert f"({owner}, not stopped)" in (status.failure_advice or "")
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


async def test_own_leftover_on_the_port_is_stopped_and_the_start_retried(
    supervised: Supervised, tmp_path: Path
) -> None:
    """A leftover of this model's earlier run holding the port is stopped, and the start retried at once
    without spending the budget."""
    port = free_port()
    holder = _listener(port, {RUN_MARKER_ENV: "m:0", INSTANCE_ENV: instance_id(tmp_path / "state")})
    try:
        model = fake_model(max_restarts=0)
        model["args"][model["args"].index("--port") + 1] = str(port)
        model["endpoints"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        async with supervised({"m": model}) as sup:
            await wait_until(lambda: sup.status("m").state is State.HEALTHY, 30, "the retried run to serve")
            status = sup.status("m")
            events = sup.events("m")
        assert holder.wait(timeout=10) is not None
        assert status.restart_count == 0
        assert [e.reason for e in kinds(events, EventKind.EXITED)] == [Cause.PORT_IN_USE.value]
        assert "restarting at once: stopped our leftover holding the port" in (
            kinds(events, EventKind.EXITED)[0].detail or ""
        )
        assert kinds(events, EventKind.BACKOFF)[0].detail == "0"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def test_port_holders_reads_a_real_listener() -> None:
    """port_holders finds the real listening process with its command; a closed port has none."""
    from supervisor.runtime.holders import port_holders

    port = free_port()
    assert port_holders(port) == []
    proc = _listener(port)
    try:
        found = port_holders(port)
        assert [h.pid for h in found] == [proc.pid]
        assert found[0].marker is None
        assert psutil.Process(proc.pid).is_running()
    finally:
        proc.kill()
        proc.wait()


async def test_restart_after_a_cuda_oom_says_the_gpu_was_not_checked_without_nvml(supervised: Supervised) -> None:
    """Without NVML (no package or driver here), the GPU wait before the restart is skipped and the advice of the
    failure says why while the restart waits; nothing is made up, and the restart goes ahead."""
    note = "GPU memory was not checked before the restart: "
    model = fake_model("--oom", "startup", max_restarts=1, restart_window=None, restart_delay=3)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: note in (sup.status("m").failure_advice or ""), 30, "the advice to say so")
        status = sup.status("m")
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.SPAWNED)) == 2, 30, "the restart")
    assert status.state is State.BACKOFF
    assert status.has_cuda_oom
    assert status.failure_advice is not None
    assert status.failure_advice.startswith("The GPU ran out of memory.")
