"""Human-readable renderings of API answers for the CLI (tables and key: value blocks).

Input is the API's JSON (dicts), so the CLI shows exactly what a script with `--json` would see.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def duration(seconds: float | None) -> str:
    """12.3 -> '12s', 3725 -> '1h02m', None -> '-'."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(unix: float | None) -> str:
    if unix is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, trailing spaces trimmed."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


def _restarts(m: dict[str, Any]) -> str:
    limit = m.get("max_restarts")
    return f"{m['restart_count']}/{'inf' if limit is None else limit}"


def models_table(models: list[dict[str, Any]]) -> str:
    """One row per model; a model of several replicas is followed by one indented row per replica."""
    headers = ("ID", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "CAUSE")
    rows: list[tuple[str, ...]] = []
    for m in models:
        rows.append(
            (
                m["id"],
                m["state"],
                str(m["pid"]) if m.get("pid") is not None else "-",
                duration(m.get("uptime_seconds")),
                _restarts(m),
                "ok" if m["is_healthy"] else (m.get("health_message") or "-"),
                m.get("failure_cause") or "-",
            )
        )
        replicas = m.get("replicas") or []
        if len(replicas) > 1:
            rows += [_replica_row(r) for r in replicas]
    return table(headers, rows)


def _replica_row(r: dict[str, Any]) -> tuple[str, ...]:
    port = f":{r['port']}" if r.get("port") is not None else ""
    routing = " draining" if r.get("draining") else ""
    return (
        f"  #{r['index']}{port}",
        r["state"] + routing,
        str(r["pid"]) if r.get("pid") is not None else "-",
        "",
        str(r["restart_count"]),
        ("ok" if r["is_healthy"] else "-") + (f" ({r['in_flight']} in flight)" if r.get("in_flight") else ""),
        r.get("failure_cause") or "-",
    )


def model_detail(m: dict[str, Any]) -> str:
    fields = [
        ("id", m["id"]),
        ("state", f"{m['state']} (desired: {m.get('desired', '-')})"),
        ("pid", str(m["pid"]) if m.get("pid") is not None else "-"),
        ("uptime", duration(m.get("uptime_seconds"))),
        ("healthy", "yes" if m["is_healthy"] else f"no ({m.get('health_message') or 'no probe yet'})"),
        ("health failures", str(m["consecutive_health_failures"])),
        ("last health check", clock(m.get("last_health_check_time"))),
        ("restart policy", m["restart_policy"]),
        ("restarts", _restarts(m)),
        ("last restart", clock(m.get("last_restart_time"))),
        ("next restart", clock(m.get("next_restart_at"))),
        ("last exit code", str(m["last_exit_code"]) if m.get("last_exit_code") is not None else "-"),
        ("cuda oom", "yes" if m["has_cuda_oom"] else "no"),
        ("failure cause", m.get("failure_cause") or "-"),
    ]
    if m.get("failure_advice"):
        fields.append(("advice", m["failure_advice"]))
    replicas = m.get("replicas") or []
    for r in replicas if len(replicas) > 1 else []:
        state = r["state"] + (", draining" if r.get("draining") else "")
        pid = r["pid"] if r.get("pid") is not None else "-"
        fields.append(
            (f"replica {r['index']}", f"{state}, port {r.get('port')}, pid {pid}, restarts {r['restart_count']}")
        )
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in fields)


def events_table(events: list[dict[str, Any]]) -> str:
    headers = ("SEQ", "TIME", "KIND", "STATE", "DETAIL")
    rows = []
    for e in events:
        detail = e.get("detail") or ""
        if e.get("reason"):
            detail = f"{detail} [reason: {e['reason']}]".strip()
        if e.get("replica"):
            detail = f"[replica {e['replica']}] {detail}".strip()
        rows.append((str(e["seq"]), clock(e["time"]), e["kind"], e["state"], detail or "-"))
    return table(headers, rows)
