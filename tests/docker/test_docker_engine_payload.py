"""The Engine API request the Docker runtime sends, checked against a recording fake engine: no daemon, no GPU."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import docker
import pytest

from supervisor.config.schema import load_config, parse_config
from supervisor.loop.container_spec import spec_from_model_config
from supervisor.runtime.docker import (
    DockerRuntime,
    DockerUnavailable,
    connect,
    create_container,
)
from supervisor.runtime.docker_spec import MODEL_LABEL, RUN_LABEL, ContainerSpec, create_args, device_requests


class RecordingEngine(BaseHTTPRequestHandler):
    """Answers POST /containers/create like dockerd and remembers what was sent."""

    requests: list[tuple[str, dict[str, list[str]], Any]] = []

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
        self.requests.append((url.path, parse_qs(url.query), body))
        reply = json.dumps({"Id": "0123456789ab" * 5 + "0123", "Warnings": []}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def engine() -> Iterator[tuple[Any, list[tuple[str, dict[str, list[str]], Any]]]]:
    """A Docker client talking to the recording engine, and the list of requests it recorded."""
    RecordingEngine.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{server.server_address[1]}", version="1.41")
    yield client, RecordingEngine.requests
    client.close()
    server.shutdown()
    server.server_close()
    thread.join()


def sent_create(engine: tuple[Any, list[Any]], spec: ContainerSpec) -> tuple[dict[str, list[str]], Any]:
    client, requests = engine
    create_container(client, create_args(spec, "qwen", 4))
    [(path, query, body)] = requests
    assert path.endswith("/containers/create")
    return query, body


@pytest.mark.parametrize(
    ("gpus", "device_requests"),
    [
        ("all", [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]),
        ([0, 1], [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"], "Capabilities": [["gpu"]], "Options": {}}]),
        (None, None),
    ],
)
def test_gpu_request_matches_what_docker_run_gpus_sends(
    engine: tuple[Any, list[Any]], gpus: Any, device_requests: Any
) -> None:
    """gpus: all -> Count -1; gpus: [0, 1] -> DeviceIDs; both with the "gpu" capability, as `--gpus` sends."""
    _, body = sent_create(engine, ContainerSpec(image="vllm/vllm-openai:latest", gpus=gpus))
    assert body["HostConfig"].get("DeviceRequests") == device_requests


def test_create_payload_carries_every_setting(engine: tuple[Any, list[Any]]) -> None:
    """Image, entrypoint, command, env, labels, 127.0.0.1 ports, ipc, shm, volumes, memory and stop timeout."""
    spec = ContainerSpec(
        image="vllm/vllm-openai:v0.9.0",
        entrypoint=["vllm"],
        command=["serve", "Qwen/Qwen2.5-0.5B-Instruct", "--port", "8000"],
        env={"HF_HOME": "/data/hf"},
        ports={"8000/tcp": 8001},
        gpus="all",
        ipc_mode="host",
        shm_size=16 * 1024**3,
        volumes={"/srv/hf": "/root/.cache/huggingface:ro"},
        mem_limit=64 * 1024**3,
        stop_timeout=12.5,
    )
    query, body = sent_create(engine, spec)
    assert query["name"][0].startswith("llm-supervisor-qwen-4-")
    assert body["Image"] == "vllm/vllm-openai:v0.9.0"
    assert body["Entrypoint"] == ["vllm"]
    assert body["Cmd"] == ["serve", "Qwen/Qwen2.5-0.5B-Instruct", "--port", "8000"]
    assert body["Env"] == ["HF_HOME=/data/hf"]
    assert body["Labels"] == {MODEL_LABEL: "qwen", RUN_LABEL: "4"}
    assert body["ExposedPorts"] == {"8000/tcp": {}}
    assert body["StopTimeout"] == 13  # whole seconds, rounded up: never shorter than configured
    host = body["HostConfig"]
    assert host["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8001"}]}
    assert host["IpcMode"] == "host"
    assert host["ShmSize"] == 16 * 1024**3
    assert host["Binds"] == ["/srv/hf:/root/.cache/huggingface:ro"]
    assert (host["Memory"], host["MemorySwap"]) == (64 * 1024**3, 64 * 1024**3)
    assert host["RestartPolicy"] == {"Name": "no"}


def test_model_config_becomes_the_container_spec() -> None:
    """command becomes the entrypoint, args the command; model env and docker env are merged, docker's winning."""
    config = parse_config(
        {
            "llmModels": {
                "qwen": {
                    "command": "vllm",
                    "args": ["serve", "Qwen/Qwen2.5-0.5B-Instruct"],
                    "env": {"HF_HOME": "/data/hf", "A": "model"},
                    "runtime": "docker",
                    "stop_timeout": 7,
                    "docker": {
                        "image": "vllm/vllm-openai:latest",
                        "ports": {"8000/tcp": 8001},
                        "gpus": [1],
                        "ipc_mode": "host",
                        "shm_size": "2g",
                        "volumes": {"/srv/hf": "/root/.cache/huggingface"},
                        "env": {"A": "docker"},
                        "pull": True,
                        "mem_limit": "8g",
                    },
                }
            }
        }
    )
    spec = spec_from_model_config(config.models["qwen"])
    assert spec == ContainerSpec(
        image="vllm/vllm-openai:latest",
        entrypoint=["vllm"],
        command=["serve", "Qwen/Qwen2.5-0.5B-Instruct"],
        env={"HF_HOME": "/data/hf", "A": "docker"},
        ports={"8000/tcp": 8001},
        gpus=(1,),
        ipc_mode="host",
        shm_size=2 * 1024**3,
        volumes={"/srv/hf": "/root/.cache/huggingface"},
        mem_limit=8 * 1024**3,
        stop_timeout=7.0,
        pull=True,
    )


def _no_daemon() -> Any:
    # A TCP port nobody listens on (a missing unix socket would do too, but the SDK leaks its socket object).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", timeout=5)


def test_unreachable_daemon_is_a_clear_error() -> None:
    """No daemon at the address: DockerUnavailable names the address and what to check."""
    with pytest.raises(DockerUnavailable, match=r"Docker daemon unreachable at .*is dockerd running"):
        connect(_no_daemon)


async def test_spawn_without_a_daemon_raises_docker_unavailable() -> None:
    """spawn() turns an unreachable daemon into DockerUnavailable, a SpawnError the supervisor reports."""
    runtime = DockerRuntime(ContainerSpec(image="llm-supervisor/fake-vllm:latest"), _no_daemon)
    with pytest.raises(DockerUnavailable):
        await runtime.spawn("qwen", 1, lambda stream, line: None)


def test_gpu_example_config_asks_for_the_gpus_it_names() -> None:
    """examples/vllm-docker-gpu.yaml loads, and each model requests its own GPUs with the host's IPC namespace."""
    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "vllm-docker-gpu.yaml")
    specs = {model_id: spec_from_model_config(cfg) for model_id, cfg in config.models.items()}
    requested = {model_id: [dict(r) for r in device_requests(spec.gpus)] for model_id, spec in specs.items()}
    assert [r["DeviceIDs"] for r in requested["qwen-7b"]] == [["0"]]
    assert [r["DeviceIDs"] for r in requested["qwen-tp2"]] == [["1", "2"]]
    assert {spec.ipc_mode for spec in specs.values()} == {"host"}
    assert all(spec.entrypoint == ["vllm"] and spec.command[0] == "serve" for spec in specs.values())
