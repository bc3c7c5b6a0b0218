"""`monitor`'s pure rendering (Snapshot -> text / rich) and its data source against a served stand-in daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from api_helpers import serve_in_thread
from fastapi import FastAPI, HTTPException, Response
from rich.console import Console

from supervisor.cli import main as cli
from supervisor.cli.client import SupervisorClient
from supervisor.cli.monitor import Source
from supervisor.cli.monitor_view import Snapshot, cpu_percent, cpu_seconds, render, render_text, size

T0 = 1_700_000_000.0


def _model(mid: str, state: str = "healthy", **extra: Any) -> dict[str, Any]:
    running = state not in ("stopped", "failed", "backoff")
    return {
        "id": mid,
        "state": state,
        "pid": 4242 if running else None,
        "restart_count": 0,
        "uptime_seconds": 125.0 if running else None,
        "failure_cause": None,
        "replicas": [],
        **extra,
    }


def _event(seq: int, mid: str, kind: str, state: str, detail: str | None = None) -> dict[str, Any]:
    return {"seq": seq, "time": T0 + seq, "model_id": mid, "kind": kind, "state": state, "detail": detail}


REPLICAS = [
    {"index": 0, "port": 8001, "state": "healthy", "pid": 11, "restart_count": 0, "failure_cause": None},
    {"index": 1, "port": 8002, "state": "starting", "pid": 12, "restart_count": 2, "failure_cause": "crash"},
]
FULL = Snapshot(
    url="http://127.0.0.1:8099",
    taken_at=T0,
    models=[
        _model("qwen", replicas=REPLICAS),
        _model("llama", "failed", restart_count=3, failure_cause="oom"),
    ],
    events=[_event(7, "llama", "exited", "failed", "exit code 1"), _event(12, "qwen", "healthy", "healthy")],
    memory={"qwen": {"rss": 3 * 2**30, "gpu": 40 * 2**30}, "llama": {"rss": None, "gpu": None}},
    cpu={"qwen": 25.0},
    host={"cpu_percent": 12.4, "load_average": [0.5, 0.25, 0.1], "memory": {"total": 16 * 2**30, "available": 2**33}},
    gpu_error="NVML: no driver",
)


def _table_lines(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("MODEL"))
    end = lines.index("", start)
    return [x.split() for x in lines[start:end]]


def test_text_rendering_shows_every_column_and_replica() -> None:
    """A model's row has state, pid, restarts, uptime, CPU, RSS and GPU memory; replicas follow, indented."""
    rows = _table_lines(render_text(FULL))
    assert rows[0] == ["MODEL", "STATE", "PID", "RESTARTS", "UPTIME", "CPU", "RSS", "GPU", "MEM", "CAUSE"]
    assert rows[1] == ["qwen", "healthy", "4242", "0", "2m05s", "25%", "3.0G", "40.0G", "-"]
    assert rows[2] == ["#0:8001", "healthy", "11", "0"]
    assert rows[3] == ["#1:8002", "starting", "12", "2", "crash"]
    assert rows[4] == ["llama", "failed", "-", "3", "-", "-", "-", "-", "oom"]


def test_text_rendering_has_host_line_and_latest_events() -> None:
    """The host's CPU, load and available memory, the GPU error, and each event with its model, oldest first."""
    text = render_text(FULL)
    assert "host: cpu 12%, load 0.50 0.25 0.10, memory 8.0G available of 16.0G, gpu: NVML: no driver" in text
    events = text.split("EVENTS\n", 1)[1].splitlines()
    assert [e.split()[:2] for e in events] == [["llama", "7"], ["qwen", "12"]]
    assert events[0].endswith("exited            failed    exit code 1")


def test_figures_the_daemon_does_not_serve_are_dashes() -> None:
    """No /api/diagnostics and no CPU rate (an older daemon): CPU, RSS and GPU columns are '-', never 0."""
    snapshot = Snapshot(url="u", taken_at=T0, models=[_model("qwen")])
    text = render_text(snapshot)
    assert _table_lines(text)[1][5:8] == ["-", "-", "-"]
    assert "host: - (the daemon has no /api/diagnostics)" in text
    assert "EVENTS: none yet" in text


def test_an_error_snapshot_says_what_went_wrong() -> None:
    """When the daemon cannot be read, the view says why instead of showing stale figures."""
    text = render_text(Snapshot(url="u", taken_at=T0, error="no answer from u"))
    assert text.splitlines()[1] == "error: no answer from u"


def test_rich_rendering_holds_the_same_content() -> None:
    """The live view's renderable shows the title, the rows, the events and how to quit."""
    console = Console(record=True, width=140, color_system=None)
    console.print(render(FULL))
    out = console.export_text()
    assert "llm-supervisor monitor  http://127.0.0.1:8099" in out
    assert "40.0G" in out
    assert "#1:8002" in out
    assert "exit code 1" in out
    assert "q quits" in out
    console = Console(record=True, width=140, color_system=None)
    console.print(render(Snapshot(url="u", taken_at=T0, error="no answer from u")))
    assert "error: no answer from u" in console.export_text()


def test_cpu_rate_from_two_samples() -> None:
    """CPU % is the CPU seconds' growth over the wall time between samples (100 = one core)."""
    assert cpu_percent({"a": 10.0, "b": 1.0}, {"a": 11.5, "b": 1.0, "new": 3.0}, 2.0) == {"a": 75.0, "b": 0.0}
    assert cpu_percent(None, {"a": 1.0}, 2.0) is None
    assert cpu_percent({"a": 1.0}, {"a": 2.0}, 0.0) is None


def test_cpu_seconds_are_read_from_the_metrics_text() -> None:
    """The per-model CPU counter is read from /metrics; other series are ignored."""
    text = (
        "# TYPE llm_supervisor_model_cpu_seconds counter\n"
        'llm_supervisor_model_cpu_seconds_total{model="qwen"} 12.5\n'
        "# TYPE llm_supervisor_model_up gauge\n"
        'llm_supervisor_model_up{model="qwen"} 1\n'
    )
    assert cpu_seconds(text) == {"qwen": 12.5}


@pytest.mark.parametrize(("n", "shown"), [(None, "-"), (512, "512B"), (1536, "1.5K"), (3 * 2**30, "3.0G")])
def test_sizes(n: int | None, shown: str) -> None:
    """Byte counts are shown short, with a binary unit."""
    assert size(n) == shown


@dataclass
class StandIn:
    """A daemon's read endpoints with scripted answers; records each events query."""

    diagnostics: bool = True
    cpu: dict[str, float] = field(default_factory=lambda: {"qwen": 1.0})
    events: list[dict[str, Any]] = field(default_factory=list)
    queries: list[tuple[str, int, int | None]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/llm/models")
        async def models() -> dict[str, Any]:
            return {"models": [_model("qwen"), _model("llama", "failed")], "total": 2}

        @app.get("/api/llm/models/{mid}/events")
        async def events(mid: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
            self.queries.append((mid, since, limit))
            found = [e for e in self.events if e["model_id"] == mid and e["seq"] > since]
            return found[-limit:] if limit else found

        @app.get("/api/diagnostics")
        async def diagnostics() -> dict[str, Any]:
            if not self.diagnostics:
                raise HTTPException(404, "Not Found")
            return {
                "host": {"cpu_percent": 1.0, "load_average": [0.1, 0.1, 0.1], "memory": {"total": 8, "available": 4}},
                "gpus": [],
                "gpu_error": "no NVML",
                "models": [{"id": "qwen", "memory": {"rss": 2**20, "gpu": None}}],
                "leftovers": [{"pid": 99}],
            }

        @app.get("/metrics")
        async def metrics() -> Response:
            if not self.cpu:
                raise HTTPException(404, "Not Found")
            lines = [f'llm_supervisor_model_cpu_seconds_total{{model="{m}"}} {v}' for m, v in self.cpu.items()]
            return Response("\n".join(lines) + "\n", media_type="text/plain")

        return app


@pytest.fixture
def stand_in() -> StandIn:
    return StandIn(events=[_event(1, "qwen", "spawned", "starting"), _event(2, "llama", "exited", "failed")])


@pytest.fixture
def client(stand_in: StandIn) -> Iterator[SupervisorClient]:
    with serve_in_thread(stand_in.app()) as base, SupervisorClient(base) as c:
        yield c


def test_source_reads_memory_cpu_and_events_incrementally(stand_in: StandIn, client: SupervisorClient) -> None:
    """Memory from /api/diagnostics, a CPU rate from two /metrics samples, events asked `since` the last seq."""
    now = [100.0]
    source = Source(client, events=3, clock=lambda: now[0])
    first = source.snapshot()
    assert first.memory == {"qwen": {"rss": 2**20, "gpu": None}}
    assert first.cpu is None  # one sample: no rate yet
    assert first.gpu_error == "no NVML"
    assert first.notes == ["leftover processes: 1 (`llm-supervisor recover`)"]
    assert [e["seq"] for e in first.events] == [1, 2]
    stand_in.cpu = {"qwen": 1.5}
    stand_in.events += [_event(3, "qwen", "healthy", "healthy"), _event(4, "qwen", "unhealthy", "unhealthy")]
    stand_in.events.append(_event(5, "llama", "spawned", "starting"))
    now[0] = 102.0
    second = source.snapshot()
    assert second.cpu == {"qwen": 25.0}
    assert [e["seq"] for e in second.events] == [3, 4, 5]  # the newest 3
    assert stand_in.queries == [("qwen", 0, 3), ("llama", 0, 3), ("qwen", 1, None), ("llama", 2, None)]


def test_source_against_an_older_daemon_leaves_dashes(stand_in: StandIn, client: SupervisorClient) -> None:
    """404 for /api/diagnostics and /metrics: the snapshot has no memory, host or CPU, and no error."""
    stand_in.diagnostics, stand_in.cpu = False, {}
    snapshot = Source(client).snapshot()
    assert (snapshot.memory, snapshot.host, snapshot.cpu, snapshot.error) == (None, None, None, None)
    assert _table_lines(render_text(snapshot))[1][5:8] == ["-", "-", "-"]


def test_plain_monitor_prints_count_snapshots_with_a_cpu_rate_from_the_second(
    stand_in: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal, `--count 2` prints two snapshots; only the second knows a CPU rate. `--json` gives data."""
    with serve_in_thread(stand_in.app()) as base:
        assert cli.main(["monitor", "--url", base, "--count", "2", "--interval", "0.05"]) == 0
        first, second = capsys.readouterr().out.split("\n\nllm-supervisor monitor")
        assert _table_lines(first)[1][:6] == ["qwen", "healthy", "4242", "0", "2m05s", "-"]
        assert _table_lines(second)[1][:6] == ["qwen", "healthy", "4242", "0", "2m05s", "0%"]
        assert cli.main(["monitor", "--url", base, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in data["models"]] == ["qwen", "llama"]
    assert data["memory"] == {"qwen": {"rss": 2**20, "gpu": None}}
