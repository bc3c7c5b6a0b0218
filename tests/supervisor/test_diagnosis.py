"""Tests of supervisor.diagnosis against output lines as real vLLM and torch print them."""

from __future__ import annotations

import pytest

from supervisor.core.diagnosis import EXCERPT_MAX, Finding, RunDiagnosis, classify_line
from supervisor.core.states import Cause

ENGINE = "(EngineCore_DP0 pid=212) "

FATAL_LINES = [
    # CUDA out of memory, torch >= 2.4
    (
        "cuda_oom",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.15 GiB. GPU 0 has a total capacity "
        "of 39.56 GiB of which 6.80 GiB is free. Including non-PyTorch memory, this process has "
        "36.61 GiB memory in use. Of the allocated memory 35.12 GiB is allocated by PyTorch, and 1.02 GiB "
        "is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.",
    ),
    (
        "cuda_oom",
        ENGINE + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 224.00 MiB. GPU 0 has a "
        "total capacity of 79.33 GiB of which 112.94 MiB is free.",
    ),
    # older torch, with its 'capacty' typo
    (
        "cuda_oom",
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 14.75 GiB "
        "total capacty; 13.62 GiB already allocated; 3.06 MiB free; 13.88 GiB reserved in total by PyTorch)",
    ),
    (
        "cuda_oom",
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity; "
        "12.25 GiB already allocated)",
    ),
    ("cuda_oom", "RuntimeError: CUDA error: out of memory"),
    ("cuda_oom", "CUDA error: out of memory"),
    ("cuda_oom", "[rank0]: RuntimeError: CUDA error: out of memory\n"),
    ("cuda_oom", "ERROR 09-24 20:55:20 [worker.py:88] cudaMalloc failed: out of memory"),
    ("cuda_oom", "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    # KV-cache sizing
    (
        "kv_cache_too_small",
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine.",
    ),
    (
        "kv_cache_too_small",
        ENGINE + "ValueError: To serve at least one request with the models's max seq len "
        "(131072), (4.00 GiB KV cache is needed, which is larger than the available KV cache memory (0.65 GiB). "
        "Based on the available memory, the estimated maximum model length is 21440. Try increasing "
        "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
    ),
    (
        "kv_cache_too_small",
        "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens "
        "that can be stored in KV cache (19008). Try increasing `gpu_memory_utilization` or decreasing "
        "`max_model_len` when initializing the engine.",
    ),
    # GPU memory held by someone else
    (
        "gpu_memory_held",
        ENGINE + "ValueError: Free memory on device (13.91/79.33 GiB) on startup is less than "
        "desired GPU memory utilization (0.95, 75.36 GiB). Decrease GPU memory utilization or reduce GPU memory used "
        "by other processes.",
    ),
    # engine death
    (
        "engine_dead",
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace "
        "(above) for the root cause.",
    ),
    ("engine_dead", "vllm.engine.async_llm_engine.AsyncEngineDeadError: Background loop has errored already."),
    (
        "engine_dead",
        "ERROR 09-24 21:02:11 [multiproc_executor.py:149] Worker proc VllmWorker-0 died unexpectedly, "
        "shutting down executor.",
    ),
    # NCCL
    (
        "nccl_failure",
        "[rank1]:[E924 21:10:01.123456789 ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught "
        "collective operation timeout: WorkNCCL(SeqNum=1234, OpType=ALLREDUCE, NumelIn=4096, NumelOut=4096, "
        "Timeout(ms)=600000) ran for 600012 milliseconds before timing out.",
    ),
    (
        "nccl_failure",
        "torch.distributed.DistBackendError: NCCL error in: "
        "../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, unhandled cuda error",
    ),
    ("nccl_failure", "RuntimeError: NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details)"),
    # port in use
    ("port_in_use", "OSError: [Errno 98] Address already in use"),
    (
        "port_in_use",
        "(APIServer pid=1) ERROR:    [Errno 98] error while attempting to bind on address "
        "('0.0.0.0', 8000): address already in use",
    ),
    ("port_in_use", "OSError: [Errno 48] Address already in use"),
]

CAUSES = {
    "cuda_oom": Cause.OOM,
    "kv_cache_too_small": Cause.OOM,
    "gpu_memory_held": Cause.OOM,
    "engine_dead": Cause.ENGINE_DEAD,
    "nccl_failure": Cause.CRASH,
    "port_in_use": Cause.PORT_IN_USE,
}


@pytest.mark.parametrize(("finding", "line"), FATAL_LINES)
def test_fatal_line_is_classified(finding: str, line: str) -> None:
    """Each fatal form that vLLM, torch or uvicorn prints is recognised, with its cause and the line itself."""
    found = classify_line(line)
    assert found is not None
    assert (found.finding, found.cause) == (finding, CAUSES[finding])
    assert found.excerpt == line.strip()


ORDINARY_LINES = [
    "",
    "(APIServer pid=1) INFO 09-24 20:54:38 [api_server.py:1971] vLLM API server version 0.10.2",
    ENGINE + "INFO 09-24 20:55:01 [gpu_model_runner.py:2007] Model loading took 4.2117 GiB and 5.31 seconds",
    ENGINE + "INFO 09-24 20:55:20 [gpu_worker.py:276] Available KV cache memory: 1.50 GiB",
    ENGINE + "INFO 09-24 20:55:20 [kv_cache_utils.py:849] GPU KV cache size: 49,152 tokens",
    ENGINE + "INFO 09-24 20:55:20 [core.py:210] init engine (profile, create kv cache, warmup model) took 34.11 s",
    ENGINE + "INFO 09-24 20:55:10 [gpu_worker.py:298] Memory profiling takes 3.24 seconds",
    "(APIServer pid=1) INFO 09-24 21:00:01 [loggers.py:123] Engine 000: Avg prompt throughput: 312.4 tokens/s, "
    "Avg generation throughput: 1024.7 tokens/s, Running: 12 reqs, Waiting: 0 reqs, GPU KV cache usage: 31.2%",
    "(APIServer pid=1) INFO 09-24 20:54:38 [utils.py:328] non-default args: {'model': 'Qwen/Qwen2.5-0.5B-Instruct', "
    "'gpu_memory_utilization': 0.5, 'max_model_len': 8192}",
    "(APIServer pid=1) INFO:     Started server process [1]",
    "(APIServer pid=1) INFO:     Application startup complete.",
    '(APIServer pid=1) INFO:     127.0.0.1:51234 - "GET /health HTTP/1.1" 200 OK',
    "(APIServer pid=1) INFO 09-24 21:30:00 [launcher.py:99] Shutting down FastAPI HTTP server.",
    ENGINE + "    self.init_snapshot = MemorySnapshot()",
    "FileNotFoundError: [Errno 2] No such file or directory: '/models/qwen'",
    "WARNING 09-24 20:55:00 [cuda.py:100] Using max model len 32768; to see how much memory is free, use nvidia-smi",
    # A failed start's headline and its consequence: the root cause is on the lines between them, and a finding
    # here would be reported before it (a misleading engine_dead ahead of the OOM that caused it).
    ENGINE + "ERROR 09-24 20:55:20 [core.py:708] EngineCore failed to start.",
    "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
]


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_line_is_not_a_finding(line: str) -> None:
    """Start-up, request and memory-report lines that mention memory, caches or engines are not failures."""
    assert classify_line(line) is None


@pytest.mark.parametrize(
    ("finding", "knob"),
    [
        ("cuda_oom", "--gpu-memory-utilization"),
        ("cuda_oom", "--max-model-len"),
        ("kv_cache_too_small", "--max-model-len"),
        ("kv_cache_too_small", "--gpu-memory-utilization"),
        ("gpu_memory_held", "nvidia-smi"),
        ("port_in_use", "--port"),
        ("nccl_failure", "NCCL_DEBUG=INFO"),
        ("engine_dead", "root cause"),
    ],
)
def test_advice_names_the_knob_to_turn(finding: str, knob: str) -> None:
    """Each finding's advice names what an operator can change or run."""
    line = next(line for name, line in FATAL_LINES if name == finding)
    found = classify_line(line)
    assert found is not None
    assert knob in found.advice


def test_kv_cache_advice_carries_vllms_estimate() -> None:
    """When vLLM prints the longest context that fits, the advice repeats it; otherwise it says nothing of one."""
    with_estimate = classify_line(FATAL_LINES[10][1])
    without = classify_line(FATAL_LINES[9][1])
    assert with_estimate is not None
    assert without is not None
    assert "--max-model-len (vLLM estimates 21440 fits)" in with_estimate.advice
    assert "estimates" not in without.advice
    assert "{" not in without.advice


def test_long_line_excerpt_is_capped() -> None:
    """A huge line is cut to EXCERPT_MAX characters in the excerpt, ending in an ellipsis."""
    found = classify_line("  RuntimeError: CUDA error: out of memory " + "x" * 5000 + "\n")
    assert found is not None
    assert len(found.excerpt) == EXCERPT_MAX
    assert found.excerpt.startswith("RuntimeError: CUDA error: out of memory xxx")
    assert found.excerpt.endswith("...")


def test_finding_is_a_frozen_value() -> None:
    """A Finding cannot be changed once made (it is shared between the owner, events and status)."""
    found = classify_line("CUDA error: out of memory")
    assert found is not None
    assert found == Finding("cuda_oom", Cause.OOM, found.advice, "CUDA error: out of memory")
    with pytest.raises(AttributeError):
        found.cause = Cause.CRASH  # type: ignore[misc]


# --- one run ------------------------------------------------------------------------------------------------------


def line_for(finding: str) -> str:
    return next(line for name, line in FATAL_LINES if name == finding)


def test_each_finding_is_reported_once_per_run() -> None:
    """observe() returns a finding the first time it appears in a run, and None for its repeats."""
    run = RunDiagnosis()
    first = run.observe(line_for("cuda_oom"))
    assert first is not None
    assert first.finding == "cuda_oom"
    assert run.observe("RuntimeError: CUDA error: out of memory") is None
    assert run.observe("INFO ordinary line") is None
    second = run.observe(line_for("engine_dead"))
    assert second is not None
    assert second.finding == "engine_dead"
    assert [found.finding for found in run.findings] == ["cuda_oom", "engine_dead"]
    assert run.findings[0] is first


def test_a_fresh_run_has_no_findings() -> None:
    """A run that printed nothing fatal has no cause and no OOM."""
    run = RunDiagnosis()
    assert (run.findings, run.primary, run.primary_cause, run.has_cuda_oom) == ((), None, None, False)


@pytest.mark.parametrize(
    ("findings", "cause", "primary"),
    [
        (["engine_dead", "cuda_oom"], Cause.OOM, "cuda_oom"),
        (["nccl_failure", "engine_dead"], Cause.ENGINE_DEAD, "engine_dead"),
        (["engine_dead", "port_in_use"], Cause.PORT_IN_USE, "port_in_use"),
        (["port_in_use", "kv_cache_too_small"], Cause.OOM, "kv_cache_too_small"),
        (["nccl_failure"], Cause.CRASH, "nccl_failure"),
        (["gpu_memory_held", "cuda_oom", "engine_dead"], Cause.OOM, "gpu_memory_held"),
    ],
)
def test_primary_cause_is_the_one_nearest_the_root(findings: list[str], cause: Cause, primary: str) -> None:
    """oom > port_in_use > engine_dead > crash, whatever the order; the first seen wins among equals."""
    run = RunDiagnosis()
    for finding in findings:
        run.observe(line_for(finding))
    assert run.primary_cause is cause
    assert run.primary is not None
    assert run.primary.finding == primary


@pytest.mark.parametrize(
    ("finding", "has_oom"),
    [
        ("cuda_oom", True),
        ("kv_cache_too_small", True),
        ("gpu_memory_held", True),
        ("engine_dead", False),
        ("nccl_failure", False),
        ("port_in_use", False),
    ],
)
def test_has_cuda_oom_follows_memory_findings(finding: str, has_oom: bool) -> None:
    """has_cuda_oom is true for every finding whose cause is GPU memory, and only for those."""
    run = RunDiagnosis()
    run.observe(line_for(finding))
    assert run.has_cuda_oom is has_oom


def test_prior_art_11_a_new_run_starts_without_the_old_oom() -> None:
    """An OOM of one run does not mark the next, which starts with a new RunDiagnosis (docs/design/defects.md #11)."""
    crashed = RunDiagnosis()
    crashed.observe(line_for("cuda_oom"))
    recovered = RunDiagnosis()
    recovered.observe("(APIServer pid=1) INFO:     Application startup complete.")
    assert crashed.has_cuda_oom
    assert not recovered.has_cuda_oom
    assert recovered.primary_cause is None


# As vLLM 0.32's CPU build printed them on this project's CI machine (tests/real_vllm records the whole run).
CPU_WORKER_LINE = (
    "(Worker pid=12425) INFO 11-28 10:00:21 [cpu_worker.py:260] Explicitly set (1.0/14.46) GiB for KV cache on node 0."
)
CPU_KV_ERROR = (
    "(EngineCore pid=12278) ERROR 11-28 10:00:21 [core.py:1510] ValueError: To serve at least one request with the "
    "model's max seq len (10000000), (4.77 GiB KV cache is needed, which is larger than the available KV cache memory "
    "(1.0 GiB). Based on the available memory, the estimated maximum model length is 2097024. Try increasing "
    "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len`."
)


def test_a_kv_cache_failure_on_a_cpu_build_is_out_of_memory_but_no_cuda_oom() -> None:
    """On vLLM's CPU build the cache is sized by VLLM_CPU_KVCACHE_SPACE: the advice says so, with the estimate,
    and has_cuda_oom stays false (there is no GPU)."""
    run = RunDiagnosis()
    assert run.observe(CPU_WORKER_LINE) is None
    found = run.observe(CPU_KV_ERROR)
    assert found is not None
    assert (found.finding, found.cause, run.on_cpu, run.has_cuda_oom) == ("kv_cache_too_small", Cause.OOM, True, False)
    assert "VLLM_CPU_KVCACHE_SPACE" in found.advice
    assert "(vLLM estimates 2097024 fits)" in found.advice
    assert run.primary is found


@pytest.mark.parametrize(
    "marker",
    [
        "INFO [cpu_model_runner.py:1] Starting to load model",
        "Initializing a V1 LLM engine (v0.32.0) with config: model='m', device_config=cpu, seed=0",
        "(EngineCore pid=1) INFO [kv_cache_utils.py:1] CPU KV cache size: 2,097,152 tokens",
    ],
)
def test_each_cpu_build_marker_is_recognised(marker: str) -> None:
    """Any one of the CPU build's early lines is enough; a GPU build's run never turns on_cpu."""
    run = RunDiagnosis()
    run.observe(marker)
    assert run.on_cpu


def test_the_same_failure_on_a_gpu_build_keeps_the_gpu_advice() -> None:
    """Without a CPU marker the KV failure is a CUDA OOM with the GPU advice, as before."""
    run = RunDiagnosis()
    run.observe("(Worker pid=2) INFO [gpu_worker.py:1] Available KV cache memory: 1.0 GiB")
    found = run.observe(CPU_KV_ERROR)
    assert found is not None
    assert (run.on_cpu, run.has_cuda_oom) == (False, True)
    assert "--gpu-memory-utilization" in found.advice
    assert "VLLM_CPU_KVCACHE_SPACE" not in found.advice


def test_a_cuda_oom_line_is_a_cuda_oom_whatever_build_printed_it() -> None:
    """Only the KV cache failure changes meaning on a CPU build; torch's CUDA OOM text stays a CUDA OOM."""
    run = RunDiagnosis()
    run.observe(CPU_WORKER_LINE)
    run.observe("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert (run.on_cpu, run.has_cuda_oom) == (True, True)


MISSING = "no-such-vllm-7f3a"
# What the process runtime raises when the command cannot be found (supervisor/runtime/process.py).
SPAWN_MESSAGE = f"cannot start '{MISSING} serve m': command '{MISSING}' not found"


def test_spawn_message_is_its_own_cause_with_advice_naming_the_command() -> None:
    """The process runtime's 'command X not found' classifies as command_not_found, advice naming X and PATH."""
    found = classify_line(SPAWN_MESSAGE)
    assert found is not None
    assert (found.finding, found.cause) == ("command_not_found", Cause.COMMAND_NOT_FOUND)
    assert f"'{MISSING}' was not found" in found.advice
    assert "PATH" in found.advice
    assert "traceback" not in found.advice


def test_only_the_spawn_message_matches() -> None:
    """A server's own 'cannot start' or 'command not found' lines are not taken for a missing command."""
    assert classify_line("ERROR cannot start the engine: model not found") is None
    assert classify_line("bash: vllm: command not found") is None
    diagnosis = RunDiagnosis()
    assert diagnosis.observe(SPAWN_MESSAGE) is not None
    assert diagnosis.primary_cause is Cause.COMMAND_NOT_FOUND
