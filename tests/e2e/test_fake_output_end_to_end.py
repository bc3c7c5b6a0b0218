"""What fake-vllm prints, as vLLM does, read by the real supervisor: secrets redacted, findings in order."""

from __future__ import annotations

from supervisor.core.states import State
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
