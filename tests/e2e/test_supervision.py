"""The supervisor against real processes: fake vLLM servers and small Python programs.

Timings are short (0.1-0.5 s); assertions use the supervisor's recorded event times with the tolerance
stated in each test, never a fixed sleep. Every test ends with no process left (the `no_leftovers` fixture).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil

from supervisor.core.states import Cause, EventKind, State
from supervisor.store.logs import tail
from tests.e2e.conftest import Supervised, fake_model, kinds, script_model, wait_until

# Scheduling slack on a loaded 2-core CI machine, on top of the delay being checked.
TOLERANCE = 0.35


async def test_crash_restarts_follow_the_backoff_schedule(supervised: Supervised) -> None:
    """A server that crashes after start is restarted after 0.3, 0.6, 1.2 s, then marked failed."""
    model = fake_model(
        "--crash-after", "0.3", restart_delay=0.3, backoff_multiplier=2, max_restarts=3, restart_window=None
    )
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: sup.status("m").state is State.FAILED, 30, "the model to fail")
        events = sup.events("m")
    exits, spawns = kinds(events, EventKind.EXITED), kinds(events, EventKind.SPAWNED)
    gaps = [spawn.time - exit_.time for exit_, spawn in zip(exits, spawns[1:], strict=False)]
    assert [float(e.detail or 0) for e in kinds(events, EventKind.BACKOFF)] == [0.3, 0.6, 1.2]
    for gap, expected in zip(gaps, [0.3, 0.6, 1.2], strict=True):
        assert expected <= gap + 0.01 < expected + TOLERANCE
    assert len(spawns) == 4
    assert sup.status("m").restart_count == 3


async def test_hang_is_detected_and_restarted(supervised: Supervised) -> None:
    """A server that stops answering is found unhealthy by liveness probes and restarted."""
    async with supervised({"m": fake_model("--hang-after", "0.5")}) as sup:
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.SPAWNED)) >= 2, 20, "a second run")
        events = sup.events("m")
    assert [e.kind for e in events if e.kind in (EventKind.UNHEALTHY, EventKind.STOPPING)][:2] == [
        EventKind.UNHEALTHY,
        EventKind.STOPPING,
    ]
    assert kinds(events, EventKind.SPAWNED)[1].reason == "unhealthy"


async def test_prior_art_2_slow_start_is_not_killed(supervised: Supervised) -> None:
    """A model that loads for 2 s (port refused meanwhile) becomes healthy in one run (docs/design/defects.md #2)."""
    async with supervised({"m": fake_model("--startup-delay", "2", startup_timeout=15)}) as sup:
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 20, "healthy")
        events = sup.events("m")
        status = sup.status("m")
    spawned, healthy = kinds(events, EventKind.SPAWNED), kinds(events, EventKind.HEALTHY)
    assert len(spawned) == 1
    assert healthy[0].time - spawned[0].time >= 2.0
    assert status.consecutive_health_failures == 0


async def test_startup_timeout_stops_and_restarts(supervised: Supervised) -> None:
    """A model still loading at startup_timeout is stopped and started again."""
    model = fake_model("--startup-delay", "60", startup_timeout=1.0)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.SPAWNED)) >= 2, 20, "a second run")
        events = sup.events("m")
    timeout_event = kinds(events, EventKind.STARTUP_TIMEOUT)[0]
    # The deadline runs from the decision to spawn, a few ms before the `spawned` event is stamped.
    assert 1.0 - 0.05 <= timeout_event.time - kinds(events, EventKind.SPAWNED)[0].time < 1.0 + TOLERANCE
    assert kinds(events, EventKind.SPAWNED)[1].reason == Cause.STARTUP_TIMEOUT


async def test_prior_art_3_instant_crash_is_counted(supervised: Supervised) -> None:
    """A process that dies at once (bad arguments) is counted and ends failed, not restarted forever."""
    model = script_model("raise SystemExit(2)", max_restarts=2, restart_window=None, restart_delay=0.05)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: sup.status("m").state is State.FAILED, 15, "failed")
        assert sup.status("m").restart_count == 2
        assert sup.status("m").last_exit_code == 2
        assert len(kinds(sup.events("m"), EventKind.SPAWNED)) == 3


async def test_prior_art_4_exit_zero_after_engine_death_is_restarted(supervised: Supervised) -> None:
    """vLLM exits 0 after its engine dies; on-failure restarts it and names the cause (docs/design/defects.md #4)."""
    # Probes slower than the watchdog, so the exit (not the 503s) is what the supervisor sees first.
    model = fake_model("--engine-dead-after", "0.3", "--engine-dead-exit-after", "0.2", health_check_interval=5)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.SPAWNED)) >= 2, 20, "a second run")
        exited = kinds(sup.events("m"), EventKind.EXITED)[0]
    assert exited.detail == "exit code 0"
    assert exited.reason == Cause.ENGINE_DEAD


async def test_prior_art_5_grandchild_ignoring_sigterm_is_killed(supervised: Supervised, tmp_path: Path) -> None:
    """Stop reaches a grandchild ignoring SIGTERM: SIGKILL to the group at stop_timeout (docs/design/defects.md #5)."""
    pid_file = tmp_path / "grandchild.pid"
    # The grandchild writes its pid only once it ignores SIGTERM, so the stop cannot win a start-up race.
    grandchild_code = (
        f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    code = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild_code!r}]); time.sleep(600)"
    )
    async with supervised({"m": script_model(code, stop_timeout=0.5)}) as sup:
        await wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 10, "the grandchild")
        grandchild = psutil.Process(int(pid_file.read_text()))
        started = time.monotonic()
        await sup.stop_model("m")
        await wait_until(lambda: sup.status("m").state is State.STOPPED, 10, "stopped")
        took = time.monotonic() - started
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
        assert 0.5 <= took < 0.5 + 1.0
        assert len(kinds(sup.events("m"), EventKind.KILLED)) == 1


async def test_orphaned_engine_children_are_reaped_before_the_next_run(supervised: Supervised) -> None:
    """After a SIGKILL of the server, its engine children die before a new run starts (docs/design/defects.md #5)."""
    async with supervised({"m": fake_model("--engine-children", "2")}) as sup:
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 20, "healthy")
        pid = sup.status("m").pid
        assert pid is not None
        # The engine tree of the fake, as of vLLM: EngineCore and the workers under it.
        children = psutil.Process(pid).children(recursive=True)
        assert len(children) >= 2
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.SPAWNED)) >= 2, 20, "a second run")
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


async def test_prior_art_1_base_url_ending_in_v1_probes_the_root(supervised: Supervised) -> None:
    """A base_url ending in /v1 is probed at the root's /health; the model is healthy (docs/design/defects.md #1)."""
    async with supervised({"m": fake_model()}) as sup:
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 20, "healthy")
        await asyncio.sleep(0.5)  # several liveness periods: it must stay healthy, not flap on a 404
        assert sup.status("m").state is State.HEALTHY
        assert kinds(sup.events("m"), EventKind.PROBE_FAILED) == []


async def test_prior_art_8_one_models_backoff_never_stalls_another(supervised: Supervised) -> None:
    """While one model waits out a 30 s backoff, the other is still probed every 0.2 s (docs/design/defects.md #8)."""
    probes: list[float] = []

    class Count:
        def on_event(self, event: object) -> None:
            pass

        def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
            if model_id == "steady":
                probes.append(time.monotonic())

    models = {"crasher": script_model("raise SystemExit(1)", restart_delay=30), "steady": fake_model()}
    async with supervised(models) as sup:
        sup.add_observer(Count())
        await wait_until(lambda: sup.status("crasher").state is State.BACKOFF, 10, "backoff")
        await wait_until(lambda: sup.status("steady").state is State.HEALTHY, 20, "healthy")
        start = len(probes)
        await wait_until(lambda: len(probes) >= start + 5, 5, "five more probes of the steady model")
    gaps = [b - a for a, b in zip(probes[start:], probes[start + 1 :], strict=False)]
    assert max(gaps) < 0.2 + TOLERANCE


async def test_prior_art_10_a_model_added_later_is_watched(supervised: Supervised) -> None:
    """A model added after start-up is restarted when it crashes, like the first ones (docs/design/defects.md #10)."""
    from supervisor.config.schema import parse_config

    late = parse_config({"llmModels": {"late": script_model("raise SystemExit(1)", max_restarts=1)}}, "t")
    async with supervised({"first": script_model("import time; time.sleep(600)")}) as sup:
        sup.add_model("late", late.models["late"])
        await wait_until(lambda: sup.status("late").state is State.FAILED, 10, "late model to be restarted and fail")
        assert len(kinds(sup.events("late"), EventKind.SPAWNED)) == 2


async def test_prior_art_11_oom_flag_belongs_to_one_run(supervised: Supervised, tmp_path: Path) -> None:
    """The CUDA OOM flag of a crashed run is gone once the next run starts (docs/design/defects.md #11)."""
    marker = tmp_path / "first-run-done"
    code = (
        "import os, sys, time\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.', file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "time.sleep(600)\n"
    )
    async with supervised({"m": script_model(code)}) as sup:
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.OOM_DETECTED)) == 1, 10, "oom detected")
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.SPAWNED)) == 2, 10, "second run")
        await wait_until(lambda: sup.status("m").state is State.HEALTHY, 10, "second run up")
        assert kinds(sup.events("m"), EventKind.EXITED)[0].reason == Cause.OOM
        assert sup.status("m").has_cuda_oom is False


async def test_prior_art_12_stdout_and_stderr_are_both_logged(supervised: Supervised) -> None:
    """stdout (where vLLM logs) and stderr both reach the model's log, in order (docs/design/defects.md #12)."""
    code = (
        "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr, flush=True); "
        "import time; time.sleep(600)"
    )
    async with supervised({"m": script_model(code)}) as sup:

        def logged() -> list[str]:
            return tail(sup.log_dir(), "m", 50).lines

        await wait_until(lambda: any("to stderr" in line for line in logged()), 10, "both lines in the log")
        lines = logged()
    out = next(i for i, line in enumerate(lines) if "to stdout" in line)
    err = next(i for i, line in enumerate(lines) if "to stderr" in line)
    assert out < err


async def test_prior_art_13_health_check_interval_is_per_model(supervised: Supervised) -> None:
    """Each model is probed at its own health_check_interval (docs/design/defects.md #13)."""
    probes: dict[str, list[float]] = {"fast": [], "slow": []}

    class Count:
        def on_event(self, event: object) -> None:
            pass

        def on_probe(self, model_id: str, ok: bool, duration: float) -> None:
            probes[model_id].append(time.monotonic())

    models = {"fast": fake_model(health_check_interval=0.1), "slow": fake_model(health_check_interval=1.0)}
    async with supervised(models) as sup:
        sup.add_observer(Count())
        await wait_until(lambda: all(s.state is State.HEALTHY for s in sup.statuses()), 20, "both healthy")
        start = {k: len(v) for k, v in probes.items()}
        await asyncio.sleep(2.0)  # the measurement window itself: count probes in 2 s of wall time
        counted = {k: len(v) - start[k] for k, v in probes.items()}
    assert counted["slow"] <= 3
    assert counted["fast"] >= 8


async def test_prior_art_14_backoff_resets_after_stable_health(supervised: Supervised) -> None:
    """A server healthy past backoff_reset_after restarts after the first delay again (docs/design/defects.md #14)."""
    model = fake_model("--crash-after", "1.0", restart_delay=0.2, backoff_reset_after=0.5, max_restarts=None)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.BACKOFF)) >= 3, 30, "three restarts")
        delays = [float(e.detail or 0) for e in kinds(sup.events("m"), EventKind.BACKOFF)]
    assert delays[:3] == [0.2, 0.2, 0.2]


async def test_prior_art_14_start_of_failed_model_gets_a_fresh_budget(supervised: Supervised) -> None:
    """An operator's start of a failed model begins a fresh restart budget (docs/design/defects.md #14)."""
    model = script_model("raise SystemExit(1)", max_restarts=1, restart_window=None, restart_delay=0.05)
    async with supervised({"m": model}) as sup:
        await wait_until(lambda: sup.status("m").state is State.FAILED, 10, "failed")
        result = await sup.start_model("m")
        assert result.accepted
        await wait_until(lambda: len(kinds(sup.events("m"), EventKind.FAILED)) == 2, 10, "failed again")
        assert len(kinds(sup.events("m"), EventKind.SPAWNED)) == 4  # 1 + 1 restart, twice
