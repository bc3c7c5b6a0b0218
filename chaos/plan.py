"""`--dry-run`: the plan of a scenario in words. Pure: it starts, signals and calls nothing.

For a remote target it says which steps the run would skip and why, so an operator reviews the effect on a
deployment before letting the harness near it.
"""

from __future__ import annotations

from chaos.actions import Reach, refusal, remote_allows_process_actions
from chaos.runner import RunOptions, scenario_seed
from chaos.scenario import Scenario
from chaos.steps import Step
from chaos.target import proxied_models


def describe_step(step: Step) -> str:
    data = step.model_dump(by_alias=True, exclude_none=True, exclude={"at", "action", "note"})
    words = ", ".join(f"{k}={v}" for k, v in data.items())
    return f"{step.action} {words}".strip() + (f"  # {step.note}" if step.note else "")


def remote_refusal(step: Step, scenario: Scenario, url: str) -> str | None:
    """Why a step would be skipped against `url`, or None (the runner checks again, with the live API)."""
    # A remote target has no proxy of ours, no /admin/faults we know of, and a supervisor we did not start.
    return refusal(step, Reach(processes=remote_allows_process_actions(scenario, url)))


def describe_plan(scenario: Scenario, options: RunOptions, *, source: str = "") -> str:
    lines = [f"scenario {scenario.name} ({source}), seed {scenario_seed(options.seed, scenario.name)}"]
    if options.supervisor_url:
        lines.append(f"  target: the supervisor at {options.supervisor_url} (nothing started or stopped)")
    elif scenario.target is not None:
        lines.append(f"  target: `{' '.join(options.supervisor_cmd)} run -c <generated config>` on free ports")
        proxied = proxied_models(scenario)
        for model, spec in scenario.target.models.items():
            keys = ", ".join(f"{k}={v}" for k, v in spec.supervisor_keys().items())
            via = " via the fault proxy" if model in proxied else ""
            where = ""
            if spec.in_container:
                image = spec.docker.image if spec.docker and spec.docker.image else "the fake-vLLM image"
                limit = f", mem_limit {spec.docker.mem_limit}" if spec.docker and spec.docker.mem_limit else ""
                where = f" in a container of {image}{limit}"
            copies = f" x{spec.replicas} replicas" if spec.replicas else ""
            lines.append(f"    {model}: fake-vllm {' '.join(spec.fake_vllm)}{copies}{where}{via}; {keys}")
        if scenario.needs_gateway:
            settings = scenario.target.gateway.model_dump(exclude_none=True) if scenario.target.gateway else {}
            lines.append(f"    the supervisor's gateway on a free port {settings or '(its default settings)'}")
    else:
        lines.append("  target: none (this scenario needs --supervisor URL)")
    for item in scenario.steady_state:
        replica = f" replica {item.healthy.replica}" if item.healthy.replica is not None else ""
        lines.append(f"  steady state: {item.healthy.model}{replica} healthy within {item.healthy.within:g}s of start")
    if scenario.load is not None:
        load = scenario.load.model_dump(exclude={"prompt"}, exclude_none=True)
        if options.supervisor_url and not options.gateway_url:
            via = "  [would be SKIPPED: no --gateway URL]"
        else:
            via = f" via {options.gateway_url}" if options.supervisor_url else " via the gateway"
        lines.append(f"  from the steady state to the end: requests {load}{via}")
    for step in sorted(scenario.faults, key=lambda s: s.at):
        why = remote_refusal(step, scenario, options.supervisor_url) if options.supervisor_url else None
        skip = f"  [would be SKIPPED: {why}]" if why else ""
        lines.append(f"  at +{step.at:g}s: {describe_step(step)}{skip}")
    for expectation in scenario.expect:
        body = expectation.model_dump(by_alias=True, exclude_none=True)[expectation.kind]
        lines.append(f"  expect {expectation.kind}: {body}")
    for step in scenario.cleanup:
        lines.append(f"  cleanup: {describe_step(step)}")
    ending = "" if options.supervisor_url else "; finally stop the supervisor and kill every leftover process"
    lines.append(f"  watch until the timed expectations are met, then {scenario.settle_for():g}s more{ending}")
    return "\n".join(lines)
