"""Smart recovery's pure parts: the figures read from vLLM's and torch's texts, the new arguments, and the
machine's restart without budget once the owner removed a run's cause (docs/recovery.md)."""

from __future__ import annotations

import pytest

from supervisor.core.adapt import (
    Adaptation,
    Floors,
    TorchHolder,
    adapt_gpu_memory_utilization,
    adapt_max_model_len,
    apply,
    fit_utilization,
    flag_value,
    parse_estimate,
    parse_free_memory,
    parse_length,
    parse_torch_holders,
    port_of,
    with_flag,
)
from supervisor.core.diagnosis import RunDiagnosis
from supervisor.core.machine import Machine
from supervisor.core.machine_types import FREE_RETRY_LIMIT, Exited, GroupGone, Kill, StartRequested, StopRequested
from supervisor.core.policy import RestartPolicy
from supervisor.core.states import Cause, EventKind, ExitStatus, State
from tests.supervisor.test_machine import CRASH, Driver, make_settings

# Recorded on an H200 with torch 2.11 (issue 13).
H200_OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 83.88 GiB. GPU 0 has a total capacity of "
    "139.80 GiB of which 54.80 GiB is free. Process 535 has 84.48 GiB memory in use. Including non-PyTorch memory, "
    "this process has 518.00 MiB memory in use. Of the allocated memory 0 bytes is allocated by PyTorch, and 0 "
    "bytes is reserved by PyTorch but unallocated."
)
# vLLM 0.32, measured (KV cache too small) and the free-memory guard as vLLM prints it.
KV_LINE = (
    "ValueError: To serve at least one request with the model's max seq len (10000000), (4.77 GiB KV cache is "
    "needed, which is larger than the available KV cache memory (1.0 GiB). Based on the available memory, the "
    "estimated maximum model length is 2097024. Try increasing gpu_memory_utilization"
)
FREE_LINE = (
    "ValueError: Free memory on device (13.91/79.33 GiB) on startup is less than desired GPU memory utilization "
    "(0.95, 75.36 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
)
FLOORS = Floors()


def test_parse_torch_oom_names_the_holder_and_not_this_process() -> None:
    """torch's OOM on a shared H200 names process 535 with its 84.48 GiB; 'this process' is no holder."""
    assert parse_torch_holders(H200_OOM) == (TorchHolder(535, 84.48),)


def test_parse_torch_holders_in_mib_and_several() -> None:
    """Several holders are all read, MiB amounts in GiB."""
    line = "Process 7 has 512.00 MiB memory in use. Process 9 has 2.50 GiB memory in use."
    assert parse_torch_holders(line) == (TorchHolder(7, 0.5), TorchHolder(9, 2.5))
    assert parse_torch_holders("no holders here") == ()


def test_parse_estimate_and_free_memory() -> None:
    """vLLM's estimate and its free-memory figures, in both device spellings; None when absent."""
    assert parse_estimate(KV_LINE) == 2097024
    assert parse_estimate(FREE_LINE) is None
    assert parse_free_memory(FREE_LINE) == (13.91, 79.33)
    assert parse_free_memory("Free memory on device cuda:0 (10.5/80 GiB) on startup is less") == (10.5, 80.0)
    assert parse_free_memory(KV_LINE) is None


def test_run_diagnosis_keeps_the_figures_of_the_run() -> None:
    """A run's diagnosis keeps the estimate, the free memory and torch's holders of any line it saw."""
    diagnosis = RunDiagnosis()
    for line in (KV_LINE, FREE_LINE, H200_OOM, "INFO the estimated maximum model length is 4096", "ordinary"):
        diagnosis.observe(line)
    assert diagnosis.estimate == 4096  # the latest word
    assert diagnosis.free_memory == (13.91, 79.33)
    assert diagnosis.torch_holders == (TorchHolder(535, 84.48),)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("serve", "m", "--max-model-len", "4096"), "4096"),
        (("serve", "m", "--max-model-len=32k"), "32k"),
        (("serve", "m", "--max_model_len", "8"), "8"),
        (("serve", "m"), None),
        (("serve", "m", "--max-model-len"), None),  # a flag without its value
    ],
)
def test_flag_value(args: tuple[str, ...], expected: str | None) -> None:
    """The flag's value in either form, or None."""
    assert flag_value(args, "--max-model-len") == expected


def test_with_flag_replaces_each_form_or_appends() -> None:
    """Every occurrence is replaced in its own form; an absent flag is added at the end."""
    assert with_flag(("a", "--max-model-len", "9", "--max-model-len=8"), "--max-model-len", "5") == (
        "a",
        "--max-model-len",
        "5",
        "--max-model-len=5",
    )
    assert with_flag(("a", "--max-model-len"), "--max-model-len", "5") == (
        "a",
        "--max-model-len",
        "--max-model-len",
        "5",
    )
    assert with_flag(("a",), "--max-model-len", "5") == ("a", "--max-model-len", "5")


def test_parse_length_reads_vllms_suffixes() -> None:
    """32k is 32000, 32K is 32768, 1m a million; nonsense is None."""
    assert [parse_length(t) for t in ("4096", "32k", "32K", "1m", "1M", "lots", None)] == [
        4096,
        32000,
        32768,
        1_000_000,
        1024**2,
        None,
        None,
    ]


def test_port_of() -> None:
    """--port gives the port; none or a placeholder gives None."""
    assert port_of(("--port", "8001")) == 8001
    assert port_of(("--port", "{port}")) is None
    assert port_of(()) is None


def test_max_model_len_takes_vllms_estimate() -> None:
    """A too-long context is replaced by the estimate, and the detail says so."""
    change = adapt_max_model_len(("serve", "m", "--max-model-len", "131072"), 21440, FLOORS)
    assert change == Adaptation("--max-model-len", "131072", "21440", "vLLM's estimate")
    assert change.detail == "max_model_len 131072 -> 21440 (vLLM's estimate)"
    assert apply(("serve", "m", "--max-model-len", "131072"), change) == ("serve", "m", "--max-model-len", "21440")


def test_max_model_len_added_when_absent() -> None:
    """Without the flag, the estimate is added; the detail names vLLM's default."""
    change = adapt_max_model_len(("serve", "m"), 21440, FLOORS)
    assert change is not None
    assert change.detail == "max_model_len default -> 21440 (vLLM's estimate)"
    assert apply(("serve", "m"), change) == ("serve", "m", "--max-model-len", "21440")


def test_max_model_len_never_below_the_floor_nor_upwards() -> None:
    """An estimate under the floor, or not lower than the current value, is no change: nothing to adapt."""
    assert adapt_max_model_len(("--max-model-len", "4096"), 1000, FLOORS) is None
    assert adapt_max_model_len(("--max-model-len", "4096"), 4096, FLOORS) is None
    assert adapt_max_model_len(("--max-model-len", "4096"), 5000, FLOORS) is None
    assert adapt_max_model_len(("--max-model-len", "4096"), 1000, Floors(max_model_len=512)) is not None


def test_gpu_memory_utilization_fits_what_is_free() -> None:
    """13.91 of 79.33 GiB free fits 0.16, just under the free fraction; below the floor it is no change."""
    assert fit_utilization(13.91, 79.33) == 0.16
    assert adapt_gpu_memory_utilization(("--gpu-memory-utilization", "0.95"), 13.91, 79.33, FLOORS) is None
    change = adapt_gpu_memory_utilization(("--gpu-memory-utilization", "0.95"), 13.91, 79.33, Floors(0, 0.1))
    assert change == Adaptation("--gpu-memory-utilization", "0.95", "0.16", "13.91 of 79.33 GiB free")
    change = adapt_gpu_memory_utilization(("serve",), 60.0, 80.0, FLOORS)  # default 0.9
    assert change is not None
    assert change.after == "0.74"


def test_gpu_memory_utilization_not_raised_nor_from_nothing() -> None:
    """Free memory above the current setting, or a zero total, changes nothing; a bad value is replaced."""
    assert adapt_gpu_memory_utilization(("--gpu-memory-utilization", "0.5"), 70.0, 80.0, FLOORS) is None
    assert adapt_gpu_memory_utilization((), 10.0, 0.0, FLOORS) is None
    change = adapt_gpu_memory_utilization(("--gpu-memory-utilization", "most"), 60.0, 80.0, FLOORS)
    assert change is not None
    assert change.after == "0.74"


# --- the machine's restart without budget ------------------------------------------------------------


def _failing(driver: Driver) -> None:
    driver.boot()
    assert driver.snap.state is State.STARTING


def test_retry_restarts_at_once_without_spending_budget() -> None:
    """An exit the owner fixed restarts after delay 0, uncounted, once the old group is gone."""
    d = Driver(Machine(make_settings()))
    _failing(d)
    step = d.feed(Exited(1, CRASH, retry="adapted"), 3.0)
    assert d.snap.state is State.BACKOFF
    assert d.snap.restart_count == 0
    assert d.snap.restart_times == ()
    assert d.snap.restart_at == 3.0
    assert d.snap.failure_cause is Cause.CRASH
    assert Kill(1) in step.actions
    assert [r.detail for r in d.records(EventKind.BACKOFF)] == ["0"]  # a delay in seconds, as always
    assert [r.detail for r in d.records(EventKind.EXITED)] == ["exit code 1; restarting at once: adapted"]
    d.feed(GroupGone(1))
    assert d.snap.state is State.STARTING
    assert d.snap.run == 2


def test_retry_is_bounded_then_the_budget_applies() -> None:
    """After FREE_RETRY_LIMIT free retries, a further one is an ordinary counted restart with its backoff."""
    d = Driver(Machine(make_settings()))
    _failing(d)
    for _ in range(FREE_RETRY_LIMIT):
        d.feed(Exited(d.snap.run, CRASH, retry="adapted"))
        d.feed(GroupGone(d.snap.run))
        d.spawned()
    d.feed(Exited(d.snap.run, CRASH, retry="adapted"), 10.0)
    assert d.snap.restart_count == 1
    assert d.snap.restart_at == 15.0
    # an operator's start gives fresh free retries
    d.feed(GroupGone(d.snap.run))
    d.feed(StopRequested())
    d.feed(StartRequested())
    assert d.snap.free_retries == 0


def test_retry_earned_again_by_serving() -> None:
    """A run that becomes healthy resets the free retries."""
    d = Driver(Machine(make_settings()))
    _failing(d)
    d.feed(Exited(1, CRASH, retry="adapted"))
    d.feed(GroupGone(1))
    d.spawned()
    assert d.snap.free_retries == 1
    d.healthy()
    assert d.snap.free_retries == 0


def test_no_retry_when_policy_or_operator_says_stop() -> None:
    """Policy `no`, or a clean exit, takes the normal path whatever the owner fixed."""
    d = Driver(Machine(make_settings(restart_policy=RestartPolicy.NO)))
    _failing(d)
    d.feed(Exited(1, CRASH, retry="adapted"))
    assert d.snap.state is State.STOPPED
    d = Driver(Machine(make_settings(success_exit_codes=frozenset({0}))))
    _failing(d)
    d.feed(Exited(1, ExitStatus(0), retry="adapted"))
    assert d.snap.state is State.STOPPED  # on-failure: a clean exit is no failure to retry
    assert d.snap.free_retries == 0
