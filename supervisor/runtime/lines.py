"""Cutting a model's output bytes into lines, the same way for every runtime.

The process runtime reads pipes and the Docker runtime reads the engine's attach stream, but both hand their
bytes to one `LineSplitter`, so the log file and the diagnosis see the same lines whichever runtime ran the
model.
"""

from __future__ import annotations

import re

# A line longer than this is delivered in pieces: a process printing megabytes without a newline must not
# grow our memory without bound, and no log line is useful past this size.
MAX_LINE_BYTES = 256 * 1024
# "\r" alone ends a line too: progress bars (vLLM's weight loading) redraw with it, and an operator should
# see their progress while a model loads rather than one giant line when loading finishes.
_EOL = re.compile(rb"\r\n|\n|\r")


class LineSplitter:
    """Bytes in, complete lines out, for one stream; a line split across reads is joined first."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        """The lines that `data` completes."""
        self._buffer += data
        return self._split(at_eof=False)

    def flush(self) -> list[str]:
        """What is left once the stream has ended (a last line without a newline still counts)."""
        return self._split(at_eof=True)

    def _split(self, at_eof: bool) -> list[str]:
        buffer = self._buffer
        lines: list[str] = []
        start = 0
        for match in _EOL.finditer(buffer):
            is_lone_cr = match.group() == b"\r"
            if is_lone_cr and match.end() == len(buffer) and not at_eof:
                break  # may be the first half of "\r\n"; wait for the next read
            if not (is_lone_cr and match.start() == start):  # a redraw's leading "\r" is no empty line
                lines.append(_decode(buffer[start : match.start()]))
            start = match.end()
        while len(buffer) - start > self._max_line:
            cut = start + self._max_line
            while cut > start + self._max_line - 4 and buffer[cut] & 0xC0 == 0x80:
                cut -= 1  # do not split a UTF-8 character (at most 3 continuation bytes; more is garbage)
            lines.append(_decode(buffer[start:cut]))
            start = cut
        if at_eof and start < len(buffer):
            lines.append(_decode(buffer[start:]))
            start = len(buffer)
        del buffer[:start]
        return lines


def _decode(raw: bytearray) -> str:
    return raw.decode("utf-8", errors="replace")
