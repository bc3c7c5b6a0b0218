"""What `llm-supervisor monitor` shows, as pure functions: a `Snapshot` of the daemon -> a rich renderable
(the live view) or plain text (stdout not a terminal).

A figure the daemon does not serve (an older daemon answers 404 for /api/diagnostics, /metrics has no CPU
series yet, the first refresh has no CPU rate) is shown as "-", never as 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from supervisor.cli import format as cli_format

CPU_SERIES = "llm_supervisor_model_cpu_seconds_total"
HEADERS = ("MODEL", "STATE", "PID", "RESTARTS", "UPTIME", "CPU", "RSS", "GPU MEM", "CAUSE")
STATE_STYLE = {
    "healthy": "green",
    "starting": "cyan",
    "unhealthy": "yellow",
    "backoff": "yellow",
    "stopping": "magenta",
    "stopped": "dim",
    "failed": "bold red",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One refresh's data. `memory` is None when the daemon has no /api/diagnostics, `cpu` when no rate is known."""

    url: str
    taken_at: float
    models: Sequence[Mapping[str, Any]] = ()
    events: Sequence[Mapping[str, Any]] = ()
    memory: Mapping[str, Mapping[str, Any]] | None = None
    cpu: Mapping[str, float] | None = None
    host: Mapping[str, Any] | None = None
    gpu_error: str | None = None
    error: str | None = None
    notes: Sequence[str] = field(default_factory=tuple)


def cpu_seconds(metrics_text: str) -> dict[str, float]:
    """{model: CPU seconds} from the daemon's /metrics text; empty when it has no such series."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == CPU_SERIES and "model" in sample.labels:
                out[sample.labels["model"]] = sample.value
    return out


def cpu_percent(
    before: Mapping[str, float] | None, after: Mapping[str, float] | None, elapsed: float
) -> dict[str, float] | None:
    """Per-model CPU use (100 = one core) between two samples of CPU seconds; None without two samples."""
    if before is None or after is None or elapsed <= 0:
        return None
    return {m: max(0.0, (after[m] - before[m]) / elapsed * 100) for m in after if m in before}


def size(n: float | None) -> str:
    """Bytes, short: 1536 -> '1.5K', 3 * 2**30 -> '3.0G', None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{int(value)}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _percent(cpu: Mapping[str, float] | None, model_id: str) -> str:
    if cpu is None or model_id not in cpu:
        return "-"
    return f"{cpu[model_id]:.0f}%"


def _memory(snapshot: Snapshot, model_id: str, kind: str) -> str:
    if snapshot.memory is None or model_id not in snapshot.memory:
        return "-"
    return size(snapshot.memory[model_id].get(kind))


def model_rows(snapshot: Snapshot) -> list[tuple[str, ...]]:
    """The table's rows: a model's row, then one indented row per replica when it has several."""
    rows: list[tuple[str, ...]] = []
    for m in snapshot.models:
        mid = str(m["id"])
        rows.append(
            (
                mid,
                str(m["state"]),
                str(m["pid"]) if m.get("pid") is not None else "-",
                str(m["restart_count"]),
                cli_format.duration(m.get("uptime_seconds")),
                _percent(snapshot.cpu, mid),
                _memory(snapshot, mid, "rss"),
                _memory(snapshot, mid, "gpu"),
                str(m.get("failure_cause") or "-"),
            )
        )
        replicas = m.get("replicas") or []
        for r in replicas if len(replicas) > 1 else []:
            port = f":{r['port']}" if r.get("port") is not None else ""
            state = str(r["state"]) + (" draining" if r.get("draining") else "")
            pid = str(r["pid"]) if r.get("pid") is not None else "-"
            cause = str(r.get("failure_cause") or "")
            rows.append((f"  #{r['index']}{port}", state, pid, str(r["restart_count"]), "", "", "", "", cause))
    return rows


def host_line(snapshot: Snapshot) -> str:
    """The host's figures and the GPUs' state in one line; '-' parts when the daemon has no diagnostics."""
    if snapshot.host is None:
        return "host: - (the daemon has no /api/diagnostics)"
    h = snapshot.host
    memory = h.get("memory") or {}
    load = " ".join(f"{x:.2f}" for x in h.get("load_average") or [])
    parts = [
        f"cpu {h['cpu_percent']:.0f}%" if h.get("cpu_percent") is not None else "cpu -",
        f"load {load or '-'}",
        f"memory {size(memory.get('available'))} available of {size(memory.get('total'))}",
    ]
    if snapshot.gpu_error:
        parts.append(f"gpu: {snapshot.gpu_error}")
    return "host: " + ", ".join(parts)


def title(snapshot: Snapshot) -> str:
    return f"llm-supervisor monitor  {snapshot.url}  {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at))}"


def render_text(snapshot: Snapshot) -> str:
    """The plain rendering: title, host line, the models table, then the latest events, one per line."""
    lines = [title(snapshot)]
    if snapshot.error:
        return "\n".join([*lines, f"error: {snapshot.error}"])
    lines += [host_line(snapshot), *snapshot.notes, "", cli_format.table(HEADERS, model_rows(snapshot)), ""]
    lines.append("EVENTS" if snapshot.events else "EVENTS: none yet")
    lines += [f"{e['model_id']:<12} {cli_format.event_line(e)}" for e in snapshot.events]
    return "\n".join(lines)


def render(snapshot: Snapshot) -> RenderableType:
    """The live view: the same content as render_text, as rich tables with states in colour."""
    head = Text(title(snapshot), style="bold")
    if snapshot.error:
        return Group(head, Text(f"error: {snapshot.error}", style="bold red"), Text("q quits", style="dim"))
    models = Table(*HEADERS, box=None, header_style="bold", pad_edge=False)
    for row in model_rows(snapshot):
        state = Text(row[1], style=STATE_STYLE.get(row[1].split()[0], ""))
        models.add_row(row[0], state, *row[2:])
    events = Table("MODEL", "SEQ", "TIME", "KIND", "STATE", "DETAIL", box=None, header_style="bold", pad_edge=False)
    for e in snapshot.events:
        events.add_row(
            str(e["model_id"]),
            str(e["seq"]),
            cli_format.clock(e["time"]),
            str(e["kind"]),
            Text(str(e["state"]), style=STATE_STYLE.get(str(e["state"]), "")),
            cli_format.event_detail(e),
        )
    notes = [Text(n, style="yellow") for n in snapshot.notes]
    return Group(
        head,
        Text(host_line(snapshot)),
        *notes,
        Text(""),
        models,
        Text(""),
        Text("EVENTS" if snapshot.events else "EVENTS: none yet", style="bold"),
        events,
        Text(""),
        Text("q quits", style="dim"),
    )
