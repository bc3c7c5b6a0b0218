"""Where smart recovery's changes show (docs/recovery.md): the API's shape, `status ID`, and the args of a
process or container runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.api.schemas import ArgChangeOut
from supervisor.cli.format import model_detail
from supervisor.core.views import ArgChange
from supervisor.loop.recovery import runtime_args, set_runtime_args
from supervisor.runtime.process import ProcessRuntime

CHANGE = ArgChange("--max-model-len", "131072", "21440", "vLLM's estimate", 1_700_000_000.0)


def test_api_shape_names_before_and_after_from_and_to() -> None:
    """An adaptation is sent as {flag, from, to, reason, time}."""
    body = ArgChangeOut.model_validate(CHANGE).model_dump(by_alias=True)
    assert body == {
        "flag": "--max-model-len",
        "from": "131072",
        "to": "21440",
        "reason": "vLLM's estimate",
        "time": 1_700_000_000.0,
    }


def test_status_id_lists_each_change_and_the_effective_args() -> None:
    """`llm-supervisor status ID` prints one `adapted:` line per change and the args the run gets."""
    model = {
        "id": "m",
        "state": "healthy",
        "desired": "running",
        "pid": 7,
        "uptime_seconds": 3.0,
        "is_healthy": True,
        "consecutive_health_failures": 0,
        "restart_policy": "on-failure",
        "restart_count": 0,
        "max_restarts": 3,
        "last_exit_code": None,
        "has_cuda_oom": False,
        "failure_cause": None,
        "adaptations": [
            {
                "flag": "--max-model-len",
                "from": None,
                "to": "21440",
                "reason": "vLLM's estimate",
                "time": 1_700_000_000.0,
            }
        ],
        "effective_args": ["serve", "m", "--max-model-len", "21440"],
    }
    text = model_detail(model)
    assert "--max-model-len default -> 21440 (vLLM's estimate, " in text
    assert text.count("adapted:") == 1
    assert text.count("effective args:") == 1
    assert "serve m --max-model-len 21440" in text
    del model["adaptations"]
    assert "adapted" not in model_detail(model)


@dataclass(frozen=True)
class Spec:
    """A container spec as far as smart recovery sees one: its command (the args)."""

    image: str
    command: list[str] = field(default_factory=list)


class ContainerRuntime:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec


def test_args_of_a_process_and_of_a_container_are_read_and_replaced() -> None:
    """A process's argv after the command, a container's command; a runtime with neither has no args."""
    process = ProcessRuntime(["vllm", "serve", "m"])
    assert runtime_args(process) == ("serve", "m")
    set_runtime_args(process, ("serve", "m", "--max-model-len", "8"))
    assert process.argv == ("vllm", "serve", "m", "--max-model-len", "8")
    container = ContainerRuntime(Spec("vllm/vllm-openai", ["--model", "m"]))
    assert runtime_args(container) == ("--model", "m")
    set_runtime_args(container, ("--model", "m", "--max-model-len", "8"))
    assert container.spec == Spec("vllm/vllm-openai", ["--model", "m", "--max-model-len", "8"])
    assert runtime_args(object()) is None
