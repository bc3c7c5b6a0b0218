"""pytest plugin (entry point `llm_chaos`): scenario files as tests, and fixtures for users' own tests.

It loads in every pytest run of a project that installs llm-supervisor, so it stays out of the way: it only
collects `.yaml`/`.yml` files inside a directory named `scenarios` whose top level looks like a scenario
(`name` and `expect`), or that fail to parse there (so a broken scenario is a failing test, not a silently
missing one). Each file is one test named after its scenario, marked `chaos`.

Scenarios with a container model (`runtime: docker`) are also marked `docker`. When any is selected, the
daemon is checked and the fake-vLLM image built once, after collection (outside every test's timeout: a
first build takes about a minute); they skip with the reason where no daemon answers or the machine cannot
build the image, or fail instead with LLM_SUPERVISOR_REQUIRE_DOCKER=1. Nothing of this runs otherwise.

Options: `--chaos-supervisor-cmd CMD`, `--chaos-seed N`, `--chaos-report-dir DIR` (journal, JUnit, HTML).
Fixtures: `fake_vllm` (a factory of fake servers) and `supervised` (a factory of supervisors over fakes).
"""

from __future__ import annotations

import asyncio
import random
import shlex
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaos import docker_image
from chaos.docker_image import Readiness
from chaos.fixtures import FakeServer, Supervised
from chaos.real_vllm import VllmServer, not_on_real_vllm, program
from chaos.report import write_reports
from chaos.runner import RunOptions, ScenarioResult, run_scenario
from chaos.scenario import Scenario, ScenarioError, load_scenario, looks_like_scenario

_RESULTS = pytest.StashKey[list[ScenarioResult]]()
_DOCKER = pytest.StashKey[Readiness]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-chaos", "chaos scenarios (llm-chaos)")
    group.addoption("--chaos-supervisor-cmd", metavar="CMD", help="run scenarios against `CMD run -c CONFIG`")
    group.addoption("--chaos-seed", type=int, metavar="N", help="replay a run's seed")
    group.addoption("--chaos-report-dir", type=Path, metavar="DIR", help="write the journal, JUnit and HTML here")
    group.addoption(
        "--chaos-vllm", metavar="VLLM", help="run scenarios with a real_vllm block on real `VLLM serve` (others skip)"
    )
    group.addoption("--chaos-vllm-model", metavar="DIR", help="the model directory real vLLM serves")
    group.addoption("--chaos-vllm-flags", metavar="FLAGS", default="", help="added to every `vllm serve` (quoted)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: an llm-chaos scenario run against a real supervisor")
    config.addinivalue_line("markers", "docker: needs a reachable Docker Engine")
    config.stash[_RESULTS] = []


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml") or "scenarios" not in file_path.parent.parts:
        return None
    try:
        data = yaml.safe_load(file_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        data = {"name": file_path.stem, "expect": None}  # collected, so the error shows as a failing test
    if not looks_like_scenario(data):
        return None
    collector: pytest.Collector = ScenarioFile.from_parent(parent, path=file_path)
    return collector


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check Docker and build the fake-vLLM image once, if a selected scenario runs containers."""
    if session.config.option.collectonly:
        return
    if session.config.getoption("--chaos-vllm"):
        return  # containers run the fake-vLLM image: none of them runs on real vLLM
    if any(isinstance(item, ScenarioItem) and item.in_containers for item in session.items):
        session.config.stash[_DOCKER] = docker_image.prepare([])


class ScenarioFailedError(Exception):
    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(result.name)
        self.result = result


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        try:
            scenario: Scenario | ScenarioError = load_scenario(self.path)
            name = scenario.name if isinstance(scenario, Scenario) else self.path.stem
        except ScenarioError as exc:
            scenario, name = exc, self.path.stem
        yield ScenarioItem.from_parent(self, name=name, scenario=scenario)


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario | ScenarioError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.add_marker(pytest.mark.chaos)
        if self.in_containers:
            self.add_marker(pytest.mark.docker)

    @property
    def in_containers(self) -> bool:
        return isinstance(self.scenario, Scenario) and bool(self.scenario.container_models())

    def runtest(self) -> None:
        if isinstance(self.scenario, ScenarioError):
            raise self.scenario
        options = _options(self.config)
        if options.vllm is not None and (why := not_on_real_vllm(self.scenario)) is not None:
            pytest.skip(f"not run on real vLLM: {why}")
        if self.in_containers:
            ready = self.config.stash.get(_DOCKER, None) or docker_image.prepare([])
            if ready.problem is not None:
                if ready.skip:
                    pytest.skip(ready.problem)
                pytest.fail(ready.problem, pytrace=False)
            options = replace(options, docker_image=ready.image)
        result = asyncio.run(run_scenario(self.scenario, options, source=str(self.path)))
        self.config.stash[_RESULTS].append(result)
        self.user_properties.append(("seed", result.seed))
        if result.outcome == "skipped":
            pytest.skip(result.message)
        if result.outcome != "passed":
            raise ScenarioFailedError(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        error = excinfo.value
        if isinstance(error, ScenarioError):
            return "invalid scenario:\n" + "\n".join(f"  {p}" for p in error.problems)
        if isinstance(error, ScenarioFailedError):
            r = error.result
            lines = [f"scenario {r.name} {r.outcome} (seed {r.seed}; replay: --chaos-seed with the run's seed)"]
            if r.message:
                lines.append(f"  {r.message}")
            marks = {True: "ok  ", False: "FAIL", None: "skip"}
            lines += [f"  {marks[v.passed]} {v.check}: {v.message}" for v in r.verdicts]
            if r.workdir:
                lines.append(f"  files (config, supervisor log): {r.workdir}")
            return "\n".join(lines)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario: {self.name}"


def _options(config: pytest.Config) -> RunOptions:
    seed = config.getoption("--chaos-seed")
    if seed is None:
        seed = config.stash.setdefault(_SEED, random.SystemRandom().randrange(2**31))
    options = RunOptions(seed=seed, workdir=_workdir(config), vllm=_vllm(config))
    cmd = config.getoption("--chaos-supervisor-cmd")
    return replace(options, supervisor_cmd=tuple(shlex.split(cmd))) if cmd else options


_SEED = pytest.StashKey[int]()


def _vllm(config: pytest.Config) -> VllmServer | None:
    command, model = config.getoption("--chaos-vllm"), config.getoption("--chaos-vllm-model")
    if command is None and model is None:
        return None
    if command is None or model is None:
        raise pytest.UsageError("--chaos-vllm and --chaos-vllm-model go together")
    flags = tuple(shlex.split(config.getoption("--chaos-vllm-flags")))
    return VllmServer(program(command), str(Path(model).resolve()), flags)


def _workdir(config: pytest.Config) -> Path | None:
    report_dir = config.getoption("--chaos-report-dir")
    return Path(report_dir).resolve() / "work" if report_dir else None


def pytest_sessionfinish(session: pytest.Session) -> None:
    report_dir = session.config.getoption("--chaos-report-dir", None)
    results = session.config.stash.get(_RESULTS, [])
    if report_dir and results:
        write_reports(
            results,
            Path(report_dir),
            seed=session.config.stash.get(_SEED, 0),
            command=["pytest", *session.config.invocation_params.args],
        )


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("--chaos-seed")
    return f"llm-chaos: seed {seed}" if seed is not None else None


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Iterator[Callable[..., FakeServer]]:
    """Factory: `fake_vllm("--crash-after", "2", model="m")` starts a fake server and waits for /health."""
    started: list[FakeServer] = []

    def start(*flags: str, model: str = "fake-model", wait_healthy: bool = True) -> FakeServer:
        server = FakeServer(*flags, model=model, workdir=tmp_path)
        started.append(server)
        return server.start(wait_healthy=wait_healthy)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    """Factory: `supervised({"m1": {"fake_vllm": [...], "restart_delay": 0.5}})` starts a supervisor."""
    started: list[Supervised] = []

    def start(models: dict[str, dict[str, Any]], *, supervisor_cmd: list[str] | None = None) -> Supervised:
        target = Supervised(models, supervisor_cmd=supervisor_cmd, workdir=tmp_path / f"supervised-{len(started)}")
        started.append(target)
        return target.start()

    yield start
    for target in started:
        target.stop()
