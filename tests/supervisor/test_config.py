"""Tests of supervisor.config: every key and default, every bad value's message and path, file loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from supervisor.config.schema import (
    FLUIDMCP_SECTIONS,
    Config,
    ConfigError,
    FrozenMap,
    ModelConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]


def one_model(**keys: Any) -> dict[str, Any]:
    """Config data with a single model `m` whose settings are `keys` on top of a command."""
    return {"llmModels": {"m": {"command": "vllm", **keys}}}


def model(**keys: Any) -> ModelConfig:
    return parse_config(one_model(**keys), "test").models["m"]


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "test")
    return caught.value.problems


# --- defaults and every key ---------------------------------------------------------------------------------

DEFAULTS: list[tuple[str, object]] = [
    ("type", None),
    ("args", ()),
    ("env", {}),
    ("cwd", None),
    ("runtime", "process"),
    ("docker", None),
    ("restart_policy", "on-failure"),
    ("max_restarts", 3),
    ("restart_window", 600.0),
    ("restart_delay", 5.0),
    ("backoff_multiplier", 2.0),
    ("backoff_max", 300.0),
    ("backoff_jitter", 0.0),
    ("backoff_reset_after", 600.0),
    ("health_check_interval", 10.0),
    ("health_check_timeout", 5.0),
    ("health_failure_threshold", 3),
    ("startup_timeout", 900.0),
    ("startup_probe_interval", 1.0),
    ("stop_timeout", 30.0),
    ("startup_stop_timeout", 5.0),
    ("success_exit_codes", ()),
    ("replicas", 1),
    ("ports", ()),
    ("fallback", None),
    ("progress_timeout", None),
    ("inference_probe", None),
    ("max_memory", None),
    ("max_gpu_memory", None),
    ("memory_check_interval", 5.0),
    ("adapt", False),
    ("adapt_min_max_model_len", 1024),
    ("adapt_min_gpu_memory_utilization", 0.5),
]


@pytest.mark.parametrize(("key", "default"), DEFAULTS)
def test_model_key_defaults_to_the_contract_value(key: str, default: object) -> None:
    """A model that names only its command gets the documented default for every other key."""
    assert getattr(model(), key) == default


def test_defaults_table_covers_every_model_key() -> None:
    """The defaults table above names every key a model has, so a new key cannot go untested."""
    assert {key for key, _ in DEFAULTS} | {"command", "endpoints"} == set(ModelConfig.model_fields)


KEYS = [
    (
        "args",
        ["serve", "Qwen/Qwen2.5-0.5B-Instruct", "--port", "8001"],
        ("serve", "Qwen/Qwen2.5-0.5B-Instruct", "--port", "8001"),
    ),
    ("env", {"HF_HOME": "/data/hf"}, {"HF_HOME": "/data/hf"}),
    ("cwd", "/srv/models", Path("/srv/models")),
    ("type", "vllm", "vllm"),
    ("restart_policy", "unless-stopped", "unless-stopped"),
    ("max_restarts", None, None),
    ("max_restarts", 0, 0),
    ("restart_window", None, None),
    ("restart_window", 60, 60.0),
    ("restart_delay", 0, 0.0),
    ("restart_delay", 0.25, 0.25),
    ("backoff_multiplier", 1, 1.0),
    ("backoff_max", 30, 30.0),
    ("backoff_jitter", 0.1, 0.1),
    ("backoff_reset_after", 120, 120.0),
    ("health_check_interval", 2.5, 2.5),
    ("health_check_timeout", 1, 1.0),
    ("health_failure_threshold", 1, 1),
    ("startup_timeout", 60, 60.0),
    ("startup_probe_interval", 0.5, 0.5),
    ("stop_timeout", 0, 0.0),
    ("shutdown_timeout", 12, None),  # the alias lands on stop_timeout, checked below
    ("success_exit_codes", [0, 143], (0, 143)),
    ("max_memory", "8G", 8 << 30),
    ("max_gpu_memory", "40GiB", 40 << 30),
    ("memory_check_interval", 2.5, 2.5),
    ("adapt", True, True),
    ("adapt_min_max_model_len", 4096, 4096),
    ("adapt_min_gpu_memory_utilization", 0.7, 0.7),
]


@pytest.mark.parametrize(("key", "value", "expected"), KEYS)
def test_model_key_is_parsed(key: str, value: object, expected: object) -> None:
    """Each model key given a valid value reads back as that value, typed."""
    parsed = model(**{key: value})
    if key == "shutdown_timeout":
        assert parsed.stop_timeout == 12.0
    else:
        assert getattr(parsed, key) == expected


@pytest.mark.parametrize("policy", ["no", "on-failure", "always", "unless-stopped"])
def test_every_restart_policy_is_accepted(policy: str) -> None:
    """The four documented restart policies are accepted."""
    assert model(restart_policy=policy).restart_policy == policy


def test_numbers_in_args_and_env_become_text() -> None:
    """`--port, 8001` and `CUDA_VISIBLE_DEVICES: 0` written unquoted in YAML still reach the process as text."""
    parsed = model(args=["--port", 8001, "--gpu-memory-utilization", 0.5], env={"CUDA_VISIBLE_DEVICES": 0})
    assert parsed.args == ("--port", "8001", "--gpu-memory-utilization", "0.5")
    assert dict(parsed.env) == {"CUDA_VISIBLE_DEVICES": "0"}


def test_supervisor_section_defaults(tmp_path: Path) -> None:
    """Without a supervisor section: API on 127.0.0.1:8099, state in .llm-supervisor next to the file."""
    settings_ = parse_config(one_model(), "test", base_dir=tmp_path).supervisor
    assert (settings_.api.host, settings_.api.port) == ("127.0.0.1", 8099)
    assert settings_.state_dir == tmp_path.resolve() / ".llm-supervisor"
    assert settings_.token_env == "LLM_SUPERVISOR_TOKEN"
    assert (settings_.log_max_bytes, settings_.log_backups) == (10 * 1024 * 1024, 5)


def test_supervisor_section_keys(tmp_path: Path) -> None:
    """Every supervisor key is read; an absolute state_dir is kept as written."""
    data = {
        **one_model(),
        "supervisor": {
            "api": {"host": "0.0.0.0", "port": 0},
            "state_dir": str(tmp_path / "s"),
            "token_env": "MY_TOKEN",
            "log_max_bytes": 4096,
            "log_backups": 0,
        },
    }
    settings_ = parse_config(data, "test").supervisor
    assert (settings_.api.host, settings_.api.port) == ("0.0.0.0", 0)
    assert settings_.state_dir == tmp_path / "s"
    assert (settings_.token_env, settings_.log_max_bytes, settings_.log_backups) == ("MY_TOKEN", 4096, 0)


def test_empty_supervisor_section_means_defaults() -> None:
    """A `supervisor:` line with nothing under it (YAML null) is the same as leaving the section out."""
    assert parse_config({**one_model(), "supervisor": None}, "t").supervisor.api.port == 8099


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path: Path) -> None:
    """state_dir and cwd written relative mean relative to the config file, wherever the daemon starts."""
    path = tmp_path / "conf" / "fleet.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"supervisor": {"state_dir": "state"}, **one_model(cwd="work")}))
    config = load_config(path)
    assert config.supervisor.state_dir == (tmp_path / "conf" / "state").resolve()
    assert config.models["m"].cwd == (tmp_path / "conf" / "work").resolve()


def test_home_directory_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`~/...` in state_dir means the user's home, not a directory named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    data = {**one_model(), "supervisor": {"state_dir": "~/sv"}}
    assert parse_config(data, "t").supervisor.state_dir == tmp_path.resolve() / "sv"


def test_model_order_is_kept() -> None:
    """Models come out in the order the file lists them (status listings follow the file)."""
    names = ["zeta", "alpha", "mid"]
    config = parse_config({"llmModels": {name: {"command": "x"} for name in names}}, "t")
    assert list(config.models) == names


def test_empty_model_list_is_valid() -> None:
    """An empty llmModels section is valid (a supervisor with nothing to run yet)."""
    assert parse_config({"llmModels": {}}, "t").models == {}


# --- probe URL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8001"),
        ("http://127.0.0.1:8001/v1/", "http://127.0.0.1:8001"),
        ("http://localhost:8001", "http://localhost:8001"),
        ("http://localhost:8001/", "http://localhost:8001"),
        ("https://gpu-box.internal/qwen/v1", "https://gpu-box.internal/qwen"),
        ("http://host:8001/v10", "http://host:8001/v10"),
        (None, None),
    ],
)
def test_prior_art_1_probes_go_to_the_server_root(base_url: str | None, root: str | None) -> None:
    """A base_url ending in /v1 yields the server root, never /v1, for the probe (docs/design/defects.md #1)."""
    assert model(endpoints={"base_url": base_url}).probe_root_url == root


# --- docker ---------------------------------------------------------------------------------------------------


def test_docker_block_is_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every docker key is read: ports, GPUs, IPC, sizes in bytes, volumes, env, pull, memory limit."""
    monkeypatch.setenv("HOME", str(tmp_path))
    parsed = model(
        runtime="docker",
        docker={
            "image": "vllm/vllm-openai:latest",
            "ports": {"8000/tcp": 8001, "9000": 9001, 7000: 7001},
            "gpus": [0, 1],
            "ipc_mode": "host",
            "shm_size": "8g",
            "mem_limit": "512m",
            "volumes": {"~/.cache/huggingface": "/root/.cache/huggingface", "hf-models": "/models:ro"},
            "env": {"HF_TOKEN_FILE": "/run/secrets/hf", "N": 1},
            "pull": True,
        },
    )
    docker = parsed.docker
    assert docker is not None
    assert docker.image == "vllm/vllm-openai:latest"
    assert dict(docker.ports) == {"8000/tcp": 8001, "9000/tcp": 9001, "7000/tcp": 7001}
    assert (docker.gpus, docker.ipc_mode, docker.pull) == ((0, 1), "host", True)
    assert (docker.shm_size, docker.mem_limit) == (8 * 1024**3, 512 * 1024**2)
    assert dict(docker.volumes) == {
        str(tmp_path / ".cache/huggingface"): "/root/.cache/huggingface",
        "hf-models": "/models:ro",
    }
    assert dict(docker.env) == {"HF_TOKEN_FILE": "/run/secrets/hf", "N": "1"}


def test_docker_block_defaults() -> None:
    """A docker block with only an image: no ports, no GPUs, nothing pulled, no limits."""
    docker = model(runtime="docker", docker={"image": "img"}).docker
    assert docker is not None
    assert (dict(docker.ports), docker.gpus, docker.ipc_mode, docker.shm_size) == ({}, None, None, None)
    assert (dict(docker.volumes), dict(docker.env), docker.pull, docker.mem_limit) == ({}, {}, False, None)


@pytest.mark.parametrize(("gpus", "expected"), [("all", "all"), ([], ()), ([3], (3,)), (None, None)])
def test_docker_gpus_forms(gpus: object, expected: object) -> None:
    """gpus is "all", a list of indices, or null."""
    docker = model(runtime="docker", docker={"image": "i", "gpus": gpus}).docker
    assert docker is not None
    assert docker.gpus == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1024, 1024), ("100", 100), ("2k", 2048), ("1GB", 1024**3), ("3 m", 3 * 1024**2), ("1t", 1024**4), ("5b", 5)],
)
def test_docker_sizes(size: object, expected: int) -> None:
    """Sizes are bytes, or a number with Docker's b/k/m/g/t suffix."""
    docker = model(runtime="docker", docker={"image": "i", "shm_size": size}).docker
    assert docker is not None
    assert docker.shm_size == expected


# --- FluidMCP ---------------------------------------------------------------------------------------------------


def test_fluidmcp_example_loads_unchanged() -> None:
    """The FluidMCP error-recovery example (examples/fluidmcp.json, verbatim) loads with its values."""
    config = load_config(REPO / "examples" / "fluidmcp.json")
    vllm = config.models["vllm"]
    assert (vllm.command, vllm.args) == ("vllm", ("serve", "facebook/opt-125m", "--port", "8001"))
    assert (vllm.restart_policy, vllm.max_restarts, vllm.restart_delay) == ("on-failure", 3, 5.0)
    assert vllm.probe_root_url == "http://localhost:8001"


def test_fluidmcp_large_model_example_loads() -> None:
    """FluidMCP's large-model example, with float timeouts, loads unchanged."""
    data = json.loads("""{"llmModels": {"llama-70b": {"command": "vllm",
        "args": ["serve", "meta-llama/Llama-2-70b-hf", "--port", "8002"],
        "endpoints": {"base_url": "http://localhost:8002/v1"}, "restart_policy": "on-failure",
        "max_restarts": 3, "health_check_timeout": 30.0, "health_check_interval": 60}}}""")
    parsed = parse_config(data, "t").models["llama-70b"]
    assert (parsed.health_check_timeout, parsed.health_check_interval) == (30.0, 60.0)


@pytest.mark.parametrize("section", sorted(FLUIDMCP_SECTIONS))
def test_fluidmcp_sections_are_accepted_and_ignored(section: str) -> None:
    """FluidMCP's other top-level sections (mcpServers, ...) do not stop its file from loading."""
    config = parse_config({section: {"anything": {"command": "npx"}}, **one_model()}, "t")
    assert list(config.models) == ["m"]


# --- bad values: each names its path and says what is wrong ------------------------------------------------

BAD_MODEL_VALUES = [
    (
        {"max_memory": "8 gigs"},
        'llmModels.m.max_memory: must be a size like "8g" or "512m", or a number of bytes (got \'8 gigs\')',
    ),
    (
        {"max_gpu_memory": 0},
        'llmModels.m.max_gpu_memory: must be a size like "8g" or "512m", or a number of bytes (got 0)',
    ),
    ({"memory_check_interval": 0}, "llmModels.m.memory_check_interval: must be > 0 (got 0)"),
    ({"restart_polcy": "always"}, "llmModels.m.restart_polcy: unknown key (did you mean restart_policy?)"),
    ({"zzz": 1}, "llmModels.m.zzz: unknown key"),
    ({"backoff_multiplier": 0.5}, "llmModels.m.backoff_multiplier: must be >= 1 (got 0.5)"),
    (
        {"restart_policy": "sometimes"},
        "llmModels.m.restart_policy: must be one of 'no', 'on-failure', 'always' or 'unless-stopped' (got 'sometimes')",
    ),
    ({"runtime": "k8s"}, "llmModels.m.runtime: must be one of 'process' or 'docker' (got 'k8s')"),
    ({"type": "replicate"}, "llmModels.m.type: must be 'vllm' (got 'replicate')"),
    ({"max_restarts": -1}, "llmModels.m.max_restarts: must be >= 0 (got -1)"),
    ({"max_restarts": 2.5}, "llmModels.m.max_restarts: must be a whole number (got 2.5)"),
    ({"max_restarts": True}, "llmModels.m.max_restarts: must be a whole number (got true)"),
    ({"restart_window": 0}, "llmModels.m.restart_window: must be > 0 (got 0)"),
    ({"restart_delay": -1}, "llmModels.m.restart_delay: must be >= 0 (got -1)"),
    ({"backoff_max": -0.5}, "llmModels.m.backoff_max: must be >= 0 (got -0.5)"),
    ({"backoff_jitter": 1}, "llmModels.m.backoff_jitter: must be < 1 (got 1)"),
    ({"backoff_jitter": -0.1}, "llmModels.m.backoff_jitter: must be >= 0 (got -0.1)"),
    ({"backoff_reset_after": 0}, "llmModels.m.backoff_reset_after: must be > 0 (got 0)"),
    ({"health_check_interval": "10"}, "llmModels.m.health_check_interval: must be a number (got '10')"),
    ({"health_check_interval": 0}, "llmModels.m.health_check_interval: must be > 0 (got 0)"),
    ({"health_check_timeout": float("inf")}, "llmModels.m.health_check_timeout: must be a finite number (got inf)"),
    ({"health_failure_threshold": 0}, "llmModels.m.health_failure_threshold: must be >= 1 (got 0)"),
    ({"startup_timeout": -5}, "llmModels.m.startup_timeout: must be > 0 (got -5)"),
    ({"startup_probe_interval": 0}, "llmModels.m.startup_probe_interval: must be > 0 (got 0)"),
    ({"stop_timeout": -1}, "llmModels.m.stop_timeout: must be >= 0 (got -1)"),
    ({"shutdown_timeout": -1}, "llmModels.m.stop_timeout: must be >= 0 (got -1)"),
    (
        {"stop_timeout": 5, "shutdown_timeout": 5},
        "llmModels.m.shutdown_timeout: given together with stop_timeout, of which it is an alias: keep one",
    ),
    ({"success_exit_codes": [0, 256]}, "llmModels.m.success_exit_codes[1]: must be <= 255 (got 256)"),
    ({"success_exit_codes": 0}, "llmModels.m.success_exit_codes: must be a list (got 0)"),
    ({"command": ""}, "llmModels.m.command: must not be empty"),
    ({"command": ["vllm", "serve"]}, "llmModels.m.command: must be a string (got ['vllm', 'serve'])"),
    ({"args": "serve model"}, "llmModels.m.args: must be a list (got 'serve model')"),
    (
        {"args": ["--trust-remote-code", True]},
        "llmModels.m.args[1]: must be a string: YAML read this as true/false, so quote it",
    ),
    ({"args": [{"a": 1}]}, "llmModels.m.args[0]: must be a string (got {'a': 1})"),
    ({"env": "A=1"}, "llmModels.m.env: must be a mapping (got 'A=1')"),
    ({"env": {"A=B": "x"}}, "llmModels.m.env[\"A=B\"]: 'A=B' is not a valid environment variable name"),
    ({"env": {"": "x"}}, "llmModels.m.env[\"\"]: '' is not a valid environment variable name"),
    ({"cwd": 5}, "llmModels.m.cwd: must be a path (a string) (got 5)"),
    (
        {"endpoints": {"base_url": "localhost:8001"}},
        "llmModels.m.endpoints.base_url: must be an http(s) URL like http://127.0.0.1:8001/v1 (got 'localhost:8001')",
    ),
    ({"endpoints": {"base_ur": "http://x"}}, "llmModels.m.endpoints.base_ur: unknown key (did you mean base_url?)"),
    ({"endpoints": "http://x"}, "llmModels.m.endpoints: must be a mapping (got 'http://x')"),
    ({"docker": {"image": "i"}}, "llmModels.m.docker: a docker: block needs runtime: docker"),
    ({"runtime": "docker"}, "llmModels.m.docker: runtime: docker needs a docker: block with at least an image"),
    ({"runtime": "docker", "docker": {}}, "llmModels.m.docker.image: required key is missing"),
    (
        {"runtime": "docker", "docker": {"image": "i"}, "cwd": "/x"},
        "llmModels.m.cwd: cwd applies to runtime: process only",
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "imag": "i"}},
        "llmModels.m.docker.imag: unknown key (did you mean image?)",
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "ports": {"80x": 1}}},
        'llmModels.m.docker.ports.80x: container port must look like "8000/tcp" or "8000" (got \'80x\')',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "ports": {"70000": 1}}},
        'llmModels.m.docker.ports.70000: container port must look like "8000/tcp" or "8000" (got \'70000\')',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "ports": {"8000/tcp": 0}}},
        'llmModels.m.docker.ports["8000/tcp"]: must be >= 1 (got 0)',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "gpus": [0, -1]}},
        'llmModels.m.docker.gpus: must be "all", a list of GPU indices like [0, 1], or null (got [0, -1])',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "gpus": "some"}},
        "llmModels.m.docker.gpus: must be \"all\", a list of GPU indices like [0, 1], or null (got 'some')",
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "shm_size": "8q"}},
        'llmModels.m.docker.shm_size: must be a size like "8g" or "512m", or a number of bytes (got \'8q\')',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "mem_limit": 0}},
        'llmModels.m.docker.mem_limit: must be a size like "8g" or "512m", or a number of bytes (got 0)',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "mem_limit": "0m"}},
        'llmModels.m.docker.mem_limit: must be a size like "8g" or "512m", or a number of bytes (got \'0m\')',
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "volumes": {"./models": "/models"}}},
        "llmModels.m.docker.volumes[\"./models\"]: host path './models' must be absolute (or ~/..., or a named "
        "volume without '/')",
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "volumes": {"/data": "models"}}},
        'llmModels.m.docker.volumes["/data"]: must be an absolute container path, optionally ending in ":ro" '
        "(got 'models')",
    ),
    (
        {"runtime": "docker", "docker": {"image": "i", "pull": "yes"}},
        "llmModels.m.docker.pull: must be true or false (got 'yes')",
    ),
    ({"adapt": "yes"}, "llmModels.m.adapt: must be true or false (got 'yes')"),
    ({"adapt_min_max_model_len": 0}, "llmModels.m.adapt_min_max_model_len: must be >= 1 (got 0)"),
    (
        {"adapt_min_gpu_memory_utilization": 1.5},
        "llmModels.m.adapt_min_gpu_memory_utilization: must be <= 1 (got 1.5)",
    ),
]


@pytest.mark.parametrize(("keys", "message"), BAD_MODEL_VALUES)
def test_bad_model_value_names_its_path_and_the_fix(keys: dict[str, Any], message: str) -> None:
    """A bad value is reported as 'key.path: what is wrong (got the value)'."""
    assert problems_of(one_model(**keys)) == [message]


BAD_DOCUMENTS = [
    ([1, 2], "(top level): must be a mapping with an llmModels section (got [1, 2])"),
    ({}, "llmModels: required: a mapping of model id -> model settings"),
    ({"llmModels": ["a"]}, "llmModels: required: a mapping of model id -> model settings (got ['a'])"),
    ({"llmModels": {"m": None}}, "llmModels.m: must be a mapping (got null)"),
    ({"llmModels": {"m": {}}}, "llmModels.m.command: required key is missing"),
    ({"llmModel": {}, "llmModels": {}}, "llmModel: unknown key (did you mean llmModels?)"),
    ({"supervisor": {"api": {"port": 70000}}, "llmModels": {}}, "supervisor.api.port: must be <= 65535 (got 70000)"),
    ({"supervisor": {"api": {"host": ""}}, "llmModels": {}}, "supervisor.api.host: must not be empty"),
    (
        {"supervisor": {"token_env": "MY TOKEN"}, "llmModels": {}},
        "supervisor.token_env: must match ^[A-Za-z_][A-Za-z0-9_]*$ (got 'MY TOKEN')",
    ),
    ({"supervisor": {"log_max_bytes": 10}, "llmModels": {}}, "supervisor.log_max_bytes: must be >= 1024 (got 10)"),
    ({"supervisor": {"log_backups": -1}, "llmModels": {}}, "supervisor.log_backups: must be >= 0 (got -1)"),
    ({"supervisor": {"stat_dir": "x"}, "llmModels": {}}, "supervisor.stat_dir: unknown key (did you mean state_dir?)"),
    ({"supervisor": [], "llmModels": {}}, "supervisor: must be a mapping (got [])"),
    (
        {"llmModels": {"bad id!": {"command": "x"}}},
        'llmModels["bad id!"]: a model id must be 1-64 characters of A-Z a-z 0-9 . _ -',
    ),
    (
        {"llmModels": {"x" * 65: {"command": "x"}}},
        f"llmModels.{'x' * 65}: a model id must be 1-64 characters of A-Z a-z 0-9 . _ -",
    ),
    ({"llmModels": {7: {"command": "x"}}}, "llmModels[7]: a model id must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    (
        {
            "llmModels": {
                "a": {"command": "x", "endpoints": {"base_url": "http://127.0.0.1:8001/v1"}},
                "b": {"command": "x", "endpoints": {"base_url": "http://127.0.0.1:8001"}},
            }
        },
        "llmModels.b.endpoints.base_url: the same server as llmModels.a (http://127.0.0.1:8001); "
        "each model needs its own port",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_DOCUMENTS)
def test_bad_document_names_its_path(data: object, message: str) -> None:
    """Problems outside one model's keys name their path too."""
    assert problems_of(data) == [message]


def test_every_problem_is_reported_together() -> None:
    """One pass reports every problem, across models and sections, not just the first."""
    data = {
        "supervisor": {"api": {"port": -1}},
        "extra": 1,
        "llmModels": {
            "qwen": {"command": "vllm", "restart_polcy": "always", "backoff_multiplier": 0.5, "max_restarts": -2},
            "ok": {"command": "vllm"},
            "other": {"runtime": "docker"},
        },
    }
    assert problems_of(data) == [
        "extra: unknown key",
        "supervisor.api.port: must be >= 0 (got -1)",
        "llmModels.qwen.max_restarts: must be >= 0 (got -2)",
        "llmModels.qwen.backoff_multiplier: must be >= 1 (got 0.5)",
        "llmModels.qwen.restart_polcy: unknown key (did you mean restart_policy?)",
        "llmModels.other.command: required key is missing",
        "llmModels.other.docker: runtime: docker needs a docker: block with at least an image",
    ]


def test_long_values_are_shortened_in_messages() -> None:
    """A huge bad value does not flood the report: long text is cut, long lists are named."""
    long_text, long_list = "x" * 200, list(range(100))
    assert problems_of(one_model(restart_policy=long_text)) == [
        f"llmModels.m.restart_policy: must be one of 'no', 'on-failure', 'always' or 'unless-stopped' "
        f"(got '{'x' * 56}...)"
    ]
    assert problems_of(one_model(command=long_list)) == ["llmModels.m.command: must be a string (got a list)"]
    assert problems_of(one_model(command={str(i): i for i in range(30)})) == [
        "llmModels.m.command: must be a string (got a mapping)"
    ]


def test_config_error_reads_as_a_report() -> None:
    """str(ConfigError) names the file and lists one problem per line."""
    error = ConfigError(["a: unknown key", "b: must be > 0 (got 0)"], "fleet.yaml")
    assert str(error) == "fleet.yaml: 2 problems:\n  a: unknown key\n  b: must be > 0 (got 0)"
    assert str(ConfigError(["a: x"], "f.json")) == "f.json: 1 problem:\n  a: x"


# --- frozen values -----------------------------------------------------------------------------------------------


def test_model_config_is_frozen_and_hashable() -> None:
    """A ModelConfig cannot be changed after parsing and can key a dict or sit in a set."""
    first = model(env={"A": "1"}, args=["x"])
    second = model(env={"A": "1"}, args=["x"])
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    with pytest.raises(ValidationError):
        first.restart_delay = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.env["A"] = "2"  # type: ignore[index]


def test_frozen_map_behaves_as_a_read_only_mapping() -> None:
    """FrozenMap equals the dict it holds, hashes by content and shows its content."""
    frozen = FrozenMap({"a": 1, "b": 2})
    assert frozen == {"a": 1, "b": 2}
    assert hash(frozen) == hash(FrozenMap({"b": 2, "a": 1}))
    assert (len(frozen), list(frozen), frozen["b"]) == (2, ["a", "b"], 2)
    assert repr(frozen) == "FrozenMap({'a': 1, 'b': 2})"
    assert FrozenMap() == {}


# --- files -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".YAML"])
def test_yaml_and_json_files_load(tmp_path: Path, suffix: str) -> None:
    """A config file loads by its suffix: YAML for .yaml/.yml, JSON for .json."""
    path = tmp_path / f"fleet{suffix}"
    path.write_text(json.dumps(one_model(restart_delay=0)))  # JSON is also YAML
    assert load_config(path).models["m"].restart_delay == 0.0


def load_problems(tmp_path: Path, name: str, text: str) -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    return caught.value.problems


@pytest.mark.parametrize(
    ("name", "text", "problems"),
    [
        (
            "f.yaml",
            "llmModels:\n  m:\n    command: vllm\n    args: [serve\n",
            [
                "line 5, column 1: YAML syntax error: while parsing a flow sequence, expected ',' or ']', but got "
                "'<stream end>'"
            ],
        ),
        (
            "f.yaml",
            "llmModels:\n  m: {command: x}\n\tbad: 1\n",
            [
                "line 3, column 1: YAML syntax error: while scanning for the next token, found character '\\t' that "
                "cannot start any token"
            ],
        ),
        (
            "f.yaml",
            "a: 1\n---\nb: 2\n",
            [
                "line 2, column 1: YAML syntax error: expected a single document in the stream, "
                "but found another document"
            ],
        ),
        ("f.yaml", "llmModels: {m: {command: x}}\nx: \x07\n", ["line 2: character #x0007 is not allowed in YAML"]),
        ("f.yaml", "", ["(top level): must be a mapping with an llmModels section (got null)"]),
        (
            "f.json",
            '{"llmModels": {"m": {"command": "x",}}}',
            ["line 1, column 37: JSON syntax error: Expecting property name enclosed in double quotes"],
        ),
        ("f.toml", "x = 1", ["unsupported file type '.toml': use .yaml, .yml or .json"]),
        ("fleet", "x", ["unsupported file type '(none)': use .yaml, .yml or .json"]),
    ],
)
def test_unreadable_files_are_reported_with_their_line(
    tmp_path: Path, name: str, text: str, problems: list[str]
) -> None:
    """Syntax errors name the line and column; unsupported files say which suffixes work."""
    assert load_problems(tmp_path, name, text) == problems


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError saying so, not a traceback."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert caught.value.problems[0].startswith("cannot read the file: [Errno 2] No such file or directory")


def test_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is reported, not a crash."""
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("cannot read the file: 'utf-8' codec can't decode")


def test_duplicate_yaml_key_is_reported_with_other_problems(tmp_path: Path) -> None:
    """A model written twice is an error (YAML would silently keep the last), reported with the rest."""
    text = "llmModels:\n  m:\n    command: a\n  m:\n    command: b\n    restart_delay: -1\n"
    assert load_problems(tmp_path, "f.yaml", text) == [
        "line 4: duplicate key 'm': the later value would silently win",
        "llmModels.m.restart_delay: must be >= 0 (got -1)",
    ]


def test_duplicate_key_alone_is_still_an_error(tmp_path: Path) -> None:
    """Duplicates fail the load even when the surviving values are all valid."""
    text = '{"llmModels": {"m": {"command": "a", "command": "b"}}}'
    assert load_problems(tmp_path, "f.json", text) == ["duplicate key 'command': the later value would silently win"]


def test_yaml_merge_keys_share_settings_without_duplicate_errors(tmp_path: Path) -> None:
    """YAML anchors and `<<:` merges share timings between models; an explicit key overrides the merged one."""
    path = tmp_path / "f.yaml"
    path.write_text(
        "llmModels:\n"
        "  a: &m {command: x, restart_delay: 1, stop_timeout: 3}\n"
        "  b: {<<: *m, command: y, restart_delay: 2}\n"
    )
    config = load_config(path)
    assert (config.models["a"].restart_delay, config.models["b"].restart_delay) == (1.0, 2.0)
    assert (config.models["b"].command, config.models["b"].stop_timeout) == ("y", 3.0)


@pytest.mark.parametrize("name", ["fake-fleet.yaml", "vllm-gpu.yaml", "fluidmcp.json"])
def test_bundled_examples_are_valid(name: str) -> None:
    """Every example config in examples/ loads without a problem."""
    assert load_config(REPO / "examples" / name).models


def test_fake_fleet_example_runs_without_a_gpu() -> None:
    """The `make run` fleet is fake vLLM servers on distinct ports, restarted on failure."""
    config = load_config(REPO / "examples" / "fake-fleet.yaml")
    assert len(config.models) >= 2
    assert {m.command for m in config.models.values()} == {"fake-vllm"}
    assert {m.restart_policy for m in config.models.values()} == {"on-failure"}
    assert any("--engine-children" in m.args for m in config.models.values())
    assert config.supervisor.state_dir == (REPO / "examples" / ".llm-supervisor").resolve()


# --- round trip --------------------------------------------------------------------------------------------------

positive = st.floats(min_value=0.001, max_value=1e6, allow_nan=False) | st.integers(1, 10**6)
non_negative = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.integers(0, 10**6)
text = st.text(st.characters(codec="utf-8"), max_size=12)
model_keys = st.fixed_dictionaries(
    {"command": text.filter(bool)},
    optional={
        "type": st.sampled_from(["vllm", None]),
        "args": st.lists(text | st.integers(-10, 10**6), max_size=5),
        "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), text, max_size=3),
        "cwd": st.sampled_from(["/srv", "models", None]),
        "restart_policy": st.sampled_from(["no", "on-failure", "always", "unless-stopped"]),
        "max_restarts": st.none() | st.integers(0, 100),
        "restart_window": st.none() | positive,
        "restart_delay": non_negative,
        "backoff_multiplier": st.floats(min_value=1, max_value=10),
        "backoff_max": non_negative,
        "backoff_jitter": st.floats(min_value=0, max_value=0.99),
        "backoff_reset_after": positive,
        "health_check_interval": positive,
        "health_check_timeout": positive,
        "health_failure_threshold": st.integers(1, 10),
        "startup_timeout": positive,
        "startup_probe_interval": positive,
        "shutdown_timeout": non_negative,
        "success_exit_codes": st.lists(st.integers(0, 255), max_size=3),
    },
)
docker_keys = st.fixed_dictionaries(
    {"image": text.filter(bool)},
    optional={
        "ports": st.dictionaries(st.integers(1, 65535).map(lambda p: f"{p}/tcp"), st.integers(1, 65535), max_size=2),
        "gpus": st.sampled_from(["all", [0], [0, 1], None]),
        "ipc_mode": st.sampled_from(["host", None]),
        "shm_size": st.sampled_from(["8g", 1024, None]),
        "mem_limit": st.sampled_from(["512m", 10**9, None]),
        "volumes": st.sampled_from([{}, {"/data": "/data:ro"}, {"hf": "/root/.cache"}]),
        "env": st.dictionaries(st.from_regex(r"[A-Z]{1,4}", fullmatch=True), text, max_size=2),
        "pull": st.booleans(),
    },
)
model_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Valid config data: a few models, some with a probe URL, some in Docker."""
    models = {}
    for index, model_id in enumerate(draw(st.lists(model_ids, max_size=4, unique=True))):
        keys: dict[str, Any] = draw(model_keys)
        if draw(st.booleans()):
            keys["endpoints"] = {"base_url": f"http://127.0.0.1:{8000 + index}/v1"}
        if draw(st.booleans()):
            keys.pop("cwd", None)
            keys["runtime"], keys["docker"] = "docker", draw(docker_keys)
        models[model_id] = keys
    supervisor = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "api": st.fixed_dictionaries(
                    {}, optional={"host": st.sampled_from(["127.0.0.1", "::1"]), "port": st.integers(0, 65535)}
                ),
                "state_dir": st.sampled_from(["state", "/var/lib/llm-supervisor"]),
                "token_env": st.sampled_from(["TOKEN", "LLM_SUPERVISOR_TOKEN"]),
                "log_max_bytes": st.integers(1024, 10**9),
                "log_backups": st.integers(0, 20),
            },
        )
    )
    return {"supervisor": supervisor, "llmModels": models}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_valid_configs_round_trip(data: dict[str, Any]) -> None:
    """Any valid config parses, and its JSON form (to_data) parses back to an equal Config."""
    config = parse_config(data, "generated")
    again = parse_config(json.loads(json.dumps(config.to_data())), "round-trip")
    assert again == config
    assert isinstance(again, Config)
    for model_id, keys in data["llmModels"].items():
        parsed = config.models[model_id]
        assert parsed.restart_policy == keys.get("restart_policy", "on-failure")
        assert parsed.stop_timeout == keys.get("shutdown_timeout", 30.0)
        assert parsed.args == tuple(str(arg) for arg in keys.get("args", []))
