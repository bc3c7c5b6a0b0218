"""An engine child process: what ``VLLM::EngineCore`` / ``VLLM::Worker_TP{i}`` look like from outside.

It registers the fake GPU memory it holds, tells its parent it is ready, then waits for a signal. It does
not watch its parent (no PR_SET_PDEATHSIG, no pipe polling): like a real EngineCore it outlives a SIGKILL
of the API server and keeps its memory until someone kills it. SIGTERM or SIGINT make it release the
memory and exit 0; SIGKILL leaves a stale entry that the fake GPU ignores once the process is gone.

Usage: ``python -m fake_vllm.engine_child --name NAME --ready-fd FD [--gpu-dir DIR --bytes N]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from fake_vllm import vllm_log


def _set_process_name(name: str) -> None:
    # What `ps -o comm`, `top` and psutil.name() show; Linux keeps 15 bytes. Best effort elsewhere.
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


def main(argv: list[str] | None = None) -> int:
    """Register, report ready, and hold the memory until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="fake_vllm.engine_child")
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--gpu-dir", type=Path)
    parser.add_argument("--bytes", type=int, default=0)
    args = parser.parse_args(argv)
    _set_process_name(args.name)
    pid = os.getpid()
    entry: list[Path] = []  # the registered entry, once there is one

    def release(signum: int, _frame: FrameType | None) -> None:
        for path in entry:
            path.unlink(missing_ok=True)
        os._exit(0)

    # Handlers first, so a SIGTERM that arrives during registration still releases the memory.
    signal.signal(signal.SIGTERM, release)
    signal.signal(signal.SIGINT, release)
    if args.gpu_dir is not None:
        from fake_vllm.gpu import GIB, FakeGpu, process_create_time

        gpu = FakeGpu(args.gpu_dir, 0)
        # The parent holds the device lock while children register, so this cannot race another instance.
        gpu.register(pid, process_create_time(pid), args.bytes, args.name)
        entry.append(gpu.entry_path(pid))
        vllm_log.info("gpu_worker.py:298", f"{args.name} holds {args.bytes / GIB:.2f} GiB", process="EngineCore_DP0")

    os.write(args.ready_fd, b"ready\n")
    os.close(args.ready_fd)
    while True:  # only a signal ends it
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
