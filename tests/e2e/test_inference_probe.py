"""The inference probe sees an engine that hangs while /health says 200, with no traffic at all."""

from __future__ import annotations

import pytest

from supervisor.core.states import Cause, EventKind, State
from tests.e2e.conftest import Supervised, fake_model, wait_until

pytestmark = pytest.mark.slow


async def test_a_stall_with_health_200_is_caught_and_restarted(supervised: Supervised) -> None:
    """fake-vllm stalls at once: probes pass, the one-token completion times out, the run is restarted."""
    entry = fake_model("--stall-after", "0", inference_probe={"interval": 0.3, "timeout": 0.5}, max_restarts=1)
    async with supervised({"m": entry}) as sup:
        await wait_until(lambda: sup.status("m").restart_count == 1, 20, "a restart")
        events = sup.events("m")
    unhealthy = [e for e in events if e.kind is EventKind.UNHEALTHY]
    assert (unhealthy[0].reason, unhealthy[0].detail) == (Cause.STALLED.value, "inference probe: no token within 0.5s")
    assert not any(e.kind is EventKind.PROBE_FAILED for e in events[: events.index(unhealthy[0])])
    healthy = [e for e in events if e.kind is EventKind.HEALTHY]
    assert 0.3 <= unhealthy[0].time - healthy[0].time < 3.0


async def test_a_serving_engine_passes_the_inference_probe(supervised: Supervised) -> None:
    """A server that answers completions is never flagged, however many probes run."""
    entry = fake_model(inference_probe={"interval": 0.1, "timeout": 2})
    async with supervised({"m": entry}) as sup:
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 20, "healthy")
        start = len(sup.events("m"))
        logs = sup.log_dir() / "m.log"
        await wait_until(lambda: logs.read_text().count("POST /v1/completions") >= 5, 20, "five inference probes")
        assert [e.kind for e in sup.events("m")[start:]] == []
