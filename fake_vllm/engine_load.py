"""vLLM 0.32's loading, as EngineCore and its worker log it, and how it fails (StartupFailure)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from fake_vllm import tracebacks, vllm_log
from fake_vllm.settings import KV_BLOCK_SIZE, KV_BYTES_PER_TOKEN, VLLM_VERSION, Settings

GIB = 1024**3


class StartupFailure(Exception):
    """EngineCore could not start: where it failed (frames) and the exception line."""

    def __init__(self, frames: str, final_line: str) -> None:
        super().__init__(final_line)
        self.frames = frames
        self.final_line = final_line

    def report(self, engine_pid: int) -> None:
        """Print it as EngineCore does: vLLM's logger on stdout, then multiprocessing's traceback on stderr."""
        frames = tracebacks.engine_failure_frames(self.frames)
        logged = "EngineCore failed to start.\n" + tracebacks.traceback_text(frames, self.final_line)
        vllm_log.error("core.py:1510", logged, process=vllm_log.ENGINE_CORE, pid=engine_pid)
        vllm_log.stderr_text(tracebacks.engine_process_traceback(frames, self.final_line))


@dataclass(frozen=True, slots=True)
class Loader:
    """Who logs the loading lines: the worker that loads the model, or EngineCore when it has no worker."""

    process: str
    pid: int


async def load_engine(
    settings: Settings, engine_pid: int, loader: Loader, claim: Callable[[], None], started: float
) -> None:
    """vLLM 0.32's loading, as logged by EngineCore and its worker; raises StartupFailure as vLLM fails.

    ``--startup-delay`` is spent 60% loading the weights, 40% warming up (CPU build) or profiling (GPU
    build). The fake-GPU check (``claim``) comes first, the CUDA OOM of ``--oom startup`` after the weights,
    the KV-cache check last.
    """
    s = settings
    cpu = s.device == "cpu"
    runner = "cpu_model_runner.py" if cpu else "gpu_model_runner.py"

    def log(where: str, message: str) -> None:
        vllm_log.info(where, message, process=loader.process, pid=loader.pid)

    claim()
    log(f"{runner}:{68 if cpu else 5040}", f"Starting to load model {s.model}...")
    await asyncio.sleep(s.startup_delay * 0.6)
    log("default_loader.py:501", f"Loading weights took {time.monotonic() - started:.2f} seconds")
    if not cpu:
        weights = round(s.claim_bytes * 0.25 / GIB, 2)
        log(
            "gpu_model_runner.py:5150",
            f"Model loading took {weights} GiB memory and {time.monotonic() - started:.6f} seconds",
        )
    if s.oom_at_startup:
        held = s.claim_bytes / GIB * 0.92
        raise StartupFailure("profile", tracebacks.cuda_oom_message(s.fake_gpu_total_gib, held))
    if cpu:
        log("cpu_model_runner.py:87", "Warming up model for the compilation...")
    await asyncio.sleep(s.startup_delay * 0.4)
    available = s.kv_cache_tokens * KV_BYTES_PER_TOKEN
    if cpu:
        log("cpu_model_runner.py:91", "Warming up done.")
    else:
        log("gpu_worker.py:760", f"Available KV cache memory: {round(available / GIB, 2)} GiB")
    needed = -(-s.max_model_len // KV_BLOCK_SIZE) * KV_BLOCK_SIZE * KV_BYTES_PER_TOKEN
    if needed > available:
        estimated = s.kv_cache_tokens // KV_BLOCK_SIZE * KV_BLOCK_SIZE
        raise StartupFailure("kv_cache", tracebacks.kv_cache_message(s.max_model_len, needed, available, estimated))
    vllm_log.info(
        "kv_cache_utils.py:2327",
        f"{'CPU' if cpu else 'GPU'} KV cache size: {s.kv_cache_tokens:,} tokens, Maximum concurrency for "
        f"{s.max_model_len:,} tokens per request: {s.kv_cache_tokens / s.max_model_len:.2f}x",
        process=vllm_log.ENGINE_CORE,
        pid=engine_pid,
    )
    vllm_log.info(
        "core.py:402",
        f"init engine (profile, create kv cache, warmup model) took {time.monotonic() - started:.2f} s",
        process=vllm_log.ENGINE_CORE,
        pid=engine_pid,
    )


def engine_config_line(settings: Settings, seed: int) -> str:
    """EngineCore's first line: ``Initializing a V1 LLM engine (v0.32.0) with config: ...``."""
    s = settings
    return (
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model={s.model!r}, "
        f"speculative_config=None, tokenizer={s.model!r}, skip_tokenizer_init=False, tokenizer_mode=auto, "
        f"revision=None, trust_remote_code=False, dtype=torch.bfloat16, max_seq_len={s.max_model_len}, "
        f"download_dir=None, load_format=auto, tensor_parallel_size={s.tensor_parallel_size}, "
        f"pipeline_parallel_size=1, data_parallel_size=1, quantization=None, enforce_eager=False, "
        f"kv_cache_dtype=auto, device_config={s.device}, seed={seed}, served_model_name={s.model_name}"
    )
