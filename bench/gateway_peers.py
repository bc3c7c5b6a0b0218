"""The processes under test in bench_gateway.py: the supervisor daemon running one fake-vllm model behind its
gateway, and nginx proxying the same server; waiting until they answer, and stopping them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway_load import MODEL, raw_latency

ROOT = Path(__file__).resolve().parent.parent
FAKE_VLLM = str(Path(sys.executable).with_name("fake-vllm"))
Process = subprocess.Popen[bytes] | subprocess.Popen[str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_daemon(
    tmp: Path, server_port: int, profile: str | None, progress_timeout: float | None
) -> tuple[subprocess.Popen[str], int]:
    """The real supervisor daemon running one fake-vllm model behind its gateway; returns the gateway port."""
    config = {
        "supervisor": {
            "state_dir": str(tmp / "state"),
            "api": {"host": "127.0.0.1", "port": 0},
            "gateway": {"host": "127.0.0.1", "port": 0},
        },
        "llmModels": {
            MODEL: {
                "command": FAKE_VLLM,
                "args": [
                    *("serve", MODEL, "--port", str(server_port), "--ttft", "0", "--itl", "0"),
                    *("--max-num-seqs", "1024", "--disable-uvicorn-access-log"),
                ],
                "endpoints": {"base_url": f"http://127.0.0.1:{server_port}/v1"},
                "startup_probe_interval": 0.1,
                "stop_timeout": 5,
                "progress_timeout": progress_timeout,
            }
        },
    }
    path = tmp / "supervisor.json"
    path.write_text(json.dumps(config))
    run = ["run", "-c", str(path), "--port", "0"]
    if profile is None:
        command = [sys.executable, "-m", "supervisor.cli.main", *run]
    else:
        code = (
            "import cProfile, sys, time\nfrom supervisor.cli.main import main\n"
            "profiler = cProfile.Profile(time.process_time)\nprofiler.enable()\n"
            "try:\n    code = main(sys.argv[2:])\nfinally:\n    profiler.disable()\n"
            "    profiler.dump_stats(sys.argv[1])\nsys.exit(code)\n"
        )
        command = [sys.executable, "-c", code, os.path.abspath(profile), *run]
    out = tmp / "daemon.out"
    with open(out, "w") as stdout, open(tmp / "daemon.err", "w") as stderr:
        daemon = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
    try:
        return daemon, gateway_port(daemon, tmp, out)
    except BaseException:
        stop(daemon)
        raise


def gateway_port(daemon: Process, tmp: Path, out: Path) -> int:
    """The port the daemon says its gateway listens on."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited: {(tmp / 'daemon.err').read_text()[-2000:]}")
        for line in out.read_text().splitlines():
            if "gateway at http://" in line:
                return int(line.rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.05)
    raise RuntimeError("the daemon did not start its gateway within 30 s")


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    upstream fake_vllm {{
        server 127.0.0.1:{server_port};
        keepalive 32;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake_vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(tmp: Path, server_port: int) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        raise FileNotFoundError("nginx is not installed (apt-get install -y nginx-light)")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, server_port=server_port, port=port))
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_answering(port, 10, process)
    except BaseException:
        stop(process, signal.SIGQUIT, 10)
        raise
    return process, port


def wait_answering(port: int, timeout: float, process: Process) -> None:
    """Until a completion through `port` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            raw_latency(port, 1, 0)
        except (OSError, RuntimeError, ValueError):
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g} s")


def stop(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM, grace: float = 30
) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
