"""``fake-vllm serve MODEL``: the command line, shaped like ``vllm serve`` plus the fault flags.

Common ``vllm serve`` flags are accepted so a real config runs by changing its command alone; a few of them
mean something here (see docs/fake-vllm.md), the rest are ignored. Flags nobody has heard of are ignored
with a warning rather than refused, because the point is that the real command line runs unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from fake_vllm import faults
from fake_vllm.settings import VLLM_VERSION, Settings

# vLLM flags that take a value and that the fake ignores (the value must still be consumed).
IGNORED_VALUE_FLAGS = (
    "--dtype",
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "-pp",
    "--data-parallel-size",
    "-dp",
    "--download-dir",
    "--load-format",
    "--tokenizer",
    "--tokenizer-mode",
    "--revision",
    "--code-revision",
    "--tokenizer-revision",
    "--quantization",
    "-q",
    "--kv-cache-dtype",
    "--swap-space",
    "--cpu-offload-gb",
    "--block-size",
    "--max-num-batched-tokens",
    "--chat-template",
    "--chat-template-content-format",
    "--tool-call-parser",
    "--reasoning-parser",
    "--uvicorn-log-level",
    "--root-path",
    "--max-loras",
    "--max-lora-rank",
    "--limit-mm-per-prompt",
    "--hf-overrides",
    "--compilation-config",
    "-O",
    "--distributed-executor-backend",
    "--generation-config",
    "--override-generation-config",
    "--max-log-len",
    "--shutdown-timeout",
    "--response-role",
    "--ssl-keyfile",
    "--ssl-certfile",
    "--speculative-config",
    "--rope-scaling",
    "--api-server-count",
    "--config",
    "--task",
    "--runner",
    "--hf-config-path",
    "--max-seq-len-to-capture",
    "--lora-modules",
    "--allowed-origins",
    "--allowed-methods",
    "--allowed-headers",
    "--middleware",
    "--hf-token",
)
IGNORED_BOOL_FLAGS = (
    "--trust-remote-code",
    "--enforce-eager",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--enable-chunked-prefill",
    "--no-enable-chunked-prefill",
    "--disable-log-stats",
    "--disable-log-requests",
    "--enable-log-requests",
    "--enable-auto-tool-choice",
    "--disable-frontend-multiprocessing",
    "--enable-lora",
    "--disable-custom-all-reduce",
    "--enable-prompt-tokens-details",
    "--disable-fastapi-docs",
    "--enable-request-id-headers",
    "--enable-server-load-tracking",
    "--allow-credentials",
    "--disable-sliding-window",
    "--skip-tokenizer-init",
    "--enable-sleep-mode",
    "--return-tokens-as-token-ids",
    "--headless",
)


_T = TypeVar("_T")


def _typed(parser: Callable[[str, object], _T], key: str) -> Callable[[str], _T]:
    """Adapt a fault parser to argparse, so the flag and /admin/faults accept the same values."""

    def convert(text: str) -> _T:
        try:
            return parser(key, text)
        except faults.FaultValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _model_len(text: str) -> int:
    """vLLM's human-readable lengths: 32768, 32k (x1000), 32K (x1024), 1m, 1M."""
    scale = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --max-model-len {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--max-model-len must be >= 1, got {text!r}")
    return value


def _utilization(text: str) -> float:
    value = _typed(faults.probability, "gpu_memory_utilization")(text)
    if value == 0:
        raise argparse.ArgumentTypeError("--gpu-memory-utilization must be > 0")
    return value


def _exit_after(text: str) -> float | None:
    if text.lower() == "never":
        return None
    return _typed(faults.seconds, "engine_dead_exit_after")(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``fake-vllm`` parser with its single ``serve`` command."""
    top = argparse.ArgumentParser(prog="fake-vllm", description="An imitation of `vllm serve` that fails on command.")
    top.add_argument("--version", action="version", version=f"fake-vllm (imitating vLLM {VLLM_VERSION})")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a fake model on an OpenAI-compatible HTTP API")
    serve.add_argument("model_tag", nargs="?", metavar="MODEL", help="model name (any string; nothing is loaded)")
    serve.add_argument("--model", dest="model_flag", help="the model, as in older vLLM command lines")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+")
    serve.add_argument("--max-model-len", type=_model_len, default=32768)
    serve.add_argument("--max-num-seqs", type=_positive_int, default=256)
    serve.add_argument("--gpu-memory-utilization", type=_utilization, default=0.9)
    serve.add_argument("--api-key", nargs="+")
    serve.add_argument("--disable-uvicorn-access-log", action="store_true")
    serve.add_argument("--seed", type=int, default=0)

    fault = serve.add_argument_group("faults (all off by default)")
    fault.add_argument("--startup-delay", type=_typed(faults.seconds, "startup_delay"), default=0.0)
    fault.add_argument("--crash-after", type=_typed(faults.seconds, "crash_after"))
    fault.add_argument("--crash-after-requests", type=_typed(faults.count, "crash_after_requests"))
    fault.add_argument("--exit-code", type=_typed(faults.exit_code, "exit_code"), default=1)
    fault.add_argument("--exit-signal", type=_typed(faults.exit_signal, "exit_signal"))
    fault.add_argument("--oom", type=_typed(faults.oom, "oom"), metavar="{startup,after:S}")
    fault.add_argument("--hang-after", type=_typed(faults.seconds, "hang_after"))
    fault.add_argument("--stall-after", type=_typed(faults.seconds, "stall_after"))
    fault.add_argument("--engine-dead-after", type=_typed(faults.seconds, "engine_dead_after"))
    fault.add_argument("--engine-dead-exit-after", type=_exit_after, default=5.0, metavar="{S,never}")
    fault.add_argument("--health-flap", type=_typed(faults.probability, "health_flap"), default=0.0)
    fault.add_argument("--ignore-sigterm", action="store_true")
    fault.add_argument("--engine-children", type=_typed(faults.count, "engine_children"), default=0)
    fault.add_argument("--ttft", type=_typed(faults.seconds, "ttft"), default=0.0)
    fault.add_argument("--itl", type=_typed(faults.seconds, "itl"), default=0.0)
    fault.add_argument("--error-rate", type=_typed(faults.probability, "error_rate"), default=0.0)
    fault.add_argument("--fake-gpu-dir", type=Path)
    fault.add_argument("--fake-gpu-total-gib", type=float, default=79.33)

    ignored = serve.add_argument_group("accepted for compatibility with `vllm serve`, ignored")
    for name in IGNORED_VALUE_FLAGS:
        ignored.add_argument(name, dest=f"ignored_{name.lstrip('-')}", metavar="VALUE", help=argparse.SUPPRESS)
    for name in IGNORED_BOOL_FLAGS:
        ignored.add_argument(name, dest=f"ignored_{name.lstrip('-')}", action="store_true", help=argparse.SUPPRESS)
    return top


def parse_settings(argv: Sequence[str]) -> Settings:
    """Parse a ``fake-vllm`` command line into Settings; exits 2 with argparse's message on a bad one."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    model = args.model_flag or args.model_tag
    if not model:
        parser.error("serve: a MODEL is required (positional or --model)")
    oom = args.oom
    initial = faults.Faults(
        crash_after=args.crash_after,
        crash_after_requests=args.crash_after_requests,
        exit_code=args.exit_code,
        exit_signal=args.exit_signal,
        oom=oom if oom != "startup" else None,
        hang_after=args.hang_after,
        stall_after=args.stall_after,
        engine_dead_after=args.engine_dead_after,
        engine_dead_exit_after=args.engine_dead_exit_after,
        health_flap=args.health_flap,
        ignore_sigterm=args.ignore_sigterm,
        ttft=args.ttft,
        itl=args.itl,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    keys = tuple(args.api_key or ()) or ((os.environ["VLLM_API_KEY"],) if os.environ.get("VLLM_API_KEY") else ())
    return Settings(
        model=model,
        served_model_names=tuple(args.served_model_name or (model,)),
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization,
        api_keys=keys,
        access_log=not args.disable_uvicorn_access_log,
        startup_delay=args.startup_delay,
        engine_children=args.engine_children,
        fake_gpu_dir=args.fake_gpu_dir,
        fake_gpu_total_gib=args.fake_gpu_total_gib,
        oom_at_startup=oom == "startup",
        faults=initial,
        ignored_args=tuple(unknown),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the server until it exits; returns the exit status."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    # Imported here so `fake-vllm --help` and argument errors stay instant.
    from fake_vllm.server import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
