"""The database refusing writes (default_transaction_read_only): logged, retried, counted."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from tracewriter import ObservabilityService

from . import Workload, assert_exactly_once, assert_settled, connect, terminate_writer, wait_for


@pytest.mark.timeout(60)
async def test_a_read_only_database_is_retried_until_it_accepts_writes(fault_db: str) -> None:
    """While the database is read-only the writer logs and counts failed flushes and keeps the
    events (nothing raises into the application); once writes are allowed again every accepted
    event is in the database exactly once."""
    svc = ObservabilityService(
        fault_db,
        flush_interval=0.05,
        max_batch_rows=1000,
        open_row_grace=0.5,
        retry_initial_backoff=0.05,
        retry_max_backoff=0.3,
    )
    await svc.start()
    work = Workload(svc)
    stop = asyncio.Event()
    load = asyncio.create_task(work.run(stop, per_tick=2))
    try:
        async with connect(fault_db) as admin:
            database = await admin.fetchval("SELECT current_database()")

            async def writing() -> bool:
                return work.stats().written > 100

            assert await wait_for(writing, timeout=15)
            with capture_logs() as logs:
                await admin.execute(
                    f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
                )
                # Sessions read the setting when they start: make the writer open new ones.
                await terminate_writer(admin)

                async def refused() -> bool:
                    return "read-only" in (work.stats().last_error or "")

                assert await wait_for(refused, timeout=10)
                done, _ = await asyncio.wait({load}, timeout=1.0)
                assert not done, load.exception()  # the load only ends by raising
                during = work.stats()
                await admin.execute(
                    f'ALTER DATABASE "{database}" RESET default_transaction_read_only'
                )
                await terminate_writer(admin)
            done, _ = await asyncio.wait({load}, timeout=0.5)
            assert not done, load.exception()
    finally:
        stop.set()
        await load
    assert await svc.flush(timeout=30)
    stats = work.stats()
    await svc.close()
    assert during.consecutive_failures > 0 and during.retries > 0
    assert during.buffered + during.in_flight > 0
    # Logged (rate-limited: the first failure of the episode, then once per interval).
    assert any(e["event"] == "flush_failed" and e["log_level"] == "warning" for e in logs)
    assert "read-only transaction" in (during.last_error or "")
    assert_settled(stats)
    assert stats.written == work.expected_events() and stats.internal_errors == 0
    async with connect(fault_db) as conn:
        await assert_exactly_once(conn, work)
