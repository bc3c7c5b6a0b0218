"""``fake-vllm serve MODEL``: the command line of ``vllm serve`` 0.32, plus the fault flags.

Every option vLLM 0.32 accepts is accepted (vllm_flags.py lists them, read from vLLM's own parser), with
vLLM's spellings: ``--max_model_len`` for ``--max-model-len``, ``--opt=value``, ``-O3``, dotted config keys
(``--compilation-config.mode 3``) and unambiguous prefixes. A few mean something here (see
docs/fake-vllm.md); the rest are ignored. An option vLLM does not know is refused as vLLM refuses it:
``vllm: error: unrecognized arguments: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from fake_vllm import faults, vllm_flags
from fake_vllm.settings import DEFAULT_KV_CACHE_TOKENS, VLLM_VERSION, Settings

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"  # what `vllm serve` without a model serves
_VLLM_USAGE = (
    "usage: vllm [-h] [-v]\n"
    "            {chat,complete,serve,launch,bench,collect-env,download-kernels,preload,run-batch,snapshot}\n"
    "            ...\n"
)
_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")

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
    """The ``fake-vllm`` parser with its single ``serve`` command: the options that mean something here."""
    top = argparse.ArgumentParser(prog="fake-vllm", description="An imitation of `vllm serve` that fails on command.")
    top.add_argument("--version", action="version", version=f"fake-vllm (imitating vLLM {VLLM_VERSION})")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a fake model on an OpenAI-compatible HTTP API", allow_abbrev=False)
    serve.add_argument("model_tag", nargs="?", metavar="MODEL", help="model name or path (nothing is loaded)")
    serve.add_argument("--model", dest="model_flag", help="the model, as in older vLLM command lines")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+")
    serve.add_argument("--max-model-len", type=_model_len, default=32768)
    serve.add_argument("--max-num-seqs", type=_positive_int, default=256)
    serve.add_argument("--gpu-memory-utilization", type=_utilization, default=0.9)
    serve.add_argument("--tensor-parallel-size", "-tp", type=_positive_int, default=1)
    serve.add_argument("--api-key", nargs="+")
    serve.add_argument("--disable-uvicorn-access-log", action=argparse.BooleanOptionalAction, default=False)
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
    fault.add_argument("--honor-sigterm-while-loading", action="store_true")
    fault.add_argument("--engine-children", type=_typed(faults.count, "engine_children"))
    fault.add_argument("--kv-cache-tokens", type=_positive_int, default=DEFAULT_KV_CACHE_TOKENS)
    fault.add_argument("--fake-device", choices=("cpu", "cuda"))
    fault.add_argument("--ttft", type=_typed(faults.seconds, "ttft"), default=0.0)
    fault.add_argument("--itl", type=_typed(faults.seconds, "itl"), default=0.0)
    fault.add_argument("--error-rate", type=_typed(faults.probability, "error_rate"), default=0.0)
    fault.add_argument("--grow-memory", type=_typed(faults.rate, "grow_memory"), default=0.0, metavar="MB_PER_S")
    fault.add_argument("--fake-gpu-dir", type=Path)
    fault.add_argument("--fake-gpu-total-gib", type=float, default=79.33)
    return top


def _own_options(parser: argparse.ArgumentParser) -> frozenset[str]:
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    return frozenset(option for action in serve._actions for option in action.option_strings)


def _refuse(message: str, *, serve: bool = False) -> NoReturn:
    """Exit 2 the way vLLM's parser does (unknown options are reported by the top-level ``vllm`` parser)."""
    usage = "usage: vllm serve [model_tag] [options]\n" if serve else _VLLM_USAGE
    sys.stderr.write(f"{usage}vllm{' serve' if serve else ''}: error: {message}\n")
    sys.exit(2)


def _is_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "-" and not _NUMBER.match(arg)


def _normalise(arg: str) -> str:
    """vLLM's FlexibleArgumentParser: underscores become dashes in an option's name (before any . or =)."""
    if not arg.startswith("--"):
        return arg
    name, equals, value = arg.partition("=")
    head, dot, rest = name[2:].partition(".")
    return f"--{head.replace('_', '-')}{dot}{rest}{equals}{value}"


def _resolve(name: str, known: frozenset[str]) -> str | None:
    """An option name, or the one option it abbreviates (argparse's allow_abbrev); None if unknown."""
    if name in known:
        return name
    if not name.startswith("--"):
        return None
    candidates = sorted(option for option in known if option.startswith(name))
    if len(candidates) > 1:
        _refuse(f"ambiguous option: {name} could match {', '.join(candidates)}", serve=True)
    return candidates[0] if candidates else None


def split_vllm_args(argv: Sequence[str], own: frozenset[str]) -> tuple[list[str], list[str]]:
    """Drop vLLM options that the fake ignores (with their values); returns (kept argv, unrecognized)."""
    ignored = (
        vllm_flags.VALUE_FLAGS
        | vllm_flags.MULTI_VALUE_FLAGS
        | vllm_flags.OPTIONAL_VALUE_FLAGS
        | vllm_flags.SWITCH_FLAGS
    ) - own
    known = own | ignored
    kept: list[str] = []
    unknown: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        arg = _normalise(tokens[i])
        i += 1
        if arg == "--":
            kept += tokens[i - 1 :]
            break
        if not _is_option(arg):
            kept.append(arg)
            continue
        if arg.startswith("-O") and not arg.startswith("--"):  # the optimization level: -O3, -O=3, -O 3
            if arg == "-O":
                if i < len(tokens) and tokens[i] in {"0", "1", "2", "3"}:
                    i += 1
                    continue
                unknown.append(arg)
            continue
        name, equals, _ = arg.partition("=")
        base, dot, _ = name.partition(".")
        option = _resolve(base, known)
        if option is None:
            unknown.append(tokens[i - 1])
            continue
        if dot:  # --compilation-config.mode 3: one key of a JSON option, with its value
            i += 0 if equals or i >= len(tokens) else 1
            continue
        if option in own:
            kept.append(option + (arg[len(name) :] if equals else ""))
            continue
        if equals or option in vllm_flags.SWITCH_FLAGS:
            continue
        if option in vllm_flags.VALUE_FLAGS:
            i += 1 if i < len(tokens) and not _is_option(tokens[i]) else 0
        else:  # one or more values (nargs "+"), or an optional one (nargs "?")
            many = option in vllm_flags.MULTI_VALUE_FLAGS
            while i < len(tokens) and not _is_option(tokens[i]):
                i += 1
                if not many:
                    break
    return kept, unknown


def _non_default_args(args: argparse.Namespace, model: str) -> tuple[tuple[str, object], ...]:
    """What vLLM's ``non-default args:`` line would list, in its order."""
    found: list[tuple[str, object]] = [("model_tag", model)]
    for key, value, default in (
        ("host", args.host, "127.0.0.1"),
        ("port", args.port, 8000),
        ("api_key", args.api_key, None),
        ("model", model, None),
        ("seed", args.seed, 0),
        ("max_model_len", args.max_model_len, 32768),
        ("served_model_name", args.served_model_name, None),
        ("tensor_parallel_size", args.tensor_parallel_size, 1),
        ("gpu_memory_utilization", args.gpu_memory_utilization, 0.9),
        ("max_num_seqs", args.max_num_seqs, 256),
    ):
        if value != default:
            found.append((key, "***" if key == "api_key" else value))  # vLLM's redact_sensitive_args
    return tuple(found)


def parse_settings(argv: Sequence[str]) -> Settings:
    """Parse a ``fake-vllm`` command line into Settings; exits 2 with a usage error on a bad one."""
    parser = build_parser()
    tokens = list(argv)
    if tokens[:1] == ["serve"]:
        kept, unknown = split_vllm_args(tokens[1:], _own_options(parser))
        tokens = ["serve", *kept]
    else:
        unknown = []
    args, extra = parser.parse_known_args(tokens)
    if unknown or extra:
        _refuse(f"unrecognized arguments: {' '.join([*unknown, *extra])}")
    model = args.model_flag or args.model_tag or DEFAULT_MODEL
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
        grow_memory=args.grow_memory,
        seed=args.seed,
    )
    keys = tuple(args.api_key or ()) or ((os.environ["VLLM_API_KEY"],) if os.environ.get("VLLM_API_KEY") else ())
    # A fake GPU or a CUDA OOM only make sense on vLLM's GPU build, so they choose it unless told otherwise.
    device = args.fake_device or ("cuda" if args.fake_gpu_dir is not None or oom is not None else "cpu")
    tp = args.tensor_parallel_size
    # vLLM's CPU build always runs its model in workers; the GPU build runs it in EngineCore at TP=1.
    workers = tp if device == "cpu" or tp > 1 else 0
    processes = args.engine_children if args.engine_children is not None else 1 + workers
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
        engine_processes=processes,
        tensor_parallel_size=tp,
        device=device,
        kv_cache_tokens=args.kv_cache_tokens,
        honor_sigterm_while_loading=args.honor_sigterm_while_loading,
        fake_gpu_dir=args.fake_gpu_dir,
        fake_gpu_total_gib=args.fake_gpu_total_gib,
        oom_at_startup=oom == "startup",
        faults=initial,
        non_default_args=_non_default_args(args, model),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the server until it exits; returns the exit status."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    # Imported here so `fake-vllm --help` and argument errors stay instant.
    from fake_vllm.server import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
