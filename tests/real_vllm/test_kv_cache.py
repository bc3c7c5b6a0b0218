"""Real vLLM for CPUs asked for a context its KV cache cannot hold: what the supervisor makes of it.

`--max-model-len 10000000` with VLLM_CPU_KVCACHE_SPACE=1 (GiB), and VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 so that
the length passes the check against the tiny model's max_position_embeddings (256; without it vLLM exits at
once with a pydantic ValidationError). vLLM loads the whole model, then fails with "ValueError: To serve at
least one request with the model's max seq len (10000000), (4.77 GiB KV cache is needed, which is larger
than the available KV cache memory (1.0 GiB). Based on the available memory, the estimated maximum model
length is 2097024. ..." and "Engine core initialization failed", exit 1. One run, shared by the tests below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from supervisor.core.states import Cause, EventKind, State
from supervisor.core.views import ModelStatus, TimelineEvent
from tests.real_vllm.harness import log_lines, of_kind, report, show_events, supervised, vllm_model, wait_until

pytestmark = [pytest.mark.real_vllm, pytest.mark.asyncio(loop_scope="module")]

MODEL = "tiny"
ESTIMATE = "2097024"  # vLLM's estimate of the longest context that fits 1 GiB of this model's KV cache
KV_LINE = "KV cache is needed, which is larger than the available KV cache memory"


@dataclass(frozen=True)
class Outcome:
    status: ModelStatus
    events: list[TimelineEvent]
    lines: list[str]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def too_small(tiny_model: Path, tag: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outcome]:
    entry = vllm_model(
        tiny_model,
        tag,
        max_model_len="10000000",
        env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
        restart_policy="no",
        startup_timeout=400,
    )
    async with supervised(tmp_path_factory.mktemp("kv-cache"), {MODEL: entry}, tag) as running:
        fleet = running.fleet

        def over() -> bool:
            status = fleet.status(MODEL)
            exited = of_kind(fleet.events(MODEL), EventKind.EXITED)
            return status.state in (State.STOPPED, State.FAILED) and bool(exited)

        await wait_until(over, 420, "vLLM to give up on the KV cache")
        outcome = Outcome(fleet.status(MODEL), fleet.events(MODEL), log_lines(fleet, MODEL))
    # Everything from a little before the first error to the end of the run, as the supervisor logged it.
    marks = ("Traceback", "ERROR", KV_LINE)
    first = next((i for i, line in enumerate(outcome.lines) if any(m in line for m in marks)), 0)
    status = outcome.status
    report(
        "kv-cache-too-small",
        f"failure_cause={status.failure_cause} has_cuda_oom={status.has_cuda_oom} "
        f"last_exit_code={status.last_exit_code} state={status.state}\n"
        f"failure_advice={status.failure_advice}\n"
        f"events:\n{show_events(outcome.events)}\n"
        f"output from line {first + 1} of {len(outcome.lines)} to the end:\n"
        + "\n".join(outcome.lines[max(0, first - 10) :]),
    )
    yield outcome


@pytest.mark.timeout(600)
async def test_the_kv_failure_is_diagnosed_as_out_of_memory_with_vllms_estimate(too_small: Outcome) -> None:
    status = too_small.status
    assert any(KV_LINE in line for line in too_small.lines)
    assert status.failure_cause is Cause.OOM
    assert status.last_exit_code == 1
    findings = of_kind(too_small.events, EventKind.DIAGNOSED, EventKind.OOM_DETECTED)
    assert "kv_cache_too_small" in [e.detail for e in findings], show_events(too_small.events)
    assert [e.reason for e in of_kind(too_small.events, EventKind.EXITED)] == [Cause.OOM.value]
    assert status.failure_advice is not None
    assert ESTIMATE in status.failure_advice


@pytest.mark.timeout(600)
async def test_on_cpus_the_kv_failure_is_no_cuda_oom_and_names_the_cpu_knob(too_small: Outcome) -> None:
    status = too_small.status
    assert status.failure_cause is Cause.OOM
    assert status.failure_advice is not None
    assert ESTIMATE in status.failure_advice
    assert status.has_cuda_oom is False
    assert "VLLM_CPU_KVCACHE_SPACE" in status.failure_advice


@pytest.mark.timeout(900)
async def test_with_adapt_the_next_run_serves_with_vllms_estimate(
    tiny_model: Path, tag: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """adapt: true: the run that cannot fit its --max-model-len is followed by one with vLLM's estimate, which
    comes up healthy, marked by an `adapted` event and listed in adaptations and effective_args."""
    entry = vllm_model(
        tiny_model,
        tag,
        max_model_len="10000000",
        env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
        adapt=True,
        max_restarts=1,
        startup_timeout=400,
    )
    async with supervised(tmp_path_factory.mktemp("kv-adapt"), {MODEL: entry}, tag) as running:
        fleet = running.fleet

        def settled() -> bool:
            state = fleet.status(MODEL).state
            ended = state in (State.FAILED, State.STOPPED) and bool(of_kind(fleet.events(MODEL), EventKind.EXITED))
            return state is State.HEALTHY or ended

        await wait_until(settled, 840, "the adapted run to serve")
        status, events = fleet.status(MODEL), fleet.events(MODEL)
    report(
        "kv-cache-adapted",
        f"state={status.state} restart_count={status.restart_count}\n"
        f"adaptations={status.adaptations}\neffective_args={status.effective_args}\n"
        f"events:\n{show_events(events)}",
    )
    assert status.state is State.HEALTHY, show_events(events)
    adapted = of_kind(events, EventKind.ADAPTED)
    assert [e.detail for e in adapted] == [f"max_model_len 10000000 -> {ESTIMATE} (vLLM's estimate)"]
    assert [(c.flag, c.after) for c in status.adaptations] == [("--max-model-len", ESTIMATE)]
    assert status.effective_args is not None
    assert status.effective_args[status.effective_args.index("--max-model-len") + 1] == ESTIMATE
    assert status.restart_count == 0  # an adapted restart spends no budget
    assert [e.reason for e in of_kind(events, EventKind.EXITED)] == [Cause.OOM.value]
