"""The fatal output of real vLLM 0.32, as text: start-up failures, CUDA OOM, EngineDeadError, HFValidationError.

A failure inside EngineCore is printed twice, as vLLM 0.32 does: once by vLLM's logger on stdout, each line
with the ``(EngineCore pid=N) ERROR ...`` prefix, and once raw on stderr by multiprocessing
(``Process EngineCore:`` and the traceback). The API server then adds its own traceback on stderr, ending in
``RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}``.
Diagnosis code is tested against these, so the wording matters more than the frame list.
"""

from __future__ import annotations

import re

GIB = 1024**3
_SITE = "/usr/local/lib/python3.12/dist-packages"
_PYLIB = "/usr/lib/python3.12"

Frame = tuple[str, int, str, str]

_BOOTSTRAP_FRAMES: list[Frame] = [
    (f"{_PYLIB}/multiprocessing/process.py", 314, "_bootstrap", "self.run()"),
    (f"{_PYLIB}/multiprocessing/process.py", 108, "run", "self._target(*self._args, **self._kwargs)"),
    (f"{_SITE}/vllm/v1/engine/core.py", 1514, "run_engine_core", "raise e"),
]

_ENGINE_INIT_FRAMES: list[Frame] = [
    (
        f"{_SITE}/vllm/v1/engine/core.py",
        1482,
        "run_engine_core",
        "engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)",
    ),
    (f"{_SITE}/vllm/v1/engine/core.py", 1194, "__init__", "super().__init__("),
]

_DEVICE_FRAMES: list[Frame] = [
    *_ENGINE_INIT_FRAMES,
    (f"{_SITE}/vllm/v1/engine/core.py", 120, "__init__", "self.model_executor = executor_class(vllm_config)"),
    (f"{_SITE}/vllm/v1/executor/abstract.py", 103, "__init__", "self._init_executor()"),
    (f"{_SITE}/vllm/v1/executor/uniproc_executor.py", 52, "_init_executor", "self.driver_worker.init_device()"),
    (f"{_SITE}/vllm/v1/worker/gpu_worker.py", 258, "init_device", "self.requested_memory = request_memory("),
    (f"{_SITE}/vllm/utils/mem_utils.py", 86, "request_memory", "raise ValueError("),
]

_PROFILE_FRAMES: list[Frame] = [
    *_ENGINE_INIT_FRAMES,
    (f"{_SITE}/vllm/v1/engine/core.py", 157, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
    (
        f"{_SITE}/vllm/v1/engine/core.py",
        290,
        "_initialize_kv_caches",
        "available_gpu_memory = self.model_executor.determine_available_memory()",
    ),
    (f"{_SITE}/vllm/v1/worker/gpu_worker.py", 391, "determine_available_memory", "self.model_runner.profile_run()"),
    (f"{_SITE}/vllm/v1/worker/gpu_model_runner.py", 4712, "profile_run", "hidden_states = self._dummy_run("),
    (f"{_SITE}/torch/nn/modules/linear.py", 134, "forward", "return F.linear(input, self.weight, self.bias)"),
]

_KV_CACHE_FRAMES: list[Frame] = [
    *_ENGINE_INIT_FRAMES,
    (f"{_SITE}/vllm/v1/engine/core.py", 157, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
    (f"{_SITE}/vllm/v1/engine/core.py", 326, "_initialize_kv_caches", "kv_cache_configs = get_kv_cache_configs("),
    (f"{_SITE}/vllm/v1/core/kv_cache_utils.py", 2642, "get_kv_cache_configs", "_check_enough_kv_cache_memory("),
    (f"{_SITE}/vllm/v1/core/kv_cache_utils.py", 1030, "_check_enough_kv_cache_memory", "raise ValueError("),
]

_BUSY_LOOP_FRAMES: list[Frame] = [
    (f"{_SITE}/vllm/v1/engine/core.py", 1501, "run_engine_core", "engine_core.run_busy_loop()"),
    (f"{_SITE}/vllm/v1/engine/core.py", 1540, "run_busy_loop", "self._process_engine_step()"),
    (f"{_SITE}/vllm/v1/engine/core.py", 1581, "_process_engine_step", "outputs, model_executed = self.step_fn()"),
    (f"{_SITE}/vllm/v1/worker/gpu_model_runner.py", 3866, "execute_model", "model_output = self._model_forward("),
    (f"{_SITE}/torch/nn/modules/linear.py", 134, "forward", "return F.linear(input, self.weight, self.bias)"),
]

_API_SERVER_FRAMES: list[Frame] = [
    ("/usr/local/bin/vllm", 8, "<module>", "sys.exit(main())"),
    (f"{_SITE}/vllm/entrypoints/cli/main.py", 120, "main", "args.dispatch_function(args)"),
    (f"{_SITE}/vllm/entrypoints/cli/serve.py", 156, "cmd", "uvloop.run(run_server(args))"),
    (
        f"{_SITE}/vllm/entrypoints/launchers/api_server/entry.py",
        177,
        "run_server",
        "await run_server_worker(listen_address, sock, args, **uvicorn_kwargs)",
    ),
    (
        f"{_SITE}/vllm/entrypoints/launchers/api_server/entry.py",
        195,
        "run_server_worker",
        "async with build_async_engine_client(",
    ),
]

_ENGINE_STARTUP_FRAMES: list[Frame] = [
    *_API_SERVER_FRAMES,
    (f"{_SITE}/vllm/v1/engine/core_client.py", 682, "__init__", "with launch_core_engines("),
    (f"{_SITE}/vllm/v1/engine/utils.py", 1351, "launch_core_engines", "wait_for_engine_startup("),
    (f"{_SITE}/vllm/v1/engine/utils.py", 1431, "wait_for_engine_startup", "raise RuntimeError("),
]

_MODEL_PATH_FRAMES: list[Frame] = [
    *_API_SERVER_FRAMES,
    (
        f"{_SITE}/vllm/entrypoints/launchers/api_server/entry.py",
        53,
        "build_async_engine_client",
        "engine_args = AsyncEngineArgs.from_cli_args(args)",
    ),
    (
        f"{_SITE}/vllm/engine/arg_utils.py",
        914,
        "__post_init__",
        "self.model = get_model_path(self.model, self.revision)",
    ),
    (f"{_SITE}/vllm/transformers_utils/repo_utils.py", 301, "get_model_path", "return hf_api().snapshot_download("),
    (f"{_SITE}/huggingface_hub/utils/_validators.py", 85, "_inner_fn", "validate_repo_id(arg_value)"),
    (f"{_SITE}/huggingface_hub/utils/_validators.py", 133, "validate_repo_id", "raise HFValidationError("),
]

_OUTPUT_HANDLER_FRAMES: list[Frame] = [
    (f"{_SITE}/vllm/v1/engine/async_llm.py", 849, "output_handler", "outputs = await engine_core.get_output_async()"),
    (
        f"{_SITE}/vllm/v1/engine/core_client.py",
        1235,
        "get_output_async",
        "raise self._format_exception(outputs) from None",
    ),
]

ENGINE_START_FAILED = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
ENGINE_DEAD_LINE = f"vllm.v1.engine.exceptions.EngineDeadError: {ENGINE_DEAD_MESSAGE}"


def traceback_text(frames: list[Frame], final_line: str) -> str:
    """A Python traceback: the frames, most recent call last, then the exception line."""
    lines = ["Traceback (most recent call last):"]
    for path, line, func, code in frames:
        lines += [f'  File "{path}", line {line}, in {func}', f"    {code}"]
    lines.append(final_line)
    return "\n".join(lines)


def cuda_oom_message(total_gib: float, held_gib: float) -> str:
    """torch >= 2.4's OutOfMemoryError line for an allocation that no longer fits."""
    tried = max(0.5, round(min(3.15, total_gib * 0.04), 2))
    free = max(0.0, min(total_gib - held_gib, tried * 0.5))
    in_use = max(0.0, total_gib - free)
    allocated = in_use * 0.96
    reserved_mib = (in_use - allocated) * 1024
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {tried:.2f} GiB. GPU 0 has a total "
        f"capacity of {total_gib:.2f} GiB of which {free:.2f} GiB is free. Including non-PyTorch memory, this "
        f"process has {in_use:.2f} GiB memory in use. Of the allocated memory {allocated:.2f} GiB is allocated "
        f"by PyTorch, and {reserved_mib:.2f} MiB is reserved by PyTorch but unallocated. If reserved but "
        "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
        "fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


def free_memory_message(free_bytes: float, total_bytes: float, utilization: float) -> str:
    """vLLM's start-up guard when other processes hold the device (usually an orphaned EngineCore)."""
    requested = utilization * total_bytes
    return (
        f"ValueError: Free memory on device ({free_bytes / GIB:.2f}/{total_bytes / GIB:.2f} GiB) on startup "
        f"is less than desired GPU memory utilization ({utilization}, {requested / GIB:.2f} GiB). "
        "Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )


def _gib(size: float) -> str:
    """vLLM's format_gib: ``round(bytes / GiB, 2)`` as Python prints it (``1.0``, ``4.77``)."""
    return f"{round(size / GIB, 2)}"


def kv_cache_message(max_model_len: int, needed_bytes: int, available_bytes: int, estimated_len: int) -> str:
    """vLLM 0.32's check that one request of max_model_len fits in the KV cache (kv_cache_utils.py)."""
    estimate = (
        f"Based on the available memory, the estimated maximum model length is {estimated_len}. "
        if estimated_len > 0
        else ""
    )
    return (
        f"ValueError: To serve at least one request with the model's max seq len ({max_model_len}), "
        f"({_gib(needed_bytes)} GiB KV cache is needed, which is larger than the available KV cache memory "
        f"({_gib(available_bytes)} GiB). {estimate}Try increasing `gpu_memory_utilization` (which also controls "
        "CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. "
        "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    )


def engine_failure_frames(kind: str) -> list[Frame]:
    """The frames of an EngineCore start-up failure: ``device`` (free memory), ``profile`` (OOM), ``kv_cache``."""
    return {"device": _DEVICE_FRAMES, "profile": _PROFILE_FRAMES, "kv_cache": _KV_CACHE_FRAMES}[kind]


def engine_process_traceback(frames: list[Frame], final_line: str) -> str:
    """What multiprocessing prints on stderr when the EngineCore process ends with an exception."""
    return "Process EngineCore:\n" + traceback_text([*_BOOTSTRAP_FRAMES, *frames], final_line)


def engine_start_failed_traceback() -> str:
    """The API server's own traceback on stderr once EngineCore failed to start."""
    return traceback_text(_ENGINE_STARTUP_FRAMES, ENGINE_START_FAILED)


def runtime_oom_frames() -> list[Frame]:
    """The frames of an OOM raised by a forward pass while serving."""
    return _BUSY_LOOP_FRAMES


def engine_dead_traceback() -> str:
    """AsyncLLM's output handler noticing that EngineCore is gone (logged as one ERROR record)."""
    return "AsyncLLM output_handler failed.\n" + traceback_text(_OUTPUT_HANDLER_FRAMES, ENGINE_DEAD_LINE)


# huggingface_hub's validate_repo_id, which vLLM reaches for a model that is not a local directory.
_REPO_ID = re.compile(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", flags=re.ASCII)


def repo_id_problem(repo_id: str) -> str | None:
    """huggingface_hub's HFValidationError line for a name that is not a valid repo id, or None if it is."""
    prefix = "huggingface_hub.errors.HFValidationError: "
    if repo_id.count("/") > 1:
        return (
            f"{prefix}Repo id must be in the form 'repo_name' or 'namespace/repo_name': '{repo_id}'. "
            "Use `repo_type` argument if needed."
        )
    if not _REPO_ID.fullmatch(repo_id):
        return (
            f"{prefix}Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot start or end with "
            f"'-' or '.' and the maximum length is 96: '{repo_id}'."
        )
    if "--" in repo_id or ".." in repo_id:
        return f"{prefix}Cannot have -- or .. in repo_id: '{repo_id}'."
    if repo_id.endswith(".git"):
        return f"{prefix}Repo_id cannot end by '.git': '{repo_id}'."
    return None


def model_path_traceback(final_line: str) -> str:
    """The API server's traceback on stderr for a model that is neither a directory nor a valid repo id."""
    return traceback_text(_MODEL_PATH_FRAMES, final_line)
