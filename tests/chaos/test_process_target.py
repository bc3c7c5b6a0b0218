"""A fault aimed at one process of a model's group by name (`target: {model, process: ...}`)."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from chaos import procs
from chaos.steps import KillStep, ProcessRef
from fake_vllm.testing import start


def test_process_alone_is_signalled_and_group_stays_the_default_otherwise() -> None:
    """Without `process` a fault reaches the whole group; with it, that one process; `group: false` the pid."""
    assert ProcessRef(model="m1").whole_group
    assert not ProcessRef(model="m1", group=False).whole_group
    assert not ProcessRef(model="m1", process="VLLM::EngineCore").whole_group


def test_process_and_group_true_together_are_refused() -> None:
    """Naming one process and asking for the whole group contradict each other: the scenario is refused."""
    with pytest.raises(ValidationError, match="leave group out"):
        KillStep.model_validate({"action": "kill", "target": {"model": "m1", "group": True, "process": "x"}})


def test_the_engine_is_found_by_name_in_a_real_servers_group(tmp_path: Path) -> None:
    """fake-vllm's EngineCore is found among the API server's group; its worker and the server are not it."""
    server = start(log_dir=tmp_path)
    try:
        _find_the_engine(server.pid)
    finally:
        server.kill()
    assert server.group() == []


def _find_the_engine(server_pid: int) -> None:
    server = psutil.Process(server_pid)
    engine = procs.find_in_group(server.pid, "VLLM::EngineCore")
    assert engine is not None
    assert engine != server.pid
    assert psutil.Process(engine).ppid() == server.pid
    worker = procs.find_in_group(server.pid, "VLLM::Worker")
    assert worker is not None
    assert psutil.Process(worker).ppid() == engine
    assert procs.find_in_group(server.pid, "VLLM::Nothing") is None
    names = " ".join(procs.group_names(server.pid))
    assert "VLLM::EngineCore" in names
    assert "VLLM::Worker" in names


def test_a_process_that_is_gone_has_no_group() -> None:
    """A pid that no longer exists names nothing (the step then fails with what was found)."""
    gone = psutil.Popen(["true"])
    gone.wait()
    assert procs.find_in_group(gone.pid, "VLLM::EngineCore") is None
    assert procs.group_names(gone.pid) == []
