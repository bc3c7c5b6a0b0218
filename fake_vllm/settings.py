"""What one ``fake-vllm serve`` process was started with, parsed once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fake_vllm.faults import Faults

VLLM_VERSION = "0.32.0"
# vLLM 0.32's CPU backend with VLLM_CPU_KVCACHE_SPACE=1 on a small model: 1 GiB of KV cache, 512 bytes a token.
DEFAULT_KV_CACHE_TOKENS = 2_097_152
KV_BYTES_PER_TOKEN = 512
KV_BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class Settings:
    """Start-up settings; the runtime-changeable faults start as ``faults`` and live on in the server."""

    model: str
    served_model_names: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int = 32768
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.9
    api_keys: tuple[str, ...] = ()
    access_log: bool = True
    startup_delay: float = 0.0
    # Engine processes: VLLM::EngineCore plus (engine_processes - 1) workers under it; 0 = the engine runs
    # inside the API server process.
    engine_processes: int = 2
    tensor_parallel_size: int = 1
    # The build imitated: "cpu" (vLLM 0.32's CPU build, as measured) or "cuda" (its GPU build).
    device: str = "cpu"
    kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS
    honor_sigterm_while_loading: bool = False
    fake_gpu_dir: Path | None = None
    fake_gpu_total_gib: float = 79.33
    oom_at_startup: bool = False
    faults: Faults = field(default_factory=Faults)
    non_default_args: tuple[tuple[str, object], ...] = ()

    @property
    def model_name(self) -> str:
        """The first served name: what responses report as ``model``."""
        return self.served_model_names[0]

    @property
    def claim_bytes(self) -> int:
        """Fake GPU memory this instance holds while it runs: utilization x device total."""
        return int(self.gpu_memory_utilization * self.fake_gpu_total_gib * 1024**3)

    @property
    def worker_names(self) -> list[str]:
        """Process titles of the workers under EngineCore: ``Worker`` alone, ``Worker_TP0``... when several."""
        workers = max(0, self.engine_processes - 1)
        if workers == 1:
            return ["Worker"]
        return [f"Worker_TP{rank}" for rank in range(workers)]
