"""The writer's backends killed with pg_terminate_backend, over and over, under sustained load."""

from __future__ import annotations

import asyncio

import _citus
import pytest

from tracewriter import ObservabilityService

from . import Workload, assert_exactly_once, assert_settled, connect, terminate_writer, wait_for

LOAD_SECONDS = 4.0
KILL_EVERY = 0.2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("thread_mode", [False, True], ids=["loop", "thread"])
async def test_backends_killed_every_200ms_lose_and_duplicate_nothing(
    fault_db: str, thread_mode: bool
) -> None:
    """Terminating the writer's backends every 200 ms for 4 s of load raises nothing into the
    recording code, and afterwards every accepted event is in the database exactly once."""
    svc = ObservabilityService(
        fault_db,
        flush_interval=0.02,
        max_batch_rows=1000,
        open_row_grace=0.5,
        retry_initial_backoff=0.02,
        retry_max_backoff=0.2,
        thread_mode=thread_mode,
    )
    await svc.start()
    work = Workload(svc)
    stop = asyncio.Event()
    load = asyncio.create_task(work.run(stop, per_tick=10))
    killed = 0
    try:
        async with connect(fault_db) as admin:
            loop = asyncio.get_running_loop()
            until = loop.time() + LOAD_SECONDS
            while loop.time() < until:
                done, _ = await asyncio.wait({load}, timeout=KILL_EVERY)
                assert not done, load.exception()  # the load only ends by raising
                killed += await terminate_writer(admin)
    finally:
        stop.set()
        await load
    during = work.stats()

    async def settled() -> bool:
        # On Citus a backend killed mid two-phase commit leaves its rows' keys held on a worker
        # until recovered (within a minute by Citus itself): recover them now.
        await _citus.recover_in_doubt(fault_db)
        return await svc.flush(timeout=5)

    # A flush may itself lose a race with a backend killed just before it: ask again.
    assert await wait_for(settled, timeout=30)
    stats = work.stats()
    await svc.close()
    assert killed >= LOAD_SECONDS / KILL_EVERY / 2, f"only {killed} backends terminated"
    assert during.retries > 0
    assert_settled(stats)
    assert stats.written == work.expected_events() and stats.internal_errors == 0
    async with connect(fault_db) as conn:
        await assert_exactly_once(conn, work)
