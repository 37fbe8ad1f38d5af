"""The pause between slices of the writer's CPU work, on whichever thread it runs.

Owns one thing: how the writer gives way between slices of work it does in Python (building
rows, encoding a COPY, rolling up, building OTLP messages). On the application's event loop a
pause yields that loop, and that is all it should do: handing the GIL to the application's
other threads would delay its own loop. On a thread of the writer's own (``thread_mode``, a
:class:`~tracewriter._provider.LoopThread`) yielding its loop lets nothing else in: the
application's threads wait for the GIL, which CPython takes from a busy thread only every
switch interval (5 ms). There a pause also hands the GIL over (``time.sleep(0)`` releases it,
and a waiting thread takes it) once the writer has held it for a millisecond. Measured at
20,000 events/s with a 1 ms ticker on the main thread's loop (``benchmarks.latency.loop_lag``,
thread mode, interleaved): p99 lateness 11.2-30.7 ms in four runs before, 3.5-3.9 ms in three
after; max 78-114 → 8.9-16.4 ms. The realistic mix written in thread mode while the
application records flat out (``benchmarks.cost._drive``): 4.3-5.3 s before, 4.8-6.0 s after;
handing over at every pause instead cut the p99 as much but took 5.8-7.7 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from time import perf_counter
from typing import Final

__all__ = ["pause", "writer_thread"]

_thread = threading.local()
# How long the writer's thread keeps the GIL between handovers (plus the slice that crosses
# it): every pause cost a quarter of thread mode's throughput while the application was busy
# (each handover waits for the GIL to come back); 1 ms kept it, 2 ms gave a worse p99.
_HOLD: Final = 0.001


def writer_thread() -> None:
    """Mark the calling thread as the writer's own: its pauses hand the GIL over."""
    _thread.writer = True
    _thread.since = perf_counter()


def _give_gil() -> None:
    # Not a wait: a zero sleep releases the GIL and takes it back once a waiting thread ran.
    time.sleep(0)


async def pause() -> None:
    """End a slice of CPU work: let the loop run others, and on the writer's own thread let
    the application's threads run too, once it has held the GIL for ``_HOLD`` seconds."""
    if getattr(_thread, "writer", False):
        now = perf_counter()
        if now - _thread.since >= _HOLD:
            _give_gil()
            _thread.since = perf_counter()
    await asyncio.sleep(0)
