"""`llm-supervisor`: run the daemon, validate a config, and talk to a running daemon
(docs/design/contract.md section 3).

Exit codes: 0 ok, 1 the operation failed or was refused, 2 usage or config error, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from supervisor import __version__
from supervisor.api.auth import FMCP_BEARER_TOKEN, InsecureModeError, secure_mode, token_from_env
from supervisor.cli import completion, monitor, ops
from supervisor.cli import format as cli_format
from supervisor.cli.client import DEFAULT_URL, ClientError, SupervisorClient, Unreachable, UsageError
from supervisor.config.commands import command_warnings
from supervisor.config.schema import Config, ConfigError, load_config

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
DEFAULT_TOKEN_ENV = "LLM_SUPERVISOR_TOKEN"  # noqa: S105 (the variable's name, not a secret)
URL_ENV = "LLM_SUPERVISOR_URL"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors too, as the contract wants
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llm-supervisor", description="Keep vLLM servers alive, and steer them.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the supervisor in the foreground (SIGTERM/SIGINT stop every model)")
    run.add_argument("-c", "--config", required=True, help="YAML or JSON config file")
    run.add_argument("--host", help="API bind address (default: supervisor.api.host)")
    run.add_argument("--port", type=int, help="API port (default: supervisor.api.port; 0 = any free port)")

    val = sub.add_parser("validate", help="check a config file and report every problem")
    val.add_argument("-c", "--config", required=True)

    client = _Parser(add_help=False)
    client.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the daemon's URL (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    client.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        help=f"env var holding the token (default {DEFAULT_TOKEN_ENV}; when it is unset and "
        f"FMCP_SECURE_MODE=true, {FMCP_BEARER_TOKEN})",
    )
    client.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")

    st = sub.add_parser("status", parents=[client], help="every model's status, or one model's in detail")
    st.add_argument("id", nargs="?")
    sub.add_parser("start", parents=[client], help="start a model").add_argument("id")
    restart = sub.add_parser("restart", parents=[client], help="restart a model now")
    restart.add_argument("id")
    which = restart.add_mutually_exclusive_group()
    which.add_argument("--replica", type=int, help="restart only this replica (0, 1, ...)")
    which.add_argument(
        "--rolling", action="store_true", help="one replica at a time, each out of the gateway's routing until healthy"
    )
    stop = sub.add_parser("stop", parents=[client], help="stop a model; it stays stopped until `start`")
    stop.add_argument("id")
    stop.add_argument("--force", action="store_true", help="SIGKILL at once instead of SIGTERM first")
    logs = sub.add_parser("logs", parents=[client], help="a model's newest log lines")
    logs.add_argument("id")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many lines (1-10000, default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.add_argument("--replica", type=int, default=0, help="which replica's log (default 0)")
    ev = sub.add_parser("events", parents=[client], help="a model's event timeline")
    ev.add_argument("id")
    ev.add_argument("--since", type=int, default=0, help="only events after this seq")
    ev.add_argument("-n", "--limit", type=int, help="only the newest N events")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    ev.add_argument("--interval", type=float, default=1.0, help="--follow: seconds between polls (default 1)")
    _ops_parsers(sub, client)
    return p


def _ops_parsers(sub: Any, client: argparse.ArgumentParser) -> None:
    check = sub.add_parser(
        "check", parents=[client], help="one line per model; exit 0 only when all (or the named) are healthy"
    )
    check.add_argument("ids", nargs="*", metavar="ID", help="only these models (default: all)")
    sub.add_parser("recover", parents=[client], help="one recovery pass (POST /api/heal); prints what it did")
    sub.add_parser("reload", parents=[client], help="re-read the daemon's config file; prints what changed")
    mon = sub.add_parser("monitor", parents=[client], help="a live view of models, memory and events; q quits")
    mon.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    mon.add_argument("--events", type=int, default=10, help="how many of the latest events to show (default 10)")
    mon.add_argument(
        "--count", type=int, help="print this many plain snapshots and exit (default without a terminal: 1)"
    )
    comp = sub.add_parser("completion", help="print a shell completion script (source it from your shell's rc)")
    comp.add_argument("shell", choices=sorted(completion.SHELLS))


def _run(args: argparse.Namespace, config: Config) -> int:
    # The whole supervisor and uvicorn: imported only here so client subcommands start fast.
    from supervisor.cli import daemon, heap

    heap.freeze_startup()  # what is imported now lives as long as the process: no collection need scan it
    host = args.host or config.supervisor.api.host
    port = config.supervisor.api.port if args.port is None else args.port
    try:
        return asyncio.run(daemon.serve(config, host, port))
    except daemon.StartupError as exc:
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return exc.exit_code
    except InsecureModeError as exc:  # FluidMCP's secure mode without a token: refuse, never serve open
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return USAGE


def _validate(config: Config) -> int:
    ids = list(config.models)
    print(f"ok: {len(ids)} model{'s' if len(ids) != 1 else ''} ({', '.join(ids)})")
    for warning in command_warnings(config):  # valid, but a start from here would fail
        print(f"warning: {warning}", file=sys.stderr)
    return OK


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else human(data))


_OPS: dict[str, Callable[[argparse.Namespace, SupervisorClient], int]] = {
    "check": ops.check,
    "recover": ops.recover,
    "reload": ops.reload,
    "monitor": monitor.monitor,
}


def _client_token(env_name: str) -> str | None:
    """The token the daemon would take from this environment: `$env_name`, else in FluidMCP's secure mode
    `$FMCP_BEARER_TOKEN`; None sends none (a daemon that wants one answers 401, exit 2)."""
    token = token_from_env(env_name)
    if token is None and secure_mode():
        token = token_from_env(FMCP_BEARER_TOKEN)
    return token


def _positive(args: argparse.Namespace) -> bool:
    """Intervals and counts must be above 0; say which one is not."""
    for name in ("interval", "events", "count"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            print(f"llm-supervisor: --{name} must be above 0", file=sys.stderr)
            return False
    return True


def _client_command(args: argparse.Namespace, client: SupervisorClient) -> int:
    cmd = args.command
    if cmd == "status":
        if args.id:
            _emit(args, client.model(args.id), cli_format.model_detail)
        else:
            _emit(args, client.models(), lambda d: cli_format.models_table(d["models"]))
    elif cmd == "start":
        _emit(args, client.start(args.id), lambda d: d["message"])
    elif cmd == "restart":
        _emit(args, client.restart(args.id, replica=args.replica, rolling=args.rolling), lambda d: d["message"])
    elif cmd == "stop":
        _emit(args, client.stop(args.id, force=args.force), lambda d: d["message"])
    elif cmd in _OPS:
        return _OPS[cmd](args, client)
    elif cmd == "events" and args.follow:
        return ops.follow_events(args, client)
    elif cmd == "events":
        _emit(args, client.events(args.id, args.since, args.limit), cli_format.events_table)
    elif cmd == "logs" and args.follow:
        for line in client.follow_logs(args.id, args.lines, replica=args.replica):
            print(json.dumps({"line": line}) if args.json else line, flush=True)
    elif cmd == "logs":
        _emit(
            args,
            client.logs(args.id, args.lines, replica=args.replica),
            lambda d: "\n".join(x.rstrip("\n") for x in d["lines"]),
        )
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(completion.SHELLS[args.shell](parser), end="")
        return OK
    if args.command in ("run", "validate"):
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return USAGE
        return _run(args, config) if args.command == "run" else _validate(config)
    if args.command == "logs" and not 1 <= args.lines <= 10_000 and not (args.follow and args.lines == 0):
        print("llm-supervisor: --lines must be between 1 and 10000", file=sys.stderr)
        return USAGE
    if not _positive(args):
        return USAGE
    try:
        with SupervisorClient(args.url, _client_token(args.token_env)) as client:
            return _client_command(args, client)
    except KeyboardInterrupt:  # Ctrl-C ends `logs --follow`, `events --follow` and `monitor`, as meant
        return OK
    except Unreachable as exc:
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return UNREACHABLE
    except UsageError as exc:
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return USAGE
    except ClientError as exc:  # Refused included: the daemon said no
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
