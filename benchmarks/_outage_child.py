"""The child process of the outage measurement: a writer under steady load, nothing else.

``python -m benchmarks._outage_child DSN``: starts the writer (default configuration, on its
loop), prints ``ready``, then records the workload at 20,000 events/s. The parent stops and
restarts the database and says so on stdin (``down``, ``up``); on ``stop`` the child stops
recording, flushes, closes and prints one JSON line with the writer's counters. It runs in a
process of its own so that its RSS is the writer's and nothing else's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

from benchmarks._common import quiet_logging

RATE = 20_000.0


async def main(dsn: str) -> dict[str, Any]:
    from benchmarks._workload import produce_at_rate  # noqa: PLC0415 - after quiet_logging
    from tracewriter import ObservabilityService  # noqa: PLC0415

    svc = ObservabilityService(dsn)
    await svc.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    marks: dict[str, float] = {}

    def read_commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            loop.call_soon_threadsafe(marks.setdefault, word, time.monotonic())
            if word == "stop":
                loop.call_soon_threadsafe(stop.set)
                return
        loop.call_soon_threadsafe(stop.set)  # the parent went away

    threading.Thread(target=read_commands, name="outage-commands", daemon=True).start()
    print("ready", flush=True)
    limit = svc.config.max_buffer_rows
    full_after: float | None = None

    async def watch() -> None:
        nonlocal full_after
        while not stop.is_set():
            stats = svc.stats()
            assert stats is not None
            filling = "down" in marks and "up" not in marks and full_after is None
            if filling and (stats.dropped_overflow or stats.buffered + stats.in_flight >= limit):
                full_after = time.monotonic() - marks["down"]
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        await produce_at_rate(svc, RATE, stop)
        await watcher
        flushed = await svc.flush(timeout=60)
        stats = svc.stats()
        assert stats is not None
    finally:
        await svc.close()
    return {
        "rate": RATE,
        "max_buffer_rows": limit,
        "buffer_full_after_s": full_after,
        "flushed": flushed,
        "stats": {
            "enqueued": stats.enqueued,
            "written": stats.written,
            "dropped_overflow": stats.dropped_overflow,
            "dead_lettered": stats.dead_lettered,
            "retries": stats.retries,
            "buffered": stats.buffered,
            "in_flight": stats.in_flight,
            "balances": stats.balances(),
        },
    }


if __name__ == "__main__":
    quiet_logging()
    print(json.dumps(asyncio.run(main(sys.argv[1]))), flush=True)
