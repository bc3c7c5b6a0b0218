"""Log lines in the shapes and on the streams that `vllm serve` 0.32 uses.

vLLM's own logger writes to stdout as ``(APIServer pid=N) INFO 09-24 20:54:38 [file.py:123] message``, with
``(EngineCore pid=N)`` and ``(Worker pid=N)`` for its child processes. A message of several lines (the start-up
banner, a traceback logged with ``logger.exception``) is one record: vLLM's formatter repeats the prefix on
every line and joins them with ``\\r\\n``. uvicorn's lifecycle lines go to stderr, its access lines to stdout,
as ``INFO:     127.0.0.1:40000 - "GET /health HTTP/1.1" 200 OK``, without vLLM's prefix.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

API_SERVER = "APIServer"
ENGINE_CORE = "EngineCore"
WORKER = "Worker"


def _prefix(level: str, where: str, process: str, pid: int | None) -> str:
    stamp = time.strftime("%m-%d %H:%M:%S", time.localtime())
    return f"({process} pid={os.getpid() if pid is None else pid}) {level} {stamp} [{where}] "


def _write(stream: TextIO, text: str) -> None:
    # A closed or broken pipe must not turn a log line into a crash of the fake itself.
    try:
        stream.write(text)
        stream.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass


def log(level: str, where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """One vLLM logger record on stdout; a message of several lines repeats the prefix, joined by ``\\r\\n``."""
    prefix = _prefix(level, where, process, pid)
    _write(sys.stdout, prefix + message.replace("\n", "\r\n" + prefix) + "\n")


def info(where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """A vLLM logger INFO record on stdout."""
    log("INFO", where, message, process=process, pid=pid)


def warning(where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """A vLLM logger WARNING record on stdout."""
    log("WARNING", where, message, process=process, pid=pid)


def error(where: str, message: str, *, process: str = API_SERVER, pid: int | None = None) -> None:
    """A vLLM logger ERROR record on stdout (vLLM's logger handler is stdout even for errors)."""
    log("ERROR", where, message, process=process, pid=pid)


def uvicorn(message: str, level: str = "INFO") -> None:
    """A uvicorn lifecycle line on stderr: ``INFO:     message`` (level and colon padded to 9 columns)."""
    _write(sys.stderr, f"{(level + ':').ljust(9)} {message}\n")


def access(message: str) -> None:
    """A uvicorn access line, on stdout as uvicorn's access logger writes it."""
    _write(sys.stdout, f"INFO:     {message}\n")


def stderr_text(text: str) -> None:
    """Raw text on stderr (tracebacks)."""
    _write(sys.stderr, text if text.endswith("\n") else text + "\n")


BANNER = (
    "\n"
    "       █     █     █▄   ▄█\n"
    " ▄▄ ▄█ █     █     █ ▀▄▀ █  version {version}\n"
    "  █▄█▀ █     █     █     █  model   {model}\n"
    "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n"
)


def banner(version: str, model: str) -> None:
    """vLLM's start-up logo with its version and model: one INFO record of six lines."""
    info("api_utils.py:347", BANNER.format(version=version, model=model))
