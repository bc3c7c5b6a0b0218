"""Ending the process abruptly, the way an injected crash must: an exit status or a fatal signal."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
from typing import NoReturn


def flush_streams() -> None:
    """Push buffered log lines out before the process can disappear."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def die(exit_code: int, signal_name: str | None) -> NoReturn:
    """Exit now with ``exit_code``, or be killed by ``signal_name`` (its default action, no core file)."""
    flush_streams()
    if signal_name is not None:
        signum = signal.Signals[signal_name]
        # No core file for SIGSEGV/SIGABRT & co.: the test wants the signal, not a disk full of dumps.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Python ignores SIGPIPE/SIGXFSZ and asyncio catches SIGTERM/SIGINT: restore the default action.
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # not reached unless the signal was somehow survived
    os._exit(exit_code)
