"""The fatal output of real vLLM, as text: CUDA OOM, the start-up memory guard, EngineDeadError.

Each function returns the lines exactly as a recent vLLM (V1 engine, torch >= 2.4) prints them on stderr,
including the ``(EngineCore_DP0 pid=N)`` prefix that vLLM puts on every line of its processes' output.
Diagnosis code is tested against these, so the wording matters more than the frame list.
"""

from __future__ import annotations

GIB = 1024**3
_SITE = "/usr/local/lib/python3.12/dist-packages"

_ENGINE_START_FRAMES = [
    (f"{_SITE}/vllm/v1/engine/core.py", 699, "run_engine_core", "engine_core = EngineCoreProc(*args, **kwargs)"),
    (f"{_SITE}/vllm/v1/engine/core.py", 498, "__init__", "super().__init__(vllm_config, executor_class, log_stats,"),
    (f"{_SITE}/vllm/v1/engine/core.py", 83, "__init__", "self.model_executor = executor_class(vllm_config)"),
    (f"{_SITE}/vllm/executor/executor_base.py", 54, "__init__", "self._init_executor()"),
    (f"{_SITE}/vllm/executor/uniproc_executor.py", 54, "_init_executor", 'self.collective_rpc("init_device")'),
    (f"{_SITE}/vllm/v1/worker/gpu_worker.py", 196, "init_device", "self.init_snapshot = MemorySnapshot()"),
]

_PROFILE_FRAMES = [
    (f"{_SITE}/vllm/v1/engine/core.py", 699, "run_engine_core", "engine_core = EngineCoreProc(*args, **kwargs)"),
    (f"{_SITE}/vllm/v1/engine/core.py", 92, "__init__", "self._initialize_kv_caches(vllm_config)"),
    (
        f"{_SITE}/vllm/v1/engine/core.py",
        190,
        "_initialize_kv_caches",
        "self.model_executor.determine_available_memory()",
    ),
    (f"{_SITE}/vllm/v1/worker/gpu_worker.py", 263, "determine_available_memory", "self.model_runner.profile_run()"),
    (f"{_SITE}/vllm/v1/worker/gpu_model_runner.py", 3281, "profile_run", "hidden_states = self._dummy_run("),
    (f"{_SITE}/torch/nn/modules/linear.py", 125, "forward", "return F.linear(input, self.weight, self.bias)"),
]

_BUSY_LOOP_FRAMES = [
    (f"{_SITE}/vllm/v1/engine/core.py", 701, "run_engine_core", "engine_core.run_busy_loop()"),
    (f"{_SITE}/vllm/v1/engine/core.py", 728, "run_busy_loop", "self._process_engine_step()"),
    (f"{_SITE}/vllm/v1/engine/core.py", 754, "_process_engine_step", "outputs, model_executed = self.step_fn()"),
    (f"{_SITE}/vllm/v1/worker/gpu_model_runner.py", 2245, "execute_model", "model_output = self.model("),
    (f"{_SITE}/torch/nn/modules/linear.py", 125, "forward", "return F.linear(input, self.weight, self.bias)"),
]

_API_SERVER_FRAMES = [
    ("/usr/local/bin/vllm", 10, "<module>", "sys.exit(main())"),
    (f"{_SITE}/vllm/entrypoints/cli/main.py", 54, "main", "args.dispatch_function(args)"),
    (f"{_SITE}/vllm/entrypoints/cli/serve.py", 57, "cmd", "uvloop.run(run_server(args))"),
    (
        f"{_SITE}/vllm/entrypoints/openai/api_server.py",
        1941,
        "run_server",
        "await run_server_worker(listen_address, sock, args, **uvicorn_kwargs)",
    ),
    (
        f"{_SITE}/vllm/v1/engine/utils.py",
        781,
        "wait_for_engine_startup",
        'raise RuntimeError("Engine core initialization failed. "',
    ),
]

_OUTPUT_HANDLER_FRAMES = [
    (f"{_SITE}/vllm/v1/engine/async_llm.py", 439, "output_handler", "outputs = await engine_core.get_output_async()"),
    (
        f"{_SITE}/vllm/v1/engine/core_client.py",
        846,
        "get_output_async",
        "raise self._format_exception(outputs) from None",
    ),
]


def _frames(frames: list[tuple[str, int, str, str]]) -> list[str]:
    lines = ["Traceback (most recent call last):"]
    for path, line, func, code in frames:
        lines += [f'  File "{path}", line {line}, in {func}', f"    {code}"]
    return lines


def _prefixed(process: str, pid: int, lines: list[str]) -> str:
    return "".join(f"({process} pid={pid}) {line}\n" for line in lines)


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


def engine_start_failure(engine_pid: int, api_pid: int, final_line: str, *, during_profile: bool) -> str:
    """EngineCore's start-up failure traceback followed by the API server's own RuntimeError."""
    frames = _PROFILE_FRAMES if during_profile else _ENGINE_START_FRAMES
    engine = ["Process EngineCore_DP0:", *_frames(frames), final_line]
    api = [
        *_frames(_API_SERVER_FRAMES),
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
    return _prefixed("EngineCore_DP0", engine_pid, engine) + _prefixed("APIServer", api_pid, api)


def runtime_oom(engine_pid: int, total_gib: float, held_gib: float) -> str:
    """An OOM raised by a forward pass while serving: EngineCore's fatal-error traceback."""
    lines = ["EngineCore encountered a fatal error.", *_frames(_BUSY_LOOP_FRAMES)]
    lines.append(cuda_oom_message(total_gib, held_gib))
    return _prefixed("EngineCore_DP0", engine_pid, lines)


def engine_dead(api_pid: int) -> str:
    """AsyncLLM's output handler noticing that EngineCore is gone."""
    lines = [
        "AsyncLLM output_handler failed.",
        *_frames(_OUTPUT_HANDLER_FRAMES),
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
        "See stack trace (above) for the root cause.",
    ]
    return _prefixed("APIServer", api_pid, lines)


ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
