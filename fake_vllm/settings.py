"""What one ``fake-vllm serve`` process was started with, parsed once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fake_vllm.faults import Faults

VLLM_VERSION = "0.11.0"


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
    engine_children: int = 0
    fake_gpu_dir: Path | None = None
    fake_gpu_total_gib: float = 79.33
    oom_at_startup: bool = False
    faults: Faults = field(default_factory=Faults)
    ignored_args: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        """The first served name: what responses report as ``model``."""
        return self.served_model_names[0]

    @property
    def claim_bytes(self) -> int:
        """Fake GPU memory this instance holds while it runs: utilization x device total."""
        return int(self.gpu_memory_utilization * self.fake_gpu_total_gib * 1024**3)
