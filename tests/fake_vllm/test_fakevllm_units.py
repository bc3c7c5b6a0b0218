"""In-process checks of fake-vllm's parsing, text, metrics and fake-GPU rules."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import fake_vllm
from fake_vllm import cli, engine, faults, openai_api, tracebacks, vllm_log
from fake_vllm.gpu import FakeGpu, process_create_time
from fake_vllm.metrics import Metrics


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"crash_after": 0}, {"crash_after": 0.0}),
        ({"crash_after": "1.5"}, {"crash_after": 1.5}),
        ({"crash_after": None, "hang_after": None}, {"crash_after": None, "hang_after": None}),
        ({"exit_signal": "kill"}, {"exit_signal": "SIGKILL"}),
        ({"exit_signal": 11}, {"exit_signal": "SIGSEGV"}),
        ({"oom": "after:2"}, {"oom": "after:2.0"}),
        ({"health_flap": 1}, {"health_flap": 1.0}),
        ({"crash_after_requests": 3}, {"crash_after_requests": 3}),
        ({"ignore_sigterm": True, "seed": 9}, {"ignore_sigterm": True, "seed": 9}),
        ({}, {}),
    ],
)
def test_parse_update_accepts_and_normalises(body: dict[str, object], expected: dict[str, object]) -> None:
    """Valid /admin/faults bodies come out typed and normalised."""
    assert faults.parse_update(body) == expected


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"hang_after": True}, "hang_after"),
        ({"itl": float("nan")}, "itl"),
        ({"exit_code": -1}, "exit_code"),
        ({"health_flap": None}, "health_flap"),
        ({"nope": 1}, "nope"),
        ({"exit_signal": "SIGWINCH"}, "exit_signal"),
    ],
)
def test_parse_update_rejects_with_the_key(body: dict[str, object], key: str) -> None:
    """Each bad value raises FaultValueError naming its key."""
    with pytest.raises(faults.FaultValueError) as caught:
        faults.parse_update(body)
    assert caught.value.key == key


def test_runtime_keys_match_the_faults_dataclass() -> None:
    """Every runtime-settable key is a field of Faults, and the reverse."""
    assert set(faults.PARSERS) == set(faults.Faults().as_dict())


def test_cli_maps_vllm_flags_and_faults() -> None:
    """The command line fills Settings: served names, human lengths, --model, ignored flags, oom startup."""
    settings = cli.parse_settings(
        [
            "serve",
            "--model",
            "org/m",
            "--served-model-name",
            "a",
            "--max-model-len",
            "4K",
            "--dtype",
            "half",
            "--oom",
            "startup",
            "--port",
            "9",
        ]
    )
    assert settings.model == "org/m"
    assert settings.model_name == "a"
    assert settings.max_model_len == 4096
    assert settings.port == 9
    assert settings.oom_at_startup
    assert settings.faults.oom is None


def test_cli_defaults_match_vllm() -> None:
    """Defaults: utilization 0.9, seed 0, engine-dead exit after 5 s, nothing faulty."""
    settings = cli.parse_settings(["serve", "m"])
    assert settings.gpu_memory_utilization == 0.9
    assert settings.faults == faults.Faults()
    assert settings.faults.engine_dead_exit_after == 5.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine-dead-exit-after", "-1"], "--engine-dead-exit-after: engine_dead_exit_after: must be >= 0"),
        (["--engine-dead-exit-after", "soon"], "engine_dead_exit_after: expected a number, got 'soon'"),
        (["--max-num-seqs", "x"], "--max-num-seqs: must be a whole number >= 1, got 'x'"),
        (["--gpu-memory-utilization", "2"], "--gpu-memory-utilization: gpu_memory_utilization: "),
    ],
)
def test_typed_flags_name_what_is_wrong(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value is a usage error (exit 2) whose message names the fault, not a Python function."""
    with pytest.raises(SystemExit) as caught:
        cli.parse_settings(["serve", "m", *args])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "invalid _" not in err


def test_engine_dead_exit_after_accepts_never_and_seconds() -> None:
    """`never` disables the exit after engine death; a number of seconds is kept."""
    assert cli.parse_settings(["serve", "m", "--engine-dead-exit-after", "NEVER"]).faults.engine_dead_exit_after is None
    assert cli.parse_settings(["serve", "m", "--engine-dead-exit-after", "0.5"]).faults.engine_dead_exit_after == 0.5


def test_plan_is_deterministic_and_honours_limits() -> None:
    """The same inputs give the same text; max_tokens cuts with "length"; ignore_eos fills to it."""
    first = engine.plan(1, None, "prompt", 0, None)
    assert first == engine.plan(1, None, "prompt", 0, None)
    assert first != engine.plan(2, None, "prompt", 0, None)
    assert first.finish_reason == "stop"
    assert 8 <= len(first.tokens) <= 64
    cut = engine.plan(1, None, "prompt", 0, 3)
    assert (len(cut.tokens), cut.finish_reason) == (3, "length")
    filled = engine.plan(1, None, "prompt", 0, 100, ignore_eos=True)
    assert (len(filled.tokens), filled.finish_reason) == (100, "length")


def test_dice_sequences_depend_only_on_the_seed() -> None:
    """Two Dice with the same seed agree draw for draw; health and error draws are independent."""
    a, b = faults.Dice(3), faults.Dice(3)
    draws_a = [a.health_fails(0.5) for _ in range(50)]
    [b.request_fails(0.5) for _ in range(7)]
    assert draws_a == [b.health_fails(0.5) for _ in range(50)]


def test_metrics_text_parses_with_prometheus_client() -> None:
    """The hand-written exposition parses, with histogram buckets cumulative and ending at +Inf."""
    metrics = Metrics('we"ird\\name')
    for value in (0.0005, 0.05, 3000.0):
        metrics.ttft.observe(value)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    buckets = [s for s in families["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_bucket")]
    assert [s.value for s in buckets][:2] == [1.0, 1.0]
    assert buckets[-1].labels["le"] == "+Inf"
    assert buckets[-1].value == 3.0
    assert buckets[0].labels["model_name"] == 'we"ird\\name'
    assert families["vllm:request_success"].type == "counter"


def test_fake_gpu_counts_only_live_holders(tmp_path: Path) -> None:
    """Live holders count, entries of dead processes are ignored and removed."""
    gpu = FakeGpu(tmp_path, 100)
    gpu.register(os.getpid(), process_create_time(os.getpid()), 30, "me")
    gpu.register(2**22 + 12345, 0.0, 50, "ghost")  # beyond pid_max: never alive
    assert gpu.free_bytes() == 70
    assert not gpu.entry_path(2**22 + 12345).exists()
    gpu.unregister(os.getpid())
    assert gpu.free_bytes() == 100


def test_vllm_messages_are_exact() -> None:
    """The start-up guard's text matches vLLM's, number formats included."""
    gib = 1024**3
    assert tracebacks.free_memory_message(13.91 * gib, 79.33 * gib, 0.95) == (
        "ValueError: Free memory on device (13.91/79.33 GiB) on startup is less than desired GPU memory "
        "utilization (0.95, 75.36 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )
    assert tracebacks.cuda_oom_message(39.56, 36.61).startswith(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.58 GiB. GPU 0 has a total capacity of "
        "39.56 GiB of which 0.79 GiB is free."
    )


def test_fake_vllm_imports_nothing_from_the_project() -> None:
    """fake_vllm stands alone: no module imports supervisor or chaos."""
    package = Path(fake_vllm.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not [n for n in names if n.split(".")[0] in {"supervisor", "chaos"}], path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        cli.parse_settings(["serve", *argv])
    assert caught.value.code == 2
    return capsys.readouterr().err


def test_vllm_spellings_of_options_are_accepted() -> None:
    """vLLM's parser: underscores for dashes, --opt=value, -O3 / -O 3, dotted JSON keys, nargs '+', prefixes."""
    settings = cli.parse_settings(
        [
            "serve",
            "m",
            "--max_model_len=2k",
            "-O3",
            "-O",
            "2",
            "--compilation-config.cudagraph_mode",
            "FULL",
            "--allowed-media-domains",
            "a",
            "b",
            "--hf-token",
            "--max-num-se",
            "7",
            "--no-enable-log-requests",
        ]
    )
    assert settings.max_model_len == 2000
    assert settings.max_num_seqs == 7
    assert settings.model == "m"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["m", "--future-flag", "x"], "vllm: error: unrecognized arguments: --future-flag x\n"),
        (["m", "--swap-space", "4"], "vllm: error: unrecognized arguments: --swap-space 4\n"),  # gone in 0.32
        (["m", "-O"], "vllm: error: unrecognized arguments: -O\n"),
        (["m", "--max-num", "3"], "vllm serve: error: ambiguous option: --max-num could match"),
    ],
)
def test_options_vllm_does_not_know_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What vLLM 0.32 refuses is refused, with its message."""
    assert message in _refused(argv, capsys)


def test_engine_processes_follow_tensor_parallel_size() -> None:
    """EngineCore plus one worker per tensor-parallel rank, unless --engine-children says otherwise."""
    assert cli.parse_settings(["serve", "m"]).engine_processes == 2
    assert cli.parse_settings(["serve", "m"]).worker_names == ["Worker"]
    settings = cli.parse_settings(["serve", "m", "-tp", "4"])
    assert settings.engine_processes == 5
    assert settings.worker_names == ["Worker_TP0", "Worker_TP1", "Worker_TP2", "Worker_TP3"]
    assert cli.parse_settings(["serve", "m", "-tp", "4", "--engine-children", "1"]).worker_names == []
    assert cli.parse_settings(["serve", "m", "--engine-children", "0"]).engine_processes == 0


@pytest.mark.parametrize(
    ("argv", "device", "processes"),
    [
        ([], "cpu", 2),
        (["--fake-gpu-dir", "/tmp/g"], "cuda", 1),  # the GPU build runs the model in EngineCore at TP=1
        (["--oom", "startup"], "cuda", 1),
        (["--oom", "after:1", "-tp", "2"], "cuda", 3),
        (["--fake-gpu-dir", "/tmp/g", "--fake-device", "cpu"], "cpu", 2),
        (["--fake-device", "cuda", "--engine-children", "2"], "cuda", 2),
    ],
)
def test_fake_device_follows_the_gpu_faults(argv: list[str], device: str, processes: int) -> None:
    """A fake GPU or a CUDA OOM imitate vLLM's GPU build unless --fake-device says otherwise."""
    settings = cli.parse_settings(["serve", "m", *argv])
    assert (settings.device, settings.engine_processes) == (device, processes)


def test_serve_without_a_model_serves_vllms_default() -> None:
    """`vllm serve` alone serves Qwen/Qwen3-0.6B."""
    assert cli.parse_settings(["serve"]).model == "Qwen/Qwen3-0.6B"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("test-model", None),
        ("org/model-1.5B", None),
        ("/models/llama", "Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/models/llama'."),
        ("./llama", "Repo id must use alphanumeric chars, '-', '_' or '.'."),
        ("/llama", "Repo id must use alphanumeric chars, '-', '_' or '.'."),
        ("org/a--b", "Cannot have -- or .. in repo_id: 'org/a--b'."),
        ("org/a.git", "Repo_id cannot end by '.git': 'org/a.git'."),
    ],
)
def test_repo_id_validation_is_huggingface_hubs(name: str, problem: str | None) -> None:
    """A model that is not a local directory must be a valid Hub repo id, by huggingface_hub's rules."""
    found = tracebacks.repo_id_problem(name)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith("huggingface_hub.errors.HFValidationError: " + problem)


def test_kv_cache_message_is_vllms() -> None:
    """The KV-cache check's text, with the figures of the measured run (a 10M context on 1 GiB)."""
    assert tracebacks.kv_cache_message(10_000_000, 10_000_000 * 512, 1024**3, 2_097_024) == (
        "ValueError: To serve at least one request with the model's max seq len (10000000), (4.77 GiB KV cache "
        "is needed, which is larger than the available KV cache memory (1.0 GiB). Based on the available memory, "
        "the estimated maximum model length is 2097024. Try increasing `gpu_memory_utilization` (which also "
        "controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. "
        "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    )


def test_multi_line_records_repeat_the_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """vLLM's formatter: every line of a record carries the prefix, lines joined by \\r\\n."""
    vllm_log.error("x.py:1", "first\nsecond", pid=42)
    out = capsys.readouterr().out
    first, second = out.split("\r\n")
    assert first.startswith("(APIServer pid=42) ERROR ")
    assert first.endswith(" [x.py:1] first")
    assert second.startswith("(APIServer pid=42) ERROR ")
    assert second.endswith(" [x.py:1] second\n")


def test_error_messages_hide_paths() -> None:
    """vLLM's sanitize_message: paths in error messages become <path>."""
    assert openai_api.sanitize("Valid aliases: /tmp/models/tiny.") == "Valid aliases: <path>"
    assert openai_api.sanitize("Valid aliases: m.") == "Valid aliases: m."
