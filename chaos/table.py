"""The resilience table: for each failure of the gateway catalogue, what clients saw and how fast the fleet
recovered, as Markdown (`llm-chaos table --out docs/resilience.md`).

Each row is measured from one scenario run on the fake fleet: requests sent and failed; the latency of the
requests in flight while the failure lasted against those that ended before it began (the same run's steady
state), as added p50 and p99; and the time from the fault to every replica of the model being healthy again.
Measuring is pure (a result in, a row out), so the rendering is tested on hand-made runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chaos.runner import ScenarioResult
from chaos.scenario import Scenario
from chaos.timeline import Observation
from chaos.traffic import percentile, tally

# Published by NVIDIA, not measured here: (deployment, failure, requests sent, requests failed).
DYNAMO_SOURCE = "NVIDIA Dynamo fault-tolerance documentation (published figures, not measured here)"
DYNAMO_URL = "https://docs.nvidia.com/dynamo/latest/fault_tolerance/README.html"
DYNAMO_FIGURES = (
    ("1 replica", "decode worker killed", 800, 280),
    ("4 replicas", "decode worker killed", 800, 4),
)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    failure: str
    replicas: int
    load: str
    outcome: str
    sent: int
    failed: int
    before: tuple[float, float] | None  # p50, p99 of the requests that ended before the fault
    during: tuple[float, float] | None  # p50, p99 of the requests in flight from the fault to the recovery
    recovery: float | None  # seconds from the fault to every replica healthy again; None: not recovered
    note: str = ""

    @property
    def added(self) -> tuple[float, float] | None:
        if self.before is None or self.during is None:
            return None
        return self.during[0] - self.before[0], self.during[1] - self.before[1]


def measure(scenario: Scenario, result: ScenarioResult) -> Row:
    """One row from a scenario's run (its load's model is the one measured)."""
    obs = result.observation
    load = scenario.load
    model = load.model if load else ""
    spec = scenario.target.models.get(model) if scenario.target and load else None
    replicas = spec.replica_count if spec else 1
    title = scenario.title or scenario.name
    described = _describe_load(scenario)
    if obs is None or obs.first_fault_at is None or not obs.requests:
        return Row(scenario.name, title, replicas, described, result.outcome, 0, 0, None, None, None, result.message)
    fault = obs.first_fault_at
    counts = tally(obs.requests)
    recovered = recovered_at(obs, model, replicas, fault)
    until = recovered if recovered is not None else obs.ended_at
    before = [r.latency for r in obs.requests if r.ended <= fault]
    during = [r.latency for r in obs.requests if r.ended > fault and r.started < max(until, fault)]
    note = ""
    if not before and (overall := _p50_p99([r.latency for r in obs.requests])):
        note = f"no request ended before the fault; all of them took {_ms(overall)} (p50 / p99)"
    if recovered is None:
        note = _join(note, f"{model} was never fully healthy again")
    return Row(
        scenario.name,
        title,
        replicas,
        described,
        result.outcome,
        counts.sent,
        counts.failed,
        _p50_p99(before),
        _p50_p99(during),
        None if recovered is None else recovered - fault,
        note,
    )


def recovered_at(obs: Observation, model: str, replicas: int, fault: float) -> float | None:
    """When every replica of `model` was last seen becoming healthy together, if they all are at the end
    (the fault's own time when nothing ever stopped being healthy); None if they are not all healthy."""
    states: dict[int, str] = {}
    all_healthy_since: float | None = None
    for event in obs.model_events(model):
        states[event.replica] = event.state
        healthy = len(states) >= replicas and all(s == "healthy" for s in states.values())
        if healthy and all_healthy_since is None:
            all_healthy_since = event.time
        elif not healthy:
            all_healthy_since = None
    if all_healthy_since is None:
        return None
    return max(all_healthy_since, fault)


def _p50_p99(values: list[float]) -> tuple[float, float] | None:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return None if p50 is None or p99 is None else (p50, p99)


def _describe_load(scenario: Scenario) -> str:
    load = scenario.load
    if load is None:
        return "none"
    kind = {True: "streamed", False: "plain", "both": "streamed + plain"}[load.stream]
    pace = f", {load.rate:g}/s" if load.rate else ""
    return f"{load.concurrency} clients, {kind}{pace}"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# --- rendering ----------------------------------------------------------------------------------------


def _ms(pair: tuple[float, float] | None, *, signed: bool = False) -> str:
    if pair is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{pair[0] * 1000:{sign}.0f} / {pair[1] * 1000:{sign}.0f} ms"


def _recovery(row: Row) -> str:
    if row.recovery is None:
        return "not recovered"
    return f"{row.recovery:.1f} s"


def render(rows: Sequence[Row], *, seed: int, command: str, when: str, machine: str) -> str:
    """The whole Markdown document: how it was made, the measured table, notes, and Dynamo's figures."""
    lines = [
        "# Resilience: what clients see when a model server fails",
        "",
        f"Generated by `{command}` on {when} (seed {seed}; {machine}). Do not edit by hand: run the command again.",
        "",
        "Each row is one scenario of [`scenarios/gateway/`](../scenarios/gateway/) run on the fake fleet "
        "(fake-vllm processes behind this project's supervisor and its gateway; [chaos.md](chaos.md) describes "
        "the harness). Clients send OpenAI requests through the gateway from the steady state to the end of "
        "the run. A request **failed** when its status was not 200, it timed out, it carried an error event, or "
        "its stream did not end with `data: [DONE]` after data events with a finished choice. "
        "**p50 / p99 before** is the latency of the requests that ended before the fault; **added** is the "
        "latency of the requests in flight from the fault until recovery, less that. **Recovery** is the time "
        "from the fault to every replica of the model being healthy again, as the supervisor reported it.",
        "",
        "| Failure | Replicas | Load | Requests sent | Failed | p50 / p99 before | Added p50 / p99 | Recovery | "
        "Scenario |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        verdict = "" if row.outcome == "passed" else f" ({row.outcome.upper()})"
        lines.append(
            f"| {row.failure} | {row.replicas} | {row.load} | {row.sent} | {row.failed} | {_ms(row.before)} | "
            f"{_ms(row.added, signed=True)} | {_recovery(row)} | `{row.name}`{verdict} |"
        )
    notes = [f"- `{row.name}`: {row.note}." for row in rows if row.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += [
        "",
        "Timings depend on the machine and on the fake's settings (`--ttft`, `--itl`, restart delays and probe "
        "intervals are short so the catalogue runs in seconds); the request counts are what to compare. A real "
        "vLLM restart takes minutes, not a second: with one replica, requests are held for that long (up to "
        "`hold_timeout`) or answered by a fallback.",
        "",
        "## Published figures for comparison",
        "",
        f"Source: {DYNAMO_SOURCE}, {DYNAMO_URL}. These come from a different system, workload and failure "
        "injection; they are placed here for scale only.",
        "",
        "| System | Deployment | Failure | Requests sent | Failed |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| NVIDIA Dynamo | {deployment} | {failure} | {sent} | {failed} |"
        for deployment, failure, sent, failed in DYNAMO_FIGURES
    ]
    return "\n".join(lines) + "\n"
