"""Keep a long-running supervisor's memory flat: freeze what start-up made, collect the rest on a timer.

Why the daemon manages its garbage collection itself:
- CPython 3.11 runs a full collection only when the objects that reached the oldest generation since the last
  one number a quarter of those already there. This daemon's heap is large and stable (~90,000 objects with
  20 models) and it makes few new ones, so a full collection almost never comes: in a soak of 20 models with
  a fault every 2 s there was none in 8 minutes (bench/soak.py, docs/operations.md).
- Meanwhile reference cycles pile up in that generation. Every closed asyncio socket transport is one on
  3.11 (it keeps its own bound method `_read_ready_cb` after close; CPython gh-100348, fixed in 3.12): each
  probe connection to a server that was restarted, each API connection. Resident memory grew all through
  the soak, and a collection every 30 s cut that growth by 80%.
- So after start-up `freeze_startup` moves what exists (modules, classes, functions: they live as long as the
  process) out of every collection's way, and `collect_periodically` runs a full collection every few minutes.
  Frozen, the ~60,000 start-up objects are never scanned again: a full collection took ~25 ms instead of
  ~65 ms in that soak on the 2-core dev machine, the automatic ones included.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

# Minutes of garbage at most; the pause is tens of milliseconds, so rare enough not to count at idle.
COLLECT_INTERVAL = 300.0


def freeze_startup() -> None:
    """Collect once, then move every object that exists to the permanent generation, never scanned again.

    Call it once start-up has imported what it needs and before any model runs: an object frozen here that
    later became cyclic garbage would never be freed.
    """
    gc.collect()
    gc.freeze()


async def collect_periodically(interval: float = COLLECT_INTERVAL) -> None:
    """A full collection every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        started = time.perf_counter()
        found = gc.collect()
        took = (time.perf_counter() - started) * 1e3
        log.debug("garbage collection: %d unreachable objects freed in %.1f ms", found, took)
