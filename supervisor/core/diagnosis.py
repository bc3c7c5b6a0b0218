"""Pure classification of a model server's output lines into failure causes with operator advice.

Recognises the fatal output of vLLM and torch listed in docs/design/vllm.md: CUDA OOM in
its several forms, KV-cache sizing errors, GPU memory held by another process, engine death, NCCL failures and
a port already in use. `classify_line` looks at one line; `RunDiagnosis` accumulates the findings of one run of
a server, so a new run starts clean (docs/design/defects.md #11: a stale OOM flag outlived the recovery).

It sees every output line of every server, so a line is first checked against one cheap combined pattern of
literal keywords; only the rare line that contains one is matched against the full patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from supervisor.core.adapt import TorchHolder, parse_estimate, parse_free_memory, parse_torch_holders
from supervisor.core.states import Cause

EXCERPT_MAX = 500


@dataclass(frozen=True, slots=True)
class Finding:
    """What one output line says went wrong: a short id, the failure cause, advice and the line itself."""

    finding: str
    cause: Cause
    advice: str
    excerpt: str


@dataclass(frozen=True, slots=True)
class _Rule:
    finding: str
    cause: Cause
    pattern: re.Pattern[str]
    advice: str


# The process runtime's spawn failure (runtime/process.py) is classified like an output line.
_COMMAND_RULE = _Rule(
    "command_not_found",
    Cause.COMMAND_NOT_FOUND,
    re.compile(r"^cannot start .*: command '(?P<command>[^']+)' not found$"),
    "",  # names the command: see command_advice
)


def command_advice(command: str) -> str:
    """What to do when the configured command cannot be executed (no such file on the supervisor's PATH)."""
    return (
        f"The command {command!r} was not found: it is not on the PATH the supervisor starts models with "
        "(a service's PATH is often shorter than your shell's), or the file (or its #! interpreter) does not "
        "exist. Give `command` its absolute path (e.g. the virtualenv's bin/vllm), or set PATH in the model's "
        "env or the supervisor's environment. `llm-supervisor validate` warns about this before a start."
    )


_OOM_ADVICE = (
    "The GPU ran out of memory. Lower --gpu-memory-utilization (default 0.9) to leave more headroom, lower "
    "--max-model-len or --max-num-seqs to shrink the KV cache and activations, or serve a smaller or "
    "quantized model (or spread it over more GPUs with --tensor-parallel-size)."
)
_RULES = (
    _Rule(
        "cuda_oom",
        Cause.OOM,
        re.compile(
            r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|cudaMalloc failed"
            r"|CUBLAS_STATUS_ALLOC_FAILED"
        ),
        _OOM_ADVICE,
    ),
    _Rule(
        "kv_cache_too_small",
        Cause.OOM,
        re.compile(
            r"No available memory for the cache blocks"
            r"|KV cache is needed, which is larger than the available KV cache memory"
            r"|larger than the maximum number of tokens that can be stored in KV cache"
        ),
        "The KV cache does not fit in the GPU memory vLLM may use. Lower --max-model-len{estimate}, or raise "
        "--gpu-memory-utilization if the GPU is not shared, or add GPUs with --tensor-parallel-size.",
    ),
    _Rule(
        "gpu_memory_held",
        Cause.OOM,
        re.compile(r"Free memory on device .* is less than desired GPU memory utilization"),
        "Another process holds GPU memory, often an orphaned EngineCore or worker of an earlier run. Find it "
        "with `nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv` and stop it, or "
        "lower --gpu-memory-utilization to what is free.",
    ),
    _Rule(
        "port_in_use",
        Cause.PORT_IN_USE,
        re.compile(r"\[Errno (98|48)\]|[Aa]ddress already in use"),
        "Another process already listens on this server's port. Find it with `ss -ltnp` (or `lsof -i :PORT`) "
        "and stop it, or give the model another --port and endpoints.base_url.",
    ),
    _Rule(
        "engine_dead",
        Cause.ENGINE_DEAD,
        # Not "EngineCore failed to start" nor "Engine core initialization failed": they frame a failed start,
        # the first before its root cause (an OOM, a KV cache too small) and the second after it, and a start
        # that failed for no known cause is a crash, not a dead engine.
        re.compile(r"EngineDeadError|Worker proc \S+ died unexpectedly"),
        "vLLM's engine died; the server cannot recover without a restart. The first error above this line "
        "(often an out-of-memory or NCCL error) is the root cause.",
    ),
    _Rule(
        "nccl_failure",
        Cause.CRASH,
        re.compile(r"Watchdog caught collective operation timeout|DistBackendError|NCCL error"),
        "A collective operation between GPU workers failed or timed out. Check that every GPU is healthy "
        "(`nvidia-smi`, Xid errors in `dmesg`); run with NCCL_DEBUG=INFO for details; on GPUs without "
        "peer-to-peer links try NCCL_P2P_DISABLE=1.",
    ),
    _COMMAND_RULE,
)
# Literal words at least one of which every rule's match (or CPU build marker) contains; most lines contain
# none and cost one scan.
_PREFILTER = re.compile(
    r"emory|cudaMalloc|ALLOC_FAILED|KV cache|Errno|ddress already in use|Engine|died|NCCL|estimated maximum"
    r"|Watchdog|DistBackend|cpu_worker|cpu_model_runner|device_config=cpu|cannot start"
)
# vLLM's CPU build says so early in its start-up (its worker and model runner, the engine's device), long
# before a KV cache failure: there the cache is sized by VLLM_CPU_KVCACHE_SPACE, and there is no GPU.
_CPU_BUILD = re.compile(r"cpu_worker\.py|cpu_model_runner\.py|device_config=cpu|CPU KV cache size")
_CPU_KV_ADVICE = (
    "The KV cache does not fit in the memory this CPU build of vLLM reserves for it. Raise "
    "VLLM_CPU_KVCACHE_SPACE (GiB of KV cache) if the host has the memory, or lower --max-model-len{estimate}."
)
_ESTIMATE = re.compile(r"estimated maximum model length is (\d+)")

# When several findings appear in one run, the one nearest the root cause names the failure. Out of memory
# comes first: the engine then dies and reports EngineDeadError or a dead worker, and the other
# tensor-parallel workers report NCCL timeouts, so those lines are usually consequences. A port in use stops
# the server before it serves anything and has nothing to do with the engine, so it outranks engine death.
# Engine death outranks NCCL because a dead worker shows up as collective timeouts on the others.
_PRECEDENCE = (Cause.OOM, Cause.PORT_IN_USE, Cause.ENGINE_DEAD, Cause.CRASH, Cause.COMMAND_NOT_FOUND)


def classify_line(line: str) -> Finding | None:
    """The finding one output line reports, or None for an ordinary line."""
    if _PREFILTER.search(line) is None:
        return None
    return _classify(line)


def _classify(line: str) -> Finding | None:
    for rule in _RULES:
        if rule.pattern.search(line):
            return Finding(rule.finding, rule.cause, _advice(rule, line), _excerpt(line))
    return None


def _advice(rule: _Rule, line: str) -> str:
    if rule is _COMMAND_RULE:
        found = rule.pattern.search(line)
        assert found is not None  # _classify matched this rule on this line
        return command_advice(found["command"])
    if rule.finding != "kv_cache_too_small":
        return rule.advice
    # vLLM computes the longest context that fits; handing it over saves the operator a calculation.
    estimate = _ESTIMATE.search(line)
    return rule.advice.format(estimate=f" (vLLM estimates {estimate[1]} fits)" if estimate else "")


def _excerpt(line: str) -> str:
    text = line.strip()
    return text if len(text) <= EXCERPT_MAX else text[: EXCERPT_MAX - 3] + "..."


class RunDiagnosis:
    """The findings of one run of a server, each reported once. A new run gets a new RunDiagnosis."""

    __slots__ = ("_findings", "estimate", "free_memory", "on_cpu", "torch_holders")

    def __init__(self) -> None:
        self._findings: dict[str, Finding] = {}
        self.on_cpu = False  # the server said it is vLLM's CPU build
        # What the output said would fit, for smart recovery (core/adapt.py): vLLM's estimate of the longest
        # context, the (free, total) GiB of its free-memory guard, the processes torch's OOM named.
        self.estimate: int | None = None
        self.free_memory: tuple[float, float] | None = None
        self.torch_holders: tuple[TorchHolder, ...] = ()

    def observe(self, line: str) -> Finding | None:
        """Classify a line; return its finding only the first time that finding appears in this run."""
        if _PREFILTER.search(line) is None:
            return None
        if not self.on_cpu and _CPU_BUILD.search(line) is not None:
            self.on_cpu = True
        self._note_figures(line)
        found = _classify(line)
        if found is None or found.finding in self._findings:
            return None
        if self.on_cpu and found.finding == "kv_cache_too_small":
            estimate = _ESTIMATE.search(line)
            advice = _CPU_KV_ADVICE.format(estimate=f" (vLLM estimates {estimate[1]} fits)" if estimate else "")
            found = Finding(found.finding, found.cause, advice, found.excerpt)
        self._findings[found.finding] = found
        return found

    def _note_figures(self, line: str) -> None:
        estimate = parse_estimate(line)
        if estimate is not None:
            self.estimate = estimate
        free = parse_free_memory(line)
        if free is not None:
            self.free_memory = free
        holders = parse_torch_holders(line)
        if holders:
            self.torch_holders = holders

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every distinct finding of this run, in the order first seen."""
        return tuple(self._findings.values())

    @property
    def primary(self) -> Finding | None:
        """The finding nearest the root cause (see _PRECEDENCE); the earliest seen among equals."""
        for cause in _PRECEDENCE:
            for found in self._findings.values():
                if found.cause is cause:
                    return found
        return None

    @property
    def primary_cause(self) -> Cause | None:
        primary = self.primary
        return None if primary is None else primary.cause

    @property
    def has_cuda_oom(self) -> bool:
        """True once the GPU ran out of memory or could not reserve it (any finding of cause oom, except the KV
        cache failure of vLLM's CPU build: out of memory, but of host memory, not CUDA's)."""
        return any(
            found.cause is Cause.OOM and not (self.on_cpu and found.finding == "kv_cache_too_small")
            for found in self._findings.values()
        )
