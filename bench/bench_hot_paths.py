"""Per-item cost of the supervisor's hot paths, each of which runs on the event loop:
a journal write (one event + the model's state), a log line (redacted, timestamped, appended), and the
diagnosis of an output line (ordinary vLLM lines, which are nearly all of them, and fatal ones).

    .venv/bin/python bench/bench_hot_paths.py [--count 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from supervisor.core.diagnosis import RunDiagnosis, classify_line
from supervisor.core.states import EventKind, State
from supervisor.core.views import TimelineEvent
from supervisor.runtime.base import Stream
from supervisor.store.base import PersistedModel
from supervisor.store.journal import Journal
from supervisor.store.logs import LogWriter
from supervisor.store.redact import Redactor

ORDINARY = [
    "(APIServer pid=1) INFO 09-24 20:54:38 [loggers.py:123] Engine 000: Avg prompt throughput: 120.3 tokens/s",
    'INFO:     127.0.0.1:35614 - "GET /health HTTP/1.1" 200 OK',
    "(EngineCore_DP0 pid=212) INFO 09-24 20:54:40 [gpu_model_runner.py:1234] Model loading took 4.2117 GiB",
]
FATAL = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.15 GiB. GPU 0 has a total capacity of 39.56 GiB"
)


def per_item(count: int, work: Callable[[int], None]) -> tuple[float, float]:
    """Median and 99th percentile microseconds of `work(i)`, timed one call at a time."""
    samples = []
    for i in range(count):
        started = time.perf_counter()
        work(i)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20000)
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.open(Path(tmp) / "journal.sqlite3")
        state = PersistedModel("running", (), 0, 0, False, None)

        def write_event(i: int) -> None:
            journal.append(TimelineEvent(i + 1, time.time(), "m", EventKind.PROBE_FAILED, State.HEALTHY, "timed out"))
            journal.save_model("m", state)

        median, p99 = per_item(count, write_event)
        print(f"journal write (event + state): median {median:.1f} us, p99 {p99:.1f} us")
        journal.close()

        writer = LogWriter(Path(tmp) / "logs", "m", redactor=Redactor({"HF_TOKEN": "hf_" + "x" * 34}))
        median, p99 = per_item(count, lambda i: writer.write(Stream.STDOUT, ORDINARY[i % len(ORDINARY)]))
        print(f"log line (redact + write): median {median:.1f} us, p99 {p99:.1f} us")
        writer.close()

    started = time.perf_counter()
    for i in range(count):
        classify_line(ORDINARY[i % len(ORDINARY)])
    ordinary = count / (time.perf_counter() - started)
    diagnosis = RunDiagnosis()
    started = time.perf_counter()
    for _ in range(count):
        diagnosis.observe(FATAL)
    fatal = count / (time.perf_counter() - started)
    print(f"diagnosis: {ordinary:,.0f} ordinary lines/s, {fatal:,.0f} fatal lines/s (RunDiagnosis.observe)")


if __name__ == "__main__":
    main()
