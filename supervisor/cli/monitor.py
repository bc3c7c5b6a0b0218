"""`llm-supervisor monitor`: a live full-screen view of the daemon, like `pm2 monit`.

On a terminal it redraws with rich's `Live` every `--interval` seconds and reads keys in cbreak mode between
refreshes (`q` quits); the terminal is restored on every way out, Ctrl-C included. When stdout is not a terminal,
or with `--count N` or `--json`, it prints plain snapshots (one by default, N with `--count`; their data with
`--json`) and exits, so it can be piped or logged.

Data: `/api/llm/models` (state, restarts, uptime, pid, replicas), each model's `/events` (the latest events,
fetched incrementally by seq), `/api/diagnostics` (host figures, `models[].memory.{rss,gpu}`) and `/metrics`
(`llm_supervisor_model_cpu_seconds_total`, turned into a rate). An endpoint that answers 404 (an older daemon)
leaves its columns at "-".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import select
import signal
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live

from supervisor.cli.client import ClientError, SupervisorClient, UsageError
from supervisor.cli.monitor_view import Snapshot, cpu_percent, cpu_seconds, render, render_text

OK = 0


class Source:
    """Reads one Snapshot per call; remembers what the next one needs (last event seqs, the CPU sample)."""

    def __init__(self, client: SupervisorClient, events: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._clock = clock
        self._events: deque[Mapping[str, Any]] = deque(maxlen=events)
        self._last_seq: dict[str, int] = {}
        self._cpu_sample: tuple[float, dict[str, float]] | None = None

    def _new_events(self, model_ids: list[str]) -> None:
        fresh: list[Mapping[str, Any]] = []
        for mid in model_ids:
            since = self._last_seq.get(mid, 0)
            try:
                batch = self.client.events(mid, since, None if mid in self._last_seq else self._events.maxlen)
            except UsageError:  # removed by a reload between the two requests
                continue
            if batch:
                self._last_seq[mid] = max(int(e["seq"]) for e in batch)
            else:
                self._last_seq.setdefault(mid, since)
            fresh += batch
        self._events.extend(sorted(fresh, key=lambda e: int(e["seq"])))

    def _cpu(self) -> dict[str, float] | None:
        text = self.client.metrics_text()
        if text is None:
            return None
        now, sample = self._clock(), cpu_seconds(text)
        before, self._cpu_sample = self._cpu_sample, (now, sample)
        if before is None or not sample:
            return None
        return cpu_percent(before[1], sample, now - before[0])

    def snapshot(self) -> Snapshot:
        models: list[dict[str, Any]] = self.client.models()["models"]
        diagnostics = self.client.optional("/api/diagnostics")
        self._new_events([m["id"] for m in models])
        cpu = self._cpu()
        notes = []
        memory = host = gpu_error = None
        if diagnostics is not None:
            memory = {d["id"]: d.get("memory") or {} for d in diagnostics.get("models", [])}
            host, gpu_error = diagnostics.get("host"), diagnostics.get("gpu_error")
            if diagnostics.get("leftovers"):
                notes.append(f"leftover processes: {len(diagnostics['leftovers'])} (`llm-supervisor recover`)")
        return Snapshot(
            url=self.client.url,
            taken_at=time.time(),
            models=models,
            events=list(self._events),
            memory=memory,
            cpu=cpu,
            host=host,
            gpu_error=gpu_error,
            notes=notes,
        )


class Keys:
    """Keys from a terminal in cbreak mode (no Enter needed, Ctrl-C still a SIGINT); restored on exit."""

    def __init__(self, stream: TextIO) -> None:
        self._fd = stream.fileno()

    @contextlib.contextmanager
    def cbreak(self) -> Iterator[Keys]:
        saved = termios.tcgetattr(self._fd)
        try:
            tty.setcbreak(self._fd)
            yield self
        finally:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)

    def wait_for_quit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True as soon as `q` is pressed, other keys ignored."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._fd], [], [], left)
            if readable:
                data = os.read(self._fd, 64)
                if not data or b"q" in data.lower():  # end of input quits too
                    return True
        return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _hangup_and_term_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal window) end the view like Ctrl-C, through the restoring exits."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _live(source: Source, interval: float) -> int:
    console = Console()
    with (
        _hangup_and_term_interrupt(),
        Keys(sys.stdin).cbreak() as keys,
        Live(console=console, screen=True, auto_refresh=False) as live,
    ):
        while True:
            try:
                snapshot = source.snapshot()
            except ClientError as exc:  # keep watching: the daemon may come back (a restart, a deploy)
                snapshot = Snapshot(url=source.client.url, taken_at=time.time(), error=str(exc))
            live.update(render(snapshot), refresh=True)
            if keys.wait_for_quit(interval):
                return OK


def _plain(source: Source, args: argparse.Namespace, sleep: Callable[[float], None]) -> int:
    for i in range(args.count or 1):
        if i:
            sleep(args.interval)
            print()
        snapshot = source.snapshot()
        print(json.dumps(dataclasses.asdict(snapshot)) if args.json else render_text(snapshot), flush=True)
    return OK


def monitor(args: argparse.Namespace, client: SupervisorClient, sleep: Callable[[float], None] = time.sleep) -> int:
    source = Source(client, events=args.events)
    if sys.stdout.isatty() and sys.stdin.isatty() and args.count is None and not args.json:
        return _live(source, args.interval)
    return _plain(source, args, sleep)
