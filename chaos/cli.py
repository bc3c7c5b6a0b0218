"""`llm-chaos`: list, validate and run chaos scenarios (docs/design/contract.md section 8), and regenerate the
resilience table (`llm-chaos table`, see chaos/table.py).

Exit codes: 0 every expectation held (skipped scenarios do not fail a run), 1 an expectation failed or a
scenario could not be run (error), 2 invalid scenarios or usage. Progress lines go to stderr as it runs;
the summary goes to stdout. Output piped into a reader that stops early (`llm-chaos list | head`) ends the
command quietly with 141 (128 + SIGPIPE, what the shell reports for tools killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from chaos.mapping import MappingError, parse_model_map, rename_models
from chaos.plan import describe_plan
from chaos.real_vllm import VllmServer, program
from chaos.report import summary, write_reports
from chaos.runner import RunOptions, ScenarioResult, run_scenario
from chaos.scenario import Scenario, ScenarioError, load_scenario, scenario_files
from chaos.table import measure, render

DEFAULT_DIR = Path("scenarios")
TABLE_DIR = DEFAULT_DIR / "gateway"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-chaos", description="Prove that LLM servers recover as they should.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the scenarios with their stories")
    listing.add_argument("files", nargs="*", type=Path, help=f"files or directories (default: {DEFAULT_DIR}/)")
    validate = commands.add_parser("validate", help="check scenario files strictly; exit 2 on any problem")
    validate.add_argument("files", nargs="*", type=Path)
    run = commands.add_parser("run", help="run scenarios and write the journal, JUnit XML and HTML report")
    run.add_argument("files", nargs="+", type=Path)
    run.add_argument("--supervisor", metavar="URL", help="attach to a running supervisor instead of a local target")
    run.add_argument(
        "--token-env",
        metavar="NAME",
        default="LLM_SUPERVISOR_TOKEN",
        help="env var holding the bearer token for --supervisor (default: %(default)s)",
    )
    run.add_argument(
        "--supervisor-cmd",
        metavar="CMD",
        help="the program started as `CMD run -c CONFIG` for local targets (default: llm-supervisor)",
    )
    run.add_argument(
        "--gateway",
        metavar="URL",
        help="with --supervisor: its OpenAI-compatible gateway (http://HOST:PORT), for scenarios with load; "
        "without it they are skipped",
    )
    run.add_argument(
        "--gateway-key-env", metavar="NAME", help="env var holding the key the --gateway wants (Bearer), if any"
    )
    run.add_argument(
        "--vllm", metavar="VLLM", help="local targets run real `VLLM serve` (scenarios with a real_vllm block only)"
    )
    run.add_argument("--vllm-model", metavar="DIR", help="with --vllm: the model directory it serves")
    run.add_argument("--vllm-flags", metavar="FLAGS", default="", help="with --vllm: added to every start (quoted)")
    run.add_argument(
        "--model",
        metavar="ID=NAME",
        action="append",
        default=[],
        help="run the catalogue's model ID as the deployment's NAME (repeat for each: --model m1=qwen)",
    )
    run.add_argument("--fail-on-skip", action="store_true", help="a skipped scenario fails the run (exit 1)")
    run.add_argument("--seed", type=int, help="replay a run: the seed printed by an earlier one")
    run.add_argument("--dry-run", action="store_true", help="print the plan; start, signal and call nothing")
    run.add_argument("--report-dir", type=Path, default=Path("chaos-report"), help="default: %(default)s")
    table = commands.add_parser(
        "table", help="run the gateway scenarios on the fake fleet and write the resilience table (Markdown)"
    )
    table.add_argument("files", nargs="*", type=Path, help=f"scenarios with load (default: {TABLE_DIR}/)")
    table.add_argument("--out", type=Path, help="write the table here (e.g. docs/resilience.md); default stdout")
    table.add_argument("--seed", type=int, help="replay a run: the seed printed by an earlier one")
    table.add_argument("--report-dir", type=Path, default=Path("chaos-report"), help="default: %(default)s")
    return parser


def _load_all(files: list[Path]) -> tuple[list[tuple[Path, Scenario]], list[ScenarioError]]:
    loaded, errors = [], []
    for path in scenario_files(files or [DEFAULT_DIR]):
        try:
            loaded.append((path, load_scenario(path)))
        except ScenarioError as exc:
            errors.append(exc)
    names = [s.name for _, s in loaded]
    for path, scenario in loaded:
        if names.count(scenario.name) > 1:
            errors.append(ScenarioError(str(path), [f"name: {scenario.name!r} is used by another scenario"]))
    return loaded, errors


def _print_errors(errors: list[ScenarioError]) -> None:
    for error in errors:
        print(f"{error.source}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)


EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader gone before the buffered output was written shows up here
    except BrokenPipeError:
        # Python's recipe (docs: "Note on SIGPIPE"): point stdout at devnull so the flush at interpreter exit
        # does not raise again and print a traceback about a reader that simply stopped reading.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "table" and not args.files:
        args.files = [TABLE_DIR]
    loaded, errors = _load_all(list(args.files))
    if errors:
        _print_errors(errors)
        return 2
    if not loaded:
        print("no scenario files found", file=sys.stderr)
        return 2
    if args.command == "list":
        for path, scenario in loaded:
            print(f"{scenario.name}  ({path})\n    {' '.join(scenario.story.split())}")
        return 0
    if args.command == "validate":
        print(f"{len(loaded)} scenario(s) valid")
        return 0
    if args.command == "table":
        return _table(args, loaded)
    return _run(args, loaded)


def _run(args: argparse.Namespace, loaded: list[tuple[Path, Scenario]]) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        mapping = parse_model_map(args.model)
        loaded = [(path, rename_models(scenario, mapping)) for path, scenario in loaded]
    except (MappingError, ValidationError) as exc:
        print(f"llm-chaos: {exc}", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env) if args.supervisor else None
    options = RunOptions(
        supervisor_url=args.supervisor, token=token, seed=seed, workdir=args.report_dir.resolve() / "work"
    )
    if args.supervisor:
        key = os.environ.get(args.gateway_key_env) if args.gateway_key_env else None
        options = replace(options, gateway_url=args.gateway, gateway_key=key)
    elif args.gateway:
        print("--gateway goes with --supervisor URL (a local target's gateway is the harness's own)", file=sys.stderr)
        return 2
    if args.supervisor_cmd:
        options = replace(options, supervisor_cmd=tuple(shlex.split(args.supervisor_cmd)))
    if (args.vllm is None) != (args.vllm_model is None) or (args.vllm and args.supervisor):
        print("--vllm and --vllm-model go together, and with a local target only", file=sys.stderr)
        return 2
    if args.vllm:
        model_dir = str(Path(args.vllm_model).resolve())
        server = VllmServer(program(args.vllm), model_dir, tuple(shlex.split(args.vllm_flags)))
        options = replace(options, vllm=server)
    if args.dry_run:
        print(f"dry run, seed {seed}: nothing is started, signalled or called")
        for path, scenario in loaded:
            print(describe_plan(scenario, options, source=str(path)))
        return 0
    results = _run_all(loaded, options, seed)
    paths = write_reports(results, args.report_dir, seed=seed, command=["llm-chaos", *sys.argv[1:]])
    counts = summary(results)
    print(
        ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        + f" · seed {seed} · reports: "
        + ", ".join(str(p) for p in paths)
    )
    if args.fail_on_skip and counts["skipped"]:
        print(f"llm-chaos: {counts['skipped']} scenario(s) skipped, and --fail-on-skip was given", file=sys.stderr)
        return 1
    return 1 if counts["failed"] or counts["error"] else 0


def _table(args: argparse.Namespace, loaded: list[tuple[Path, Scenario]]) -> int:
    """Run the scenarios with load locally, then write one row for each (failed runs are marked so)."""
    chosen = [(path, scenario) for path, scenario in loaded if scenario.load is not None]
    if not chosen:
        print("no scenario with load: among the files", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    options = RunOptions(seed=seed, workdir=args.report_dir.resolve() / "work")
    results = _run_all(chosen, options, seed)
    write_reports(results, args.report_dir, seed=seed, command=["llm-chaos", *sys.argv[1:]])
    rows = [measure(scenario, result) for (_, scenario), result in zip(chosen, results, strict=True)]
    rows.sort(key=lambda row: -row.replicas)  # several replicas first, then one: the two ways to survive
    command = "llm-chaos table" + (f" --out {args.out}" if args.out else "")
    when = time.strftime("%Y-%m-%d", time.gmtime())
    machine = f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    text = render(rows, seed=seed, command=command, when=when, machine=machine)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        _say(f"wrote {args.out}")
    else:
        print(text, end="")
    counts = summary(results)
    return 1 if counts["failed"] or counts["error"] else 0


def _run_all(loaded: list[tuple[Path, Scenario]], options: RunOptions, seed: int) -> list[ScenarioResult]:
    _say(f"llm-chaos: {len(loaded)} scenario(s), seed {seed}")
    results: list[ScenarioResult] = []
    for number, (path, scenario) in enumerate(loaded, start=1):
        prefix = f"[{number}/{len(loaded)}] {scenario.name}"
        _say(f"{prefix} ...")

        def progress(line: str, prefix: str = prefix) -> None:
            _say(f"{prefix}: {line}")

        result = asyncio.run(run_scenario(scenario, options, source=str(path), progress=progress))
        results.append(result)
        _say(f"{prefix}: {result.outcome.upper()} ({result.duration:.1f}s) {result.message}".rstrip())
        for verdict in result.verdicts:
            if verdict.passed is False:
                _say(f"    ✘ {verdict.check}: {verdict.message}")
    return results


def _say(text: str) -> None:
    """Progress for the person watching. Best effort: a closed stderr (`2>&1 | head`) must not fail a run."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
