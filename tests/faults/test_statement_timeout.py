"""statement_timeout cancelling the writer's flushes: retried, and nothing written twice."""

from __future__ import annotations

import asyncio

import _citus
import pytest

from tracewriter import ObservabilityService

from . import Workload, assert_exactly_once, assert_settled, connect, wait_for

HOLD_SECONDS = 1.5


@pytest.mark.timeout(60)
async def test_statement_timeout_on_a_flush_is_retried_without_duplicates(fault_db: str) -> None:
    """With statement_timeout = 200ms (3 s on Citus) for the writer's database and a lock that
    makes its COPY run past it, the cancelled flushes are retried (counted, never raised), and
    once the lock goes every accepted event is in the database exactly once."""
    async with connect(fault_db) as admin:
        database = await admin.fetchval("SELECT current_database()")
        # A new backend's first statement on Citus' distributed tables takes ~1 s here (it
        # loads the shard metadata and connects to the workers); 200 ms would cancel it every
        # time, so the flush would never get through. Past that, statements take milliseconds.
        citus = await admin.fetchval("SELECT to_regclass('pg_catalog.pg_dist_partition')")
        timeout_ms = 3000 if citus else 200
        await admin.execute(f'ALTER DATABASE "{database}" SET statement_timeout = {timeout_ms}')
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
        async with connect(fault_db) as locker:
            await locker.execute("SET statement_timeout = 0")

            async def writing() -> bool:
                return work.stats().written > 100

            assert await wait_for(writing, timeout=15)
            async with locker.transaction():
                await locker.execute("LOCK TABLE observability.spans IN ACCESS EXCLUSIVE MODE")

                async def timed_out() -> bool:
                    error = work.stats().last_error or ""
                    return "statement timeout" in error

                assert await wait_for(timed_out, timeout=HOLD_SECONDS * 2 + timeout_ms / 1000)

                async def retried() -> bool:
                    return work.stats().retries >= 2 or load.done()

                # The lock stays until the retry has been cancelled too: each attempt waits
                # out the whole timeout, and on Citus the retry (staged, to de-duplicate)
                # takes a while more to start, so a fixed hold was a race against the clock.
                assert await wait_for(retried, timeout=HOLD_SECONDS + 3 * timeout_ms / 1000 + 10)
                done, _ = await asyncio.wait({load}, timeout=HOLD_SECONDS)
                assert not done, load.exception()  # the load only ends by raising
                during = work.stats()
    finally:
        stop.set()
        await load

    async def settled() -> bool:
        # On Citus a COPY cancelled mid two-phase commit leaves its rows' keys held on a worker
        # until recovered (within a minute by Citus itself): recover them now.
        await _citus.recover_in_doubt(fault_db)
        return await svc.flush(timeout=5)

    assert await wait_for(settled, timeout=30)
    stats = work.stats()
    await svc.close()
    assert during.retries >= 2 and during.consecutive_failures > 0
    assert_settled(stats)
    assert stats.written == work.expected_events() and stats.internal_errors == 0
    async with connect(fault_db) as conn:
        await assert_exactly_once(conn, work)
