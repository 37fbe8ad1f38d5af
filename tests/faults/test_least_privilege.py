"""The writer connected as a login role that has only tracewriter_writer's privileges.

What the role may and may not do statement by statement is pinned in tests/test_roles.py; this
checks that the writer's every path works with no more than that: COPY, the end-upsert of a
span written open, the metrics and status upserts, partition maintenance, dead letters, and
the staging-table retry after its backends are killed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import _citus
import pytest

import tracewriter._flusher as flusher_module
from tracewriter import ObservabilityService
from tracewriter import _schema as schema
from tracewriter._records import SPAN_ID, EventTuple, build

from . import Workload, assert_exactly_once, assert_settled, connect, terminate_writer, wait_for
from .conftest import _admin


@pytest.fixture
def writer_role_dsn(server_dsn: str, fault_db: str) -> Iterator[str]:
    """A DSN for a fresh LOGIN role whose only grant is membership of tracewriter_writer."""
    user = f"tw_login_{uuid.uuid4().hex[:12]}"

    async def has_group() -> bool:
        async with connect(server_dsn) as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_roles WHERE rolname = 'tracewriter_writer'"
                )
            )

    if not asyncio.run(has_group()):
        pytest.skip("the test server's role may not create roles, so 0002.roles made none")
    _admin(server_dsn, f"CREATE ROLE {user} LOGIN IN ROLE tracewriter_writer")
    parts = urlsplit(fault_db)
    host = parts.netloc.rpartition("@")[2]
    try:
        yield urlunsplit(parts._replace(netloc=f"{quote(user)}@{host}"))
    finally:
        _admin(
            server_dsn,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'",
            f"DROP ROLE IF EXISTS {user}",
        )


@pytest.mark.timeout(60)
async def test_the_writer_works_with_only_the_writer_role(
    writer_role_dsn: str, fault_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a login role granted tracewriter_writer, the writer writes without a single failure
    (COPY, end-upserts, metrics, status, partitions, dead letters), then retries through the
    staging table while its backends are killed, and every accepted event lands exactly once."""
    poisoned: set[str] = set()
    trace_col = schema.SPAN_COLUMNS.index("trace_id")

    def build_past_the_sanitiser(event: EventTuple) -> tuple[str, tuple[Any, ...]]:
        table, row = build(event)
        if event[SPAN_ID] in poisoned:  # upper-case hex: the CHECK constraint refuses it
            row = (*row[:trace_col], row[trace_col].upper(), *row[trace_col + 1 :])
        return table, row

    monkeypatch.setattr(flusher_module, "build", build_past_the_sanitiser)
    svc = ObservabilityService(
        writer_role_dsn,
        flush_interval=0.05,
        max_batch_rows=1000,
        open_row_grace=0.3,
        retry_initial_backoff=0.02,
        retry_max_backoff=0.2,
    )
    await svc.start()
    work = Workload(svc)
    for _ in range(200):
        work.unit()
    ctx = svc.start_trace("privileges")
    work.traces.add(ctx.trace_id)
    refused = svc.log_llm_call(ctx, model="refused")
    poisoned.add(refused)
    left_open = svc.span(ctx, "slow", "tool")
    open_id = left_open.__enter__()
    work.spans.add(open_id)

    async def written_open() -> bool:
        return work.stats().written >= work.expected_events() - 3  # held: the open span, trace

    assert await wait_for(written_open, timeout=10)

    async def open_rows_written() -> bool:  # past the grace: the span and trace written open
        stats = work.stats()
        return stats.written + stats.dead_lettered >= work.expected_events()

    # Waited for, not slept: through a Citus coordinator a flush can outlast a fixed pause.
    assert await wait_for(open_rows_written, timeout=10)
    left_open.__exit__(None, None, None)
    svc.end_trace(ctx)
    assert await svc.flush(timeout=10)
    clean = work.stats()
    assert (clean.retries, clean.internal_errors, clean.last_error) == (0, 0, None), clean
    assert clean.end_upserts >= 1 and clean.dead_lettered == 1

    stop = asyncio.Event()
    load = asyncio.create_task(work.run(stop, per_tick=10))
    killed = 0
    try:
        async with connect(fault_db) as admin:
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                done, _ = await asyncio.wait({load}, timeout=0.2)
                assert not done, load.exception()
                killed += await terminate_writer(admin)
    finally:
        stop.set()
        await load

    async def settled() -> bool:
        # On Citus a backend killed mid two-phase commit leaves its rows' keys held on a worker
        # until recovered (within a minute by Citus itself): recover them now.
        await _citus.recover_in_doubt(fault_db)
        return await svc.flush(timeout=5)

    assert await wait_for(settled, timeout=30)
    stats = work.stats()
    await svc.close()
    assert killed > 0 and stats.retries > 0
    assert_settled(stats)
    assert stats.written + stats.dead_lettered == work.expected_events()
    work.spans.discard(refused)
    async with connect(fault_db) as conn:
        await assert_exactly_once(conn, work)
        status = await conn.fetchval(
            "SELECT status FROM observability.spans WHERE span_id = $1", open_id
        )
        assert status == "ok"  # written open, then completed by the end-upsert
        letters = await conn.fetch("SELECT row_data FROM observability.dead_letters")
        assert len(letters) == 1 and refused in letters[0]["row_data"]
        assert await conn.fetchval("SELECT count(*) FROM observability.metrics_aggregates") > 0
        sent = await conn.fetchval("SELECT sum(rows_sent) FROM observability.provider_sync_status")
        assert sent > 0
