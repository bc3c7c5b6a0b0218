"""Log lines in the shapes and on the streams that `vllm serve` uses.

vLLM's own logger writes to stdout as ``(APIServer pid=N) INFO 09-24 20:54:38 [file.py:123] message``;
uvicorn's lines (``INFO:     Started server process [N]``, access lines) and tracebacks go to stderr.
Supervisors and log scrapers key on these shapes, so the fake keeps them exactly.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

API_SERVER = "APIServer"
ENGINE_CORE = "EngineCore_DP0"


def _vllm_line(level: str, where: str, message: str, process: str, pid: int | None) -> str:
    stamp = time.strftime("%m-%d %H:%M:%S", time.localtime())
    return f"({process} pid={os.getpid() if pid is None else pid}) {level} {stamp} [{where}] {message}\n"


def _write(stream: TextIO, text: str) -> None:
    # A closed or broken pipe must not turn a log line into a crash of the fake itself.
    try:
        stream.write(text)
        stream.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass


def info(where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """A vLLM logger INFO line on stdout."""
    _write(sys.stdout, _vllm_line("INFO", where, message, process, pid))


def warning(where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """A vLLM logger WARNING line on stdout."""
    _write(sys.stdout, _vllm_line("WARNING", where, message, process, pid))


def error(where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """A vLLM logger ERROR line on stdout (vLLM's logger handler is stdout even for errors)."""
    _write(sys.stdout, _vllm_line("ERROR", where, message, process, pid))


def uvicorn(message: str, level: str = "INFO") -> None:
    """A uvicorn line on stderr: ``INFO:     message`` (level name padded to 9 columns with its colon)."""
    _write(sys.stderr, f"{(level + ':').ljust(9)} {message}\n")


def stderr_text(text: str) -> None:
    """Raw text on stderr (tracebacks)."""
    _write(sys.stderr, text if text.endswith("\n") else text + "\n")
