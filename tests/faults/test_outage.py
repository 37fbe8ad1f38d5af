"""The database goes away under a running writer: a private embedded server stopped and started,
and the network to the run's own server (TimescaleDB in that CI pass) cut and restored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psutil
import pytest
from structlog.testing import capture_logs

from tracewriter import EventKind, ObservabilityService, TraceContext
from tracewriter._records import Event
from tracewriter.embedded import EmbeddedPostgres

from . import Workload, assert_exactly_once, assert_settled, connect, wait_for
from ._proxy import Proxy

OUTAGE_SECONDS = 10.0


def service(dsn: str, **kw: object) -> ObservabilityService:
    options: dict[str, object] = dict(
        flush_interval=0.05,
        max_batch_rows=2000,
        open_row_grace=1.0,
        retry_initial_backoff=0.05,
        retry_max_backoff=0.5,
        connect_timeout=2.0,
    )
    options.update(kw)
    return ObservabilityService(dsn, **options)


async def outage_under_load(
    dsn: str,
    check_dsn: str,
    take_away: Callable[[], Awaitable[None]],
    bring_back: Callable[[], Awaitable[None]],
    seconds: float,
) -> None:
    """Run the workload through a writer on ``dsn``, take the database away for ``seconds``
    under load, bring it back, and check that no recording call raised, that the rows waited
    in the buffer, and that every accepted event reached ``check_dsn`` exactly once."""
    svc = service(dsn)
    await svc.start()
    work = Workload(svc)
    stop = asyncio.Event()
    load = asyncio.create_task(work.run(stop))
    try:

        async def writing() -> bool:
            return work.stats().written > 500

        assert await wait_for(writing, timeout=15)
        await take_away()
        # The load keeps running through the outage; it finishing early means it raised.
        done, _ = await asyncio.wait({load}, timeout=seconds)
        assert not done, load.exception()
        during = work.stats()
        assert during.consecutive_failures > 0 and during.retries > 0
        assert during.buffered + during.in_flight > 0  # kept, waiting for the server
        await bring_back()
        done, _ = await asyncio.wait({load}, timeout=1.0)
        assert not done, load.exception()
    finally:
        stop.set()
        await load
        await bring_back()
    assert await svc.flush(timeout=60)
    stats = work.stats()
    await svc.close()
    assert_settled(stats)
    assert stats.written == work.expected_events() and stats.internal_errors == 0
    async with connect(check_dsn) as conn:
        await assert_exactly_once(conn, work)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_server_stopped_for_ten_seconds_mid_load_loses_and_duplicates_nothing(
    own_server: EmbeddedPostgres, clean_own_db: str
) -> None:
    """With the server stopped for 10 s under load and started again, no recording call raises
    and every accepted event is in the database exactly once."""

    async def stop() -> None:
        await asyncio.to_thread(own_server.stop)

    async def start() -> None:
        await asyncio.to_thread(own_server.start)  # a no-op when it is running

    await outage_under_load(clean_own_db, clean_own_db, stop, start, OUTAGE_SECONDS)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_network_to_the_runs_server_cut_for_five_seconds_loses_and_duplicates_nothing(
    fault_db: str,
) -> None:
    """With every connection to the run's server dropped and refused for 5 s under load, no
    recording call raises and every accepted event is in the database exactly once."""
    proxy = Proxy.for_dsn(fault_db)
    await proxy.start()
    try:
        await outage_under_load(
            proxy.dsn(fault_db), fault_db, proxy.cut, proxy.restore, OUTAGE_SECONDS / 2
        )
    finally:
        await proxy.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_million_enqueues_with_the_database_down_stay_bounded_and_close_on_time(
    own_server: EmbeddedPostgres, clean_own_db: str
) -> None:
    """With the database unreachable, 1,000,000 enqueues keep at most max_buffer_rows events
    (memory bounded, the excess counted as dropped_overflow), and close(timeout=2) returns in
    about 2 s reporting what it dropped."""
    limit = 10_000
    svc = service(clean_own_db, max_buffer_rows=limit, max_batch_rows=1000)
    await svc.start()
    writer = svc.postgres
    assert writer is not None
    process = psutil.Process()
    try:
        await asyncio.to_thread(own_server.stop)
        ctx = TraceContext.new_root()
        base = Event(
            EventKind.SPAN, time.time_ns(), time.time_ns(), ctx.trace_id, None, None, "llm.call",
            "llm", "ok", 3.0, None, None, "u", "s", "kb", None, ("m", "p", 10, 5, None, None),
        )  # fmt: skip
        rss_before = process.memory_info().rss
        peak_held = 0
        for i in range(1_000_000):
            # Each event owns a metadata dict, so keeping them all would cost ~200 MB.
            event = base._replace(span_id=f"{i + 1:016x}", metadata={"i": i, "pad": "x"})
            writer.record(event.flat())
            if i % 20_000 == 0:
                held = writer.stats()
                peak_held = max(peak_held, held.buffered + held.in_flight)
                await asyncio.sleep(0)  # let the flusher fail and back off meanwhile
        rss_growth = process.memory_info().rss - rss_before
        before_close = writer.stats()
        assert before_close.balances()
        assert before_close.enqueued == 1_000_000 and before_close.written == 0
        held = before_close.buffered + before_close.in_flight
        assert peak_held <= limit and held <= limit
        assert before_close.dropped_overflow == 1_000_000 - held
        assert rss_growth < 60 * 2**20, f"RSS grew {rss_growth / 2**20:.0f} MiB"
        with capture_logs() as logs:
            started = time.monotonic()
            await svc.close(timeout=2)
            elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(own_server.start)
    stats = writer.stats()
    assert elapsed < 3.5, f"close(timeout=2) took {elapsed:.2f} s"
    assert stats.balances() and stats.written == 0
    assert stats.dropped_at_close == held
    assert stats.dropped_overflow == 1_000_000
    reported = [e for e in logs if e["event"] == "close_dropped_events"]
    assert reported and reported[0]["dropped"] == held
    closed = [e for e in logs if e["event"] == "writer_closed"]
    assert closed and closed[0]["dropped_at_close"] == held
    async with connect(clean_own_db) as conn:
        assert await conn.fetchval("SELECT count(*) FROM observability.spans") == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_provider_sync_status_tells_the_outage_after_it(fault_db: str) -> None:
    """After the network to the server was cut, provider_sync_status shows the last failure,
    when it happened and how many flushes failed in a row; after recovery, the last success."""
    proxy = Proxy.for_dsn(fault_db)
    await proxy.start()
    svc = service(proxy.dsn(fault_db))
    try:
        await svc.start()
        ctx = TraceContext.new_root()
        svc.log_llm_call(ctx, model="m", duration_ms=1.0)
        assert await svc.flush(timeout=10)
        await proxy.cut()
        cut_at = time.time()
        svc.log_llm_call(ctx, model="m", duration_ms=1.0)

        async def failing() -> bool:
            stats = svc.stats()
            return stats is not None and stats.consecutive_failures >= 3

        assert await wait_for(failing, timeout=20)
        await proxy.restore()
        restored_at = time.time()
        assert await svc.flush(timeout=20)
        streak = svc.stats()
        assert streak is not None and streak.consecutive_failures == 0
    finally:
        await svc.close()
        await proxy.close()
    async with connect(fault_db) as conn:
        row = await conn.fetchrow(
            "SELECT last_error, last_error_at, consecutive_failures, last_success_at, rows_sent "
            "FROM observability.provider_sync_status WHERE provider = 'postgres'"
        )
    assert row is not None
    assert row["last_error"], row
    assert cut_at - 1 <= row["last_error_at"].timestamp() <= restored_at + 1, row
    assert row["consecutive_failures"] >= 3, row
    assert row["last_success_at"] > row["last_error_at"], row
    assert row["rows_sent"] == 2
