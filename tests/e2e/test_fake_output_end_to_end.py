"""What fake-vllm prints, as vLLM does, read by the real supervisor: secrets redacted, findings in order."""

from __future__ import annotations

from supervisor.core.states import Cause, EventKind, State
from tests.e2e.conftest import Supervised, fake_model, wait_until

SECRET = "sk-e2e-4f9c2a7d1b"


async def test_the_api_key_vllm_prints_among_its_args_never_reaches_the_log(supervised: Supervised) -> None:
    """vLLM 0.32 logs `non-default args: {..., 'api_key': '***'}`; the key is in neither the log, the status nor
    the events."""
    async with supervised({"m": fake_model("--api-key", SECRET)}) as sup:
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 20, "healthy")
        text = (sup.log_dir() / "m.log").read_text()
        seen = repr(sup.status("m")) + repr(sup.events("m"))
    [line] = [line for line in text.splitlines() if "non-default args" in line]
    assert "'api_key': '***'" in line
    assert SECRET not in text
    assert SECRET not in seen


async def test_a_startup_oom_is_found_as_an_oom_and_nothing_else(supervised: Supervised) -> None:
    """A CUDA OOM while loading: the first and only finding is oom, never a misleading engine_dead before it."""
    async with supervised({"m": fake_model("--oom", "startup", max_restarts=0)}) as sup:
        await wait_until(lambda: sup.status("m").state is State.FAILED, 20, "failed")
        events = sup.events("m")
        status = sup.status("m")
    findings = [e.reason for e in events if e.kind in (EventKind.DIAGNOSED, EventKind.OOM_DETECTED)]
    assert findings
    assert set(findings) == {Cause.OOM.value}
    assert (status.failure_cause, status.has_cuda_oom) == (Cause.OOM, True)
