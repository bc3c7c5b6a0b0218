"""Soak: a real `llm-supervisor run` over N fake-vllm models for a given time, under seeded random faults.

    .venv/bin/python bench/soak.py [--models 20] [--minutes 30] [--seed 1] [--fault-every 8] [--kinds KINDS]
                                   [--out soak.json]

Faults come from the chaos catalogue's kinds (see soak_drive.Kind): kill -9 of a server, a hang (SIGSTOP of
its group, released soon or left for the supervisor to kill), CUDA OOM and engine death (fake-vllm's
/admin/faults), a slow start (a restart of the model whose fake-vllm has --startup-delay), an operator's stop
and start through the API, and a reload (one model's settings changed in the file, then SIGHUP or
POST /api/reload). Every few seconds it samples the supervisor's RSS and its anonymous, file and shared
parts (/proc/PID/status) and open file descriptors (psutil) and
reads each model's new events. At the end every model is started again and given time to turn healthy, the
supervisor is stopped with SIGTERM, and it reports: RSS first/last/max and its slope over the second half,
fds, orphans (processes carrying this run's env marker still alive after the supervisor exited), gaps in the
event sequence numbers, API errors and the faults applied. Exit 1 when orphans, gaps or API 5xx are not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil
from soak_drive import Api, Injector, Kind, schedule

from chaos.target import TOKEN_ENV, SupervisorProcess, default_supervisor_cmd, fake_vllm_command, free_port

MARKER = "LLM_SOAK_RUN"  # in every model's environment: how the orphan count finds this run's processes
SLOW_START_DELAY = 4.0  # seconds the slow model's fake-vllm waits before it loads
# Short timings so faults are found and repaired in seconds; no restart budget, so no model ends `failed`.
MODEL_KEYS: dict[str, Any] = {
    "restart_policy": "on-failure",
    "max_restarts": None,
    "restart_delay": 0.5,
    "backoff_max": 4,
    "backoff_reset_after": 30,
    "health_check_interval": 1.0,
    "health_check_timeout": 2,
    "health_failure_threshold": 3,
    "startup_timeout": 120,
    "startup_probe_interval": 0.5,
    "startup_stop_timeout": 3,
    "stop_timeout": 5,
}


def build_config(workdir: Path, models: int, run_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The supervisor's config and each model's server root URL; model m00 is the slow starter."""
    entries: dict[str, Any] = {}
    urls: dict[str, str] = {}
    for index in range(models):
        model, port = f"m{index:02d}", free_port()
        flags = ["--startup-delay", str(SLOW_START_DELAY)] if index == 0 else []
        entries[model] = {
            "command": fake_vllm_command(),
            "args": ["serve", f"soak-{index}", "--port", str(port), "--seed", str(index), *flags],
            "endpoints": {"base_url": f"http://127.0.0.1:{port}/v1"},
            "env": {MARKER: run_id},
            **MODEL_KEYS,
        }
        urls[model] = f"http://127.0.0.1:{port}"
    supervisor = {"api": {"host": "127.0.0.1", "port": free_port()}, "state_dir": str(workdir / "state")}
    return {"supervisor": {**supervisor, "token_env": TOKEN_ENV}, "llmModels": entries}, urls


class Sample(NamedTuple):
    """One look at the supervisor: seconds since the soak began, RSS and its parts in MiB, open fds."""

    at: float
    rss: float
    anon: float  # the heap: Python objects, SQLite's page cache, malloc's free lists
    file: float  # pages of mapped files (the interpreter, libraries) touched so far
    shmem: float  # shared memory, e.g. the SQLite WAL's index
    fds: int


def memory(pid: int) -> tuple[float, float, float, float]:
    """VmRSS and its parts RssAnon, RssFile and RssShmem from one read of /proc/PID/status, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["RssAnon"], fields["RssFile"], fields["RssShmem"]


@dataclass
class Watch:
    """What the soak saw of the supervisor: resource samples and the event sequence numbers read so far."""

    pid: int
    samples: list[Sample] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    last_seq: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)

    def sample(self, elapsed: float) -> None:
        with contextlib.suppress(psutil.Error, OSError):
            sizes = memory(self.pid)
            self.samples.append(Sample(round(elapsed, 1), *sizes, psutil.Process(self.pid).num_fds()))

    def read_events(self, api: Api, models: list[str]) -> None:
        for model in models:
            events = api.json(f"/api/llm/models/{model}/events?since={self.last_seq.get(model, 0)}")
            for event in events or []:
                self.seqs.add(event["seq"])
                self.kinds[event["kind"]] = self.kinds.get(event["kind"], 0) + 1
                self.last_seq[model] = max(self.last_seq.get(model, 0), event["seq"])


def wait_all_healthy(api: Api, models: list[str], within: float) -> list[str]:
    """Poll until every model is healthy; the ones that are not when `within` runs out."""
    deadline = time.monotonic() + within
    while True:
        listing = api.json("/api/llm/models") or {"models": []}
        states = {m["id"]: m["state"] for m in listing["models"]}
        behind = [m for m in models if states.get(m) != "healthy"]
        if not behind or time.monotonic() > deadline:
            return behind
        time.sleep(0.5)  # polling the API until the deadline


def marked_processes(run_id: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose environment carries this run's marker."""
    found = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == run_id:
                found.append(proc)
    return found


def orphans_after_shutdown(run_id: str, within: float = 5.0) -> list[str]:
    """The marked processes still alive `within` s after the supervisor exited (then killed, to clean up)."""
    deadline = time.monotonic() + within
    while (left := marked_processes(run_id)) and time.monotonic() < deadline:
        time.sleep(0.2)  # a SIGKILLed process lingers until it is reaped
    described = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]} ({proc.status()})")
            os.killpg(proc.pid, signal.SIGCONT)
            proc.kill()
    return described


def slope_mib_per_hour(samples: list[Sample], part: str = "rss") -> float | None:
    """Least-squares slope of RSS (or one of its parts) over the second half of the samples, in MiB per hour."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2 or half[0].at == half[-1].at:
        return None
    fit = statistics.linear_regression([s.at / 3600 for s in half], [getattr(s, part) for s in half])
    return round(fit.slope, 2)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    config, urls = build_config(workdir, args.models, run_id)
    models = list(config["llmModels"])
    config_path = workdir / "supervisor.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    api_url = f"http://127.0.0.1:{config['supervisor']['api']['port']}"
    supervisor = SupervisorProcess(default_supervisor_cmd(), config_path, api_url, workdir / "supervisor.log")
    seconds = args.minutes * 60
    faults = schedule(args.seed, models, models[0], seconds, args.fault_every, args.kinds)
    supervisor.start_blocking()
    assert supervisor.process is not None
    api = Api(api_url, supervisor.headers)
    watch = Watch(supervisor.process.pid)
    injector = Injector(api, urls, config, config_path, supervisor.process.pid)
    try:
        not_ready = wait_all_healthy(api, models, within=120 + 3 * args.models)
        if not_ready:
            raise RuntimeError(f"models not healthy at the start: {not_ready}: {supervisor.log_tail()}")
        print(f"{args.models} models healthy; soaking {args.minutes:g} min, {len(faults)} faults scheduled", flush=True)
        began = time.monotonic()
        next_sample = 0.0
        pending = list(faults)
        while (elapsed := time.monotonic() - began) < seconds:
            if supervisor.returncode is not None:
                raise RuntimeError(f"the supervisor exited with {supervisor.returncode}: {supervisor.log_tail()}")
            injector.due(elapsed)
            while pending and pending[0].at <= elapsed:
                injector.apply(pending.pop(0), elapsed)
            if elapsed >= next_sample:
                watch.sample(elapsed)
                watch.read_events(api, models)
                next_sample += args.sample_every
            time.sleep(0.2)  # the driver's tick: faults are due at fractions of a second
        injector.finish()
        unrecovered = wait_all_healthy(api, models, within=90)
        watch.sample(time.monotonic() - began)
        watch.read_events(api, models)
        ceiling = max(watch.seqs, default=0)  # every event up to here was written before the next sweep began
        watch.read_events(api, models)
        marked = len(marked_processes(run_id))  # the orphan count's own check: it sees the live servers
    finally:
        api.close()
        supervisor.stop_blocking(60.0)
    orphans = orphans_after_shutdown(run_id)
    missing = [seq for seq in range(1, ceiling + 1) if seq not in watch.seqs]
    rss = [s.rss for s in watch.samples]
    fds = [s.fds for s in watch.samples]
    return {
        "settings": {
            "models": args.models,
            "minutes": args.minutes,
            "seed": args.seed,
            "fault_every": args.fault_every,
            "kinds": [k.value for k in args.kinds or Kind],
        },
        "workdir": str(workdir),
        "samples": len(watch.samples),
        "rss_mib": {
            "first": round(rss[0], 1),
            "last": round(rss[-1], 1),
            "max": round(max(rss), 1),
            "slope_mib_per_hour_second_half": slope_mib_per_hour(watch.samples),
            "parts": {
                part: {
                    "first": round(getattr(watch.samples[0], part), 1),
                    "last": round(getattr(watch.samples[-1], part), 1),
                    "slope_mib_per_hour_second_half": slope_mib_per_hour(watch.samples, part),
                }
                for part in ("anon", "file", "shmem")
            },
        },
        "fds": {"first": fds[0], "last": fds[-1], "max": max(fds)},
        "marked_before_shutdown": marked,
        "orphans": len(orphans),
        "orphan_processes": orphans,
        "events": {"read": len(watch.seqs), "checked_up_to": ceiling, "gaps": len(missing), "missing": missing[:50]},
        "event_kinds": dict(sorted(watch.kinds.items())),
        "api": {
            "requests": api.requests,
            "5xx": api.server_errors,
            "transport_errors": api.transport_errors,
            "by_status": {str(k): v for k, v in sorted(api.statuses.items())},
            "problems": api.problems,
        },
        "faults": {
            "scheduled": len(faults),
            "schedule_sha256": hashlib.sha256(repr(faults).encode()).hexdigest()[:16],
            "applied": dict(injector.applied),
            "skipped": dict(injector.skipped),
        },
        "reload_surprises": injector.reload_surprises,
        "unrecovered": unrecovered,
        "supervisor_exit": supervisor.returncode,
        "series_fields": list(Sample._fields),
        "series": [list(s) for s in watch.samples],
    }


def summary(report: dict[str, Any]) -> str:
    rss, fds, events, api, faults = (report[k] for k in ("rss_mib", "fds", "events", "api", "faults"))
    applied = ", ".join(f"{k} {v}" for k, v in sorted(faults["applied"].items())) or "none"
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(faults["skipped"].items())) or "none"
    return "\n".join(
        [
            f"soak: {report['settings']['models']} models, {report['settings']['minutes']:g} min, "
            f"seed {report['settings']['seed']}, {report['samples']} samples",
            f"RSS MiB   first {rss['first']}, last {rss['last']}, max {rss['max']}, "
            f"slope over the second half {rss['slope_mib_per_hour_second_half']} MiB/h",
            "  of it    "
            + "; ".join(
                f"{part} {p['first']} -> {p['last']}, {p['slope_mib_per_hour_second_half']} MiB/h"
                for part, p in rss["parts"].items()
            ),
            f"fds       first {fds['first']}, last {fds['last']}, max {fds['max']}",
            f"faults    applied: {applied}; skipped (model not healthy then): {skipped}",
            f"events    {events['read']} read, up to seq {events['checked_up_to']}, gaps {events['gaps']}",
            f"API       {api['requests']} requests, 5xx {api['5xx']}, transport errors {api['transport_errors']}",
            f"orphans   {report['orphans']} after shutdown (supervisor exit {report['supervisor_exit']}; "
            f"{report['marked_before_shutdown']} marked processes alive before it)",
            f"not healthy 90 s after the last fault: {report['unrecovered'] or 'none'}",
        ]
    )


def fault_kinds(text: str) -> list[Kind]:
    """`--kinds kill9,oom`: the fault kinds named, or an error that lists the known ones."""
    try:
        return [Kind(name) for name in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the kinds are {', '.join(k.value for k in Kind)}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-every", type=float, default=8.0, help="mean seconds between faults")
    parser.add_argument(
        "--kinds",
        type=fault_kinds,
        help=f"only these fault kinds, comma-separated (default all: {','.join(k.value for k in Kind)})",
    )
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples and event reads")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args()
    report = soak(args)
    print(summary(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["orphans"] or report["events"]["gaps"] or report["api"]["5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
