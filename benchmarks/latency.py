"""Latency the writer adds: event-loop lag under load, and the delay until a row is readable.

Owns two timing scripts. Loop lag: a 1 ms ticker on the application's loop records how late
each tick fires while the workload records 20,000 events/s; once with no writer (the floor:
the producer's own cost and the loop's timer granularity), then with the writer on the app's
loop (the default) and on its own thread. Visibility: marker LLM calls logged under light
background load, and a poller on its own thread and connection that notes when each marker's
row can be read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import asyncpg

from benchmarks._common import Figure, Report, percentile, ratio, reset, say, verdict
from benchmarks._workload import LLM_ARGS, default_metadata, produce_at_rate
from tracewriter import ObservabilityService, TraceContext

TICK = 0.001


async def _ticker(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(TICK)
        lateness.append(time.perf_counter() - began - TICK)


def _waiting_ns() -> int | None:
    """Nanoseconds this thread has spent runnable but not running (waiting for a CPU), from
    Linux's /proc/thread-self/schedstat; None elsewhere."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


async def loop_lag(
    dsn: str | None, *, rate: float, seconds: float, options: dict[str, Any]
) -> dict[str, Any]:
    """Ticker lateness while recording ``rate`` events/s for ``seconds``; no writer if no dsn."""
    if dsn is not None:
        await reset(dsn)
    svc = ObservabilityService(dsn, **options) if dsn else ObservabilityService()
    await svc.start()
    try:
        stop = asyncio.Event()
        lateness: list[float] = []
        # Let the pool and the first flush settle before measuring.
        await asyncio.sleep(0.2)
        ticker = asyncio.create_task(_ticker(stop, lateness))
        producer = asyncio.create_task(produce_at_rate(svc, rate, stop))
        waited0 = _waiting_ns()
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        traces = await producer
        await ticker
        elapsed = time.perf_counter() - began
        waited1 = _waiting_ns()
        stats = svc.stats()
        flushed = await svc.flush(timeout=60) if dsn else True
    finally:
        await svc.close()
    ms = [x * 1000 for x in lateness]
    return {
        "options": options,
        "writer": dsn is not None,
        "ticks": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "events_per_s": (stats.enqueued if stats else traces * 9) / elapsed,
        "dropped_overflow": stats.dropped_overflow if stats else 0,
        "flushes": stats.flushes if stats else 0,
        "flushed": flushed,
        # Time the loop's thread was ready to run but had no CPU: on a machine that PostgreSQL
        # shares, its COPY backends take the cores and a tick waits a scheduler slice (~4 ms).
        "cpu_wait_ms": (waited1 - waited0) / 1e6
        if waited0 is not None and waited1 is not None
        else None,
    }


def _poller(
    dsn: str,
    pending: dict[str, float],
    seen: dict[str, float],
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    """On its own thread and connection: note when each pending trace id becomes readable."""

    async def poll() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while not stop.is_set():
                with lock:
                    ids = list(pending)
                if ids:
                    found = await conn.fetch(
                        "SELECT DISTINCT trace_id FROM observability.spans "
                        "WHERE trace_id = ANY($1::text[])",
                        ids,
                    )
                    now = time.monotonic()
                    with lock:
                        for record in found:
                            trace_id = record["trace_id"]
                            if trace_id in pending:
                                seen[trace_id] = now - pending.pop(trace_id)
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    asyncio.run(poll())


async def visibility(
    dsn: str, *, seconds: float, marker_every: float, background_rate: float
) -> dict[str, Any]:
    """Time from ``log_llm_call`` to its row being readable, at the default flush interval."""
    await reset(dsn)
    svc = ObservabilityService(dsn)
    await svc.start()
    pending: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    halt = threading.Event()
    poller = threading.Thread(
        target=_poller, args=(dsn, pending, seen, lock, halt), name="visibility-poller"
    )
    poller.start()
    try:
        stop = asyncio.Event()
        background = asyncio.create_task(produce_at_rate(svc, background_rate, stop))
        markers = 0
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            ctx = TraceContext.new_root(user_id="user-visibility")
            logged = time.monotonic()
            svc.log_llm_call(ctx, **LLM_ARGS, metadata=default_metadata(markers))
            with lock:
                pending[ctx.trace_id] = logged
            markers += 1
            await asyncio.sleep(marker_every)
        stop.set()
        await background
        # Every marker must show up within a few flush intervals; give up after 10 s.
        deadline = time.monotonic() + 10 + 3 * svc.config.flush_interval
        while time.monotonic() < deadline:
            with lock:
                if not pending:
                    break
            await asyncio.sleep(0.05)
        interval = svc.config.flush_interval
    finally:
        halt.set()
        await asyncio.to_thread(poller.join)
        await svc.close()
    latencies = list(seen.values())
    return {
        "flush_interval": interval,
        "markers": markers,
        "seen": len(latencies),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else float("nan"),
    }


async def run(report: Report, dsn: str, *, lag_seconds: float, vis_seconds: float) -> None:
    section = "Event-loop lag (1 ms ticker, 20,000 events/s)"
    rate = 20_000.0
    runs: dict[str, dict[str, Any]] = {}
    for name, target_dsn, options in (
        ("no writer (floor)", None, {}),
        ("writer on the app loop (default)", dsn, {}),
        ("writer on the app loop, one COPY at a time (pool_size=1)", dsn, {"pool_size": 1}),
        ("writer on its own thread", dsn, {"thread_mode": True}),
    ):
        say(f"  loop lag: {name} ...")
        runs[name] = await loop_lag(target_dsn, rate=rate, seconds=lag_seconds, options=options)
    report.details["loop_lag"] = runs
    floor = runs["no writer (floor)"]
    for key, name in (
        ("lag_floor", "no writer (floor)"),
        ("lag_default", "writer on the app loop (default)"),
        ("lag_pool1", "writer on the app loop, one COPY at a time (pool_size=1)"),
        ("lag_thread", "writer on its own thread"),
    ):
        r = runs[name]
        note = f"{r['events_per_s']:,.0f} events/s achieved, {r['ticks']:,} ticks"
        if r["cpu_wait_ms"] is not None:
            note += f"; waiting for a CPU {r['cpu_wait_ms']:,.0f} ms of {lag_seconds:g} s"
        if r["dropped_overflow"]:
            note += f", {r['dropped_overflow']:,} dropped"
        default = key == "lag_default"
        report.add(
            Figure(
                f"{key}_p50",
                section,
                f"{name}: p50 lateness",
                r["p50_ms"],
                "ms",
                ratio(r["p50_ms"], floor["p50_ms"]),
                "floor",
                note=note,
            )
        )
        report.add(
            Figure(
                f"{key}_p99",
                section,
                f"{name}: p99 lateness",
                r["p99_ms"],
                "ms",
                ratio(r["p99_ms"], floor["p99_ms"]),
                "floor",
                "≤ 1.3 × floor" if default else "",
                verdict(r["p99_ms"] <= 1.3 * floor["p99_ms"]) if default else "—",
            )
        )
        report.add(
            Figure(
                f"{key}_max",
                section,
                f"{name}: max lateness",
                r["max_ms"],
                "ms",
                ratio(r["max_ms"], floor["max_ms"]),
                "floor",
                "≤ 1.5 × floor" if default else "",
                verdict(r["max_ms"] <= 1.5 * floor["max_ms"]) if default else "—",
            )
        )

    say("  visibility latency ...")
    vis = await visibility(dsn, seconds=vis_seconds, marker_every=0.05, background_rate=2_000)
    report.details["visibility"] = vis
    section = "Visibility (log_llm_call → row readable, default flush interval)"
    interval = vis["flush_interval"]
    note = f"{vis['seen']} of {vis['markers']} markers seen; flush_interval {interval:g} s"
    report.add(
        Figure(
            "visibility_p50",
            section,
            "p50",
            vis["p50_s"],
            "s",
            ratio(vis["p50_s"], interval),
            "flush interval",
            note=note,
        )
    )
    complete = vis["seen"] == vis["markers"]
    report.add(
        Figure(
            "visibility_p99",
            section,
            "p99",
            vis["p99_s"],
            "s",
            ratio(vis["p99_s"], interval),
            "flush interval",
            f"≤ flush interval + 0.5 s ({interval + 0.5:g} s)",
            verdict(complete and vis["p99_s"] <= interval + 0.5),
            "" if complete else "some markers never became readable",
        )
    )
    report.add(
        Figure(
            "visibility_max",
            section,
            "max",
            vis["max_s"],
            "s",
            ratio(vis["max_s"], interval),
            "flush interval",
        )
    )
