"""Human-readable renderings of API answers for the CLI (tables and key: value blocks).

Input is the API's JSON (dicts), so the CLI shows exactly what a script with `--json` would see.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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


def last_failure(failure: Mapping[str, Any] | None) -> str:
    """`oom at 2026-01-02 03:04:05, exit code 1`: kept after the model recovered; `-` when none."""
    if not failure:
        return "-"
    code = failure.get("exit_code")
    return f"{failure['cause']} at {clock(failure['time'])}" + ("" if code is None else f", exit code {code}")


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
        ("last failure", last_failure(m.get("last_failure"))),
    ]
    if m.get("failure_advice"):
        fields.append(("advice", m["failure_advice"]))
    for change in m.get("adaptations") or []:  # smart recovery's changes to the configured args
        was = change.get("from") or "default"
        fields.append(
            ("adapted", f"{change['flag']} {was} -> {change['to']} ({change['reason']}, {clock(change['time'])})")
        )
    if m.get("adaptations") and m.get("effective_args") is not None:
        fields.append(("effective args", " ".join(m["effective_args"])))
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
        rows.append((str(e["seq"]), clock(e["time"]), e["kind"], e["state"], event_detail(e)))
    return table(headers, rows)


def event_detail(e: Mapping[str, Any]) -> str:
    detail = e.get("detail") or ""
    if e.get("reason"):
        detail = f"{detail} [reason: {e['reason']}]".strip()
    if e.get("replica"):
        detail = f"[replica {e['replica']}] {detail}".strip()
    return detail or "-"


def event_line(e: Mapping[str, Any]) -> str:
    """One event on one line in fixed columns, for `events --follow` (a table cannot know later widths)."""
    return f"{e['seq']:>6}  {clock(e['time'])}  {e['kind']:<17} {e['state']:<9} {event_detail(e)}".rstrip()


def is_healthy(m: dict[str, Any]) -> bool:
    return bool(m["state"] == "healthy" and m.get("is_healthy", True))


def check_line(m: dict[str, Any]) -> str:
    """`check`'s line for one model: `id: state (figures)`, and for an unhealthy one what is known of why."""
    if is_healthy(m):
        pid = f"pid {m['pid']}, " if m.get("pid") is not None else ""
        return f"{m['id']}: healthy ({pid}up {duration(m.get('uptime_seconds'))}, restarts {_restarts(m)})"
    facts = [f"restarts {_restarts(m)}"]
    if m.get("failure_cause"):
        facts.insert(0, f"cause {m['failure_cause']}")
    if m.get("desired") == "stopped":
        facts.insert(0, "stopped by an operator")
    line = f"{m['id']}: {m['state']} ({', '.join(facts)})"
    why = m.get("failure_advice") or m.get("health_message")
    return f"{line}: {' '.join(str(why).split())}" if why else line


def heal_actions(answer: dict[str, Any]) -> str:
    actions = answer.get("actions") or []
    if not actions:
        return "nothing to heal"
    return "\n".join(f"{a.get('model') or '-'}: {a.get('action')} ({a.get('reason') or '-'})" for a in actions)


def _item(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def reload_changes(answer: dict[str, Any]) -> str:
    """Each part of a reload's answer on its own line: `added: a, b`, `unchanged: -`; dict items as k=v."""
    lines = []
    for key, value in answer.items():
        if isinstance(value, list):
            shown = "; ".join(_item(v) for v in value) if value else "-"
            lines.append(f"{key}: {shown}")
        else:
            lines.append(f"{key}: {_item(value)}")
    return "\n".join(lines)
