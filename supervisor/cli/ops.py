"""The CLI's operating commands: `check` (for cron), `recover`, `reload` and `events --follow`
(docs/design/contract.md sections 3 and 10).

Each takes the parsed arguments and a client, prints, and returns the exit code; the client's errors reach
main(), which maps them onto exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from supervisor.cli import format as cli_format
from supervisor.cli.client import SupervisorClient, UsageError

OK, FAILED, USAGE = 0, 1, 2


def check(args: argparse.Namespace, client: SupervisorClient) -> int:
    """One line per model (the named ones, or all); 0 only when every one is healthy, else 1."""
    models: list[dict[str, Any]] = client.models()["models"]
    if args.ids:
        known = {m["id"]: m for m in models}
        unknown = [i for i in args.ids if i not in known]
        if unknown:
            names = ", ".join(repr(i) for i in unknown)
            print(f"llm-supervisor: unknown model {names} (configured: {', '.join(known)})", file=sys.stderr)
            return USAGE
        models = [known[i] for i in dict.fromkeys(args.ids)]
    healthy = all(cli_format.is_healthy(m) for m in models)
    if args.json:
        print(json.dumps({"healthy": healthy, "models": models}, indent=2))
        return OK if healthy else FAILED
    # Colour only on a terminal (rich leaves it out for a pipe, a file or NO_COLOR), so cron mail stays plain.
    console = Console(highlight=False, soft_wrap=True)
    for m in models:
        console.print(Text(cli_format.check_line(m), style="green" if cli_format.is_healthy(m) else "red"))
    return OK if healthy else FAILED


def recover(args: argparse.Namespace, client: SupervisorClient) -> int:
    answer = client.heal()
    print(json.dumps(answer, indent=2) if args.json else cli_format.heal_actions(answer))
    return OK


def reload(args: argparse.Namespace, client: SupervisorClient) -> int:
    """What the reload changed; a config that does not validate: every problem on stderr, exit 2."""
    try:
        answer = client.reload()
    except UsageError as exc:
        if exc.status != 422:
            raise
        print("llm-supervisor: the config does not validate; nothing was changed:", file=sys.stderr)
        for line in (line for problem in exc.problems for line in problem.splitlines() if line.strip()):
            print(f"  {line.strip()}", file=sys.stderr)
        return USAGE
    print(json.dumps(answer, indent=2) if args.json else cli_format.reload_changes(answer))
    return OK


def follow_events(args: argparse.Namespace, client: SupervisorClient) -> int:
    """Print the model's events, then each new one as it comes, until Ctrl-C (main() makes that exit 0)."""
    for event in client.follow_events(args.id, args.since, args.limit, interval=args.interval):
        print(json.dumps(event) if args.json else cli_format.event_line(event), flush=True)
    return OK  # pragma: no cover (the generator never ends by itself)
