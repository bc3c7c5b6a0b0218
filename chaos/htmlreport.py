"""The HTML report: per scenario its story, verdicts, and one SVG timeline picture, in a single file.

The picture has one row per model (per replica, for a model of several): its states as coloured bands
(from the supervisor's event timeline, or the polled statuses when it serves no events), markers for
starts (▼), exits (✕), failed probes (|), and the harness's faults as shaded spans with their labels, over
a time axis in seconds since the supervisor started. A scenario with `load` gets a row for its requests: a
grey band while they were sent, and a red mark for each failed one, from when it was sent to when it
ended. Everything is inline; `<title>` elements give each mark a hover text.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

from chaos.check_timeline import state_points
from chaos.timeline import Observation
from chaos.traffic import failure, tally

if TYPE_CHECKING:
    from chaos.runner import ScenarioResult

STATE_COLOURS = {
    "stopped": "#9e9e9e",
    "starting": "#64b5f6",
    "healthy": "#66bb6a",
    "unhealthy": "#ffa726",
    "backoff": "#fdd835",
    "stopping": "#ab47bc",
    "failed": "#e53935",
}
OUTCOME_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "skipped": "#757575", "error": "#6a1b9a"}
_LEFT, _WIDTH, _ROW, _TOP = 90, 880, 34, 30
_FAILED = "#c62828"

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h2{margin-top:2em;border-bottom:1px solid #ccc}
.outcome{color:#fff;padding:2px 8px;border-radius:4px;font-size:.8em;vertical-align:middle}
table{border-collapse:collapse;width:100%} td{border-top:1px solid #eee;padding:3px 6px;vertical-align:top}
.story{font-style:italic;color:#444} .legend span{display:inline-block;margin-right:12px}
.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
"""


def html_report(results: list[ScenarioResult], *, seed: int) -> str:
    rows = "".join(
        f'<tr><td><a href="#{_e(r.name)}">{_e(r.name)}</a></td><td>{_badge(r.outcome)}</td>'
        f"<td>{r.duration:.1f}s</td><td>{_e(_request_counts(r.observation, short=True))}</td></tr>"
        for r in results
    )
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{s}</span>' for s, c in STATE_COLOURS.items())
    body = "".join(_scenario(r) for r in results)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>llm-chaos report</title>"
        f"<style>{_CSS}</style></head><body><h1>llm-chaos report</h1>"
        f"<p>Seed <b>{seed}</b> (replay with <code>--seed {seed}</code>). "
        f"{len(results)} scenarios.</p><table>{rows}</table>"
        f"<p class='legend'>{legend}<span>▼ start</span><span>✕ exit</span><span>| failed probe</span>"
        f"<span>shaded: fault</span><span><i class='sw' style='background:{_FAILED}'></i>failed request</span>"
        f"</p>{body}</body></html>\n"
    )


def _scenario(r: ScenarioResult) -> str:
    verdicts = "".join(
        f"<tr><td>{_mark(v.passed)}</td><td>{_e(v.check)}</td><td>{_e(v.message)}</td></tr>" for v in r.verdicts
    )
    picture = timeline_svg(r.observation) if r.observation else ""
    message = f"<p><b>{_e(r.message)}</b></p>" if r.message else ""
    counts = _request_counts(r.observation, short=False)
    requests = f"<p>Requests: {_e(counts)}</p>" if counts else ""
    return (
        f'<h2 id="{_e(r.name)}">{_e(r.name)} {_badge(r.outcome)}</h2>'
        f"<p class='story'>{_e(r.story)}</p><p>seed {r.seed} · {_e(r.source)} · {r.duration:.1f}s</p>"
        f"{message}{requests}{picture}<table>{verdicts}</table>"
    )


def _request_counts(obs: Observation | None, *, short: bool) -> str:
    """'120 sent, 2 failed' (or the long form with reasons); empty for a scenario without load."""
    if obs is None or not obs.requests:
        return ""
    counts = tally(obs.requests)
    return f"{counts.sent} sent, {counts.failed} failed" if short else counts.describe()


def timeline_svg(obs: Observation) -> str:
    """One inline SVG: a band of states per model, markers, faults, and the time axis."""
    models = _rows(obs)
    start = obs.launched_at
    end = max([obs.ended_at] + [e.time for e in obs.events])
    span = max(end - start, 1.0)

    def x(t: float) -> float:
        return _LEFT + (t - start) / span * _WIDTH

    rows = len(models) + (1 if obs.requests else 0)
    height = _TOP + _ROW * max(rows, 1) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" height="{height}" '
        f'font-size="11" role="img">'
    ]
    for fault in obs.faults:
        x0 = x(fault.started)
        x1 = x(fault.ended) if fault.ended else x0 + 2
        parts.append(
            f'<rect x="{x0:.1f}" y="{_TOP - 18}" width="{max(x1 - x0, 2):.1f}" height="{height - _TOP}" '
            f'fill="#e53935" opacity="0.15"><title>{_e(fault.message or fault.description)}</title></rect>'
            f'<text x="{x0 + 2:.1f}" y="{_TOP - 8}" fill="#b71c1c">{_e(fault.action)}</text>'
        )
    for marker, t in (("steady", obs.steady_at), ("faults over", obs.faults_end)):
        if t is not None:
            parts.append(
                f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_TOP - 4}" y2="{height - 24}" '
                f'stroke="#555" stroke-dasharray="3,3"><title>{marker}</title></line>'
            )
    for index, row in enumerate(models):
        parts.append(_model_row(obs, row, _TOP + index * _ROW, x, end))
    if obs.requests:
        parts.append(_requests_row(obs, _TOP + len(models) * _ROW, x))
    axis_y = height - 22
    parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + _WIDTH}" y1="{axis_y}" y2="{axis_y}" stroke="#333"/>')
    step = _tick_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        tx = x(start + tick)
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#333"/>'
            f'<text x="{tx:.1f}" y="{axis_y + 15}" text-anchor="middle">{tick:g}s</text>'
        )
        tick += step
    parts.append("</svg>")
    return "".join(parts)


def _rows(obs: Observation) -> list[tuple[str, int | None]]:
    """One row per model; a model whose events come from several replicas gets one row per replica."""
    rows: list[tuple[str, int | None]] = []
    for model in obs.models():
        replicas = sorted({e.replica for e in obs.model_events(model)})
        rows += [(model, r) for r in replicas] if len(replicas) > 1 else [(model, None)]
    return rows


def _model_row(obs: Observation, row: tuple[str, int | None], y: float, x: Callable[[float], float], end: float) -> str:
    model, replica = row
    label = model if replica is None else f"{model} #{replica}"
    parts = [f'<text x="4" y="{y + 15}">{_e(label)}</text>']
    changes = state_points(obs, model, replica)
    points = [p for i, p in enumerate(changes) if i == 0 or p[1] != changes[i - 1][1]]  # one band per stretch
    for (t0, state), (t1, _) in zip(points, [*points[1:], (end, "")], strict=True):
        colour = STATE_COLOURS.get(state, "#bdbdbd")
        parts.append(
            f'<rect x="{x(t0):.1f}" y="{y + 4}" width="{max(x(t1) - x(t0), 0.5):.1f}" height="16" '
            f'fill="{colour}"><title>{_e(state)} from +{t0 - obs.launched_at:.2f}s</title></rect>'
        )
    for event in (e for e in obs.model_events(model) if replica is None or e.replica == replica):
        ex, when = x(event.time), f"+{event.time - obs.launched_at:.2f}s"
        text = _e(f"{event.kind} {when} {event.detail or ''} {event.reason or ''}".strip())
        if event.kind == "spawned":
            parts.append(f'<path d="M{ex:.1f},{y + 2} l-5,-8 h10 z" fill="#1565c0"><title>{text}</title></path>')
        elif event.kind == "exited":
            parts.append(
                f'<text x="{ex:.1f}" y="{y + 31}" text-anchor="middle" fill="#b71c1c">✕<title>{text}</title></text>'
            )
        elif event.kind == "probe_failed":
            parts.append(
                f'<line x1="{ex:.1f}" x2="{ex:.1f}" y1="{y + 20}" y2="{y + 26}" stroke="#e65100">'
                f"<title>{text}</title></line>"
            )
    return "".join(parts)


def _requests_row(obs: Observation, y: float, x: Callable[[float], float]) -> str:
    """A grey band while requests were sent; over it a red mark per failed request, sent to ended."""
    first = min(r.started for r in obs.requests)
    last = max(r.ended for r in obs.requests)
    counts = tally(obs.requests)
    parts = [
        f'<text x="4" y="{y + 15}">requests</text>'
        f'<rect x="{x(first):.1f}" y="{y + 4}" width="{max(x(last) - x(first), 0.5):.1f}" height="16" '
        f'fill="#e0e0e0"><title>{_e(counts.describe())}</title></rect>'
    ]
    for record in obs.requests:
        reason = failure(record)
        if reason is None:
            continue
        text = _e(f"{record.path} sent at +{record.started - obs.launched_at:.2f}s, {record.latency:.2f}s: {reason}")
        parts.append(
            f'<rect x="{x(record.started):.1f}" y="{y + 4}" width="{max(x(record.ended) - x(record.started), 2):.1f}" '
            f'height="16" fill="{_FAILED}" opacity="0.7"><title>{text}</title></rect>'
        )
    return "".join(parts)


def _tick_step(span: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300):
        if span / step <= 20:
            return step
    return span / 10


def _badge(outcome: str) -> str:
    return f'<span class="outcome" style="background:{OUTCOME_COLOURS.get(outcome, "#555")}">{outcome}</span>'


def _mark(passed: bool | None) -> str:
    return {True: "✔", False: "✘", None: "-"}[passed]


def _e(text: str) -> str:
    return html.escape(text, quote=True)
