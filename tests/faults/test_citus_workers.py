"""Citus: the coordinator's connections to its workers killed over and over, under load."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import _citus
import pytest

from tracewriter import ObservabilityService

from . import Workload, assert_exactly_once, assert_settled, connect, terminate_writer, wait_for

LOAD_SECONDS = 4.0
KILL_EVERY = 0.2


async def kill_worker_connections(worker_dsns: list[str]) -> int:
    """Terminate the coordinator's sessions on every worker's copy of the database."""
    killed = 0
    for dsn in worker_dsns:
        async with connect(dsn) as conn:
            killed += await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name LIKE 'citus_internal%'"
            )
    return killed


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_worker_connections_killed_every_200ms_lose_and_duplicate_nothing(
    server_dsn: str, fault_db: str
) -> None:
    """Terminating, every 200 ms for 4 s of load, the writer's backends on the coordinator and
    the coordinator's connections to the workers (mid-COPY, mid two-phase commit) raises nothing
    into the recording code, and afterwards every accepted event is stored exactly once."""
    if not _citus.workers(server_dsn):
        pytest.skip("TRACEWRITER_TEST_DSN is not a Citus coordinator with workers")
    workers = _citus.worker_dsns(server_dsn, urlsplit(fault_db).path.lstrip("/"))
    svc = ObservabilityService(
        fault_db,
        flush_interval=0.02,
        max_batch_rows=1000,
        open_row_grace=0.5,
        retry_initial_backoff=0.02,
        retry_max_backoff=0.2,
        command_timeout=10.0,
    )
    await svc.start()
    work = Workload(svc)
    stop = asyncio.Event()
    load = asyncio.create_task(work.run(stop, per_tick=10))
    killed = {"coordinator": 0, "workers": 0}
    try:
        async with connect(fault_db) as admin:
            loop = asyncio.get_running_loop()
            until = loop.time() + LOAD_SECONDS
            turn = 0
            while loop.time() < until:
                done, _ = await asyncio.wait({load}, timeout=KILL_EVERY)
                assert not done, load.exception()  # the load only ends by raising
                turn += 1
                if turn % 2:
                    killed["workers"] += await kill_worker_connections(workers)
                else:
                    killed["coordinator"] += await terminate_writer(admin)
    finally:
        stop.set()
        await load
    during = work.stats()

    async def settled() -> bool:
        await _citus.recover_in_doubt(fault_db)  # commits cut off between their two phases
        return await svc.flush(timeout=5)

    assert await wait_for(settled, timeout=60)
    stats = work.stats()
    await svc.close()
    assert killed["workers"] > 0 and killed["coordinator"] > 0, killed
    assert during.retries > 0
    assert_settled(stats)
    assert stats.written == work.expected_events() and stats.internal_errors == 0
    async with connect(fault_db) as conn:
        await assert_exactly_once(conn, work)
