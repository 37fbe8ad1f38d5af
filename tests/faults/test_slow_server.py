"""A slow server: a lock the test holds blocks the writer's COPY into spans for several seconds."""

from __future__ import annotations

import asyncio

import pytest

from tracewriter import ObservabilityService

from . import (
    WRITER_APP,
    Workload,
    assert_exactly_once,
    assert_settled,
    connect,
    percentile,
    wait_for,
)

HOLD_SECONDS = 3.0
MAX_BUFFER_ROWS = 3000


@pytest.mark.timeout(60)
async def test_a_held_lock_blocks_the_writer_not_the_application(fault_db: str) -> None:
    """While a lock blocks the writer's COPY for 3 s, recording calls keep completing, the full
    buffer drops and counts the excess, and once the lock is released the writer catches up:
    every accepted event is then in the database exactly once."""
    svc = ObservabilityService(
        fault_db,
        flush_interval=0.05,
        max_batch_rows=1000,
        max_buffer_rows=MAX_BUFFER_ROWS,
        open_row_grace=1.0,
        retry_max_backoff=0.5,
    )
    await svc.start()
    work = Workload(svc)
    stop = asyncio.Event()
    load = asyncio.create_task(work.run(stop))
    try:
        async with connect(fault_db) as locker, connect(fault_db) as watcher:

            async def writing() -> bool:
                return work.stats().written > 500

            assert await wait_for(writing, timeout=15)
            calls_before, latencies_before = work.calls, len(work.latencies_ns)
            held = work.stats()
            async with locker.transaction():
                await locker.execute("LOCK TABLE observability.spans IN ACCESS EXCLUSIVE MODE")

                async def writer_waits_on_lock() -> bool:
                    return bool(
                        await watcher.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                            "AND datname = current_database() AND wait_event_type = 'Lock'",
                            WRITER_APP,
                        )
                    )

                assert await wait_for(writer_waits_on_lock, timeout=HOLD_SECONDS)
                done, _ = await asyncio.wait({load}, timeout=HOLD_SECONDS)
                assert not done, load.exception()  # the load only ends by raising
                during = work.stats()
                calls_during = work.calls - calls_before
                hold_latencies = work.latencies_ns[latencies_before:]
            done, _ = await asyncio.wait({load}, timeout=0.5)
            assert not done, load.exception()
    finally:
        stop.set()
        await load
    assert await svc.flush(timeout=30)
    stats = work.stats()
    await svc.close()
    # Reported, not asserted: timings belong to the benchmarks (run with -s or -rP to see).
    print(
        f"record() during the hold: p99 {percentile(hold_latencies, 0.99) / 1000:.1f} µs, "
        f"max {max(hold_latencies) / 1000:.1f} µs; overall p99 "
        f"{percentile(work.latencies_ns, 0.99) / 1000:.1f} µs over {work.calls} calls"
    )
    # The application went on recording while the writer was stuck: more events than the
    # buffer holds, so the excess was dropped and counted rather than waited for.
    assert calls_during > MAX_BUFFER_ROWS
    assert during.dropped_overflow - held.dropped_overflow > 0
    assert during.buffered + during.in_flight <= MAX_BUFFER_ROWS
    assert_settled(stats)
    assert stats.written == work.expected_events() and stats.internal_errors == 0
    async with connect(fault_db) as conn:
        await assert_exactly_once(conn, work)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("thread_mode", [False, True], ids=["loop", "thread"])
async def test_close_under_a_held_lock_returns_on_time_and_writes_nothing_behind(
    fault_db: str, thread_mode: bool
) -> None:
    """close(timeout=1) while a lock blocks the writer's COPY returns in about a second and
    counts what it could not write as dropped; once the lock goes, the cancelled COPY has left
    nothing behind: the table holds exactly the rows counted as written."""
    svc = ObservabilityService(
        fault_db, flush_interval=0.05, max_batch_rows=1000, thread_mode=thread_mode
    )
    await svc.start()
    work = Workload(svc)
    for _ in range(50):
        work.unit()
    assert await svc.flush(timeout=10)
    async with connect(fault_db) as locker, connect(fault_db) as watcher:
        async with locker.transaction():
            await locker.execute("LOCK TABLE observability.spans IN ACCESS EXCLUSIVE MODE")
            for _ in range(50):
                work.unit()

            async def writer_waits_on_lock() -> bool:
                return bool(
                    await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                        "AND datname = current_database() AND wait_event_type = 'Lock'",
                        WRITER_APP,
                    )
                )

            assert await wait_for(writer_waits_on_lock, timeout=5)
            started = asyncio.get_running_loop().time()
            await svc.close(timeout=1)
            elapsed = asyncio.get_running_loop().time() - started
        stats = work.stats()

        async def no_writer_left() -> bool:
            return not await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND datname = current_database()",
                WRITER_APP,
            )

        assert await wait_for(no_writer_left, timeout=5)
        stored = await watcher.fetchval("SELECT count(*) FROM observability.spans")
        distinct = await watcher.fetchval("SELECT count(DISTINCT id) FROM observability.spans")
    assert elapsed < 1.0 + 1.5, f"close(timeout=1) took {elapsed:.2f} s"
    assert stats.balances() and (stats.buffered, stats.in_flight) == (0, 0)
    assert stats.dropped_at_close > 0
    assert stored == distinct == stats.rows_written["spans"]
