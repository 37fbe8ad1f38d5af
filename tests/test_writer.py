"""The writer end to end against a real PostgreSQL: exactly-once, coalescing, isolation, fork."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import asyncpg
import pytest

import tracewriter._flusher as flusher_module
from tracewriter import _schema as schema
from tracewriter._config import WriterConfig
from tracewriter._ids import new_span_id, new_trace_id
from tracewriter._provider import PostgresProvider
from tracewriter._records import SPAN_ID, Event, EventKind, build

pytestmark = pytest.mark.timeout(180)


def llm(trace_id: str, **kw: Any) -> tuple[Any, ...]:
    now = time.time_ns()
    fields: dict[str, Any] = dict(
        kind=EventKind.SPAN,
        start_ns=now - 3_000_000,
        end_ns=now,
        trace_id=trace_id,
        span_id=new_span_id(),
        parent_span_id=None,
        name="llm.call",
        span_type="llm",
        status="ok",
        duration_ms=3.0,
        error_type=None,
        error_message=None,
        user_id="u1",
        session_id="s1",
        kb_id="kb1",
        metadata={"temperature": 0.2},
        detail=("gpt-x", "openai", 100, 50, 10, None),
    )
    fields.update(kw)
    return Event(**fields).flat()


def config(dsn: str, **kw: Any) -> WriterConfig:
    options: dict[str, Any] = dict(dsn=dsn, flush_interval=0.05, pool_size=4)
    options.update(kw)
    return WriterConfig(**options)


async def test_many_threads_and_tasks_write_every_span_exactly_once(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """200,000 spans from 8 threads and 8 async tasks land exactly once, and the ledger balances."""
    writer = PostgresProvider(config(db_dsn, max_buffer_rows=400_000, max_batch_rows=5000))
    await writer.start()
    trace = new_trace_id()
    per_producer = 12_500
    ids: list[list[str]] = [[] for _ in range(16)]

    def produce(slot: int) -> None:
        for _ in range(per_producer):
            event = llm(trace)
            ids[slot].append(event[SPAN_ID])
            writer.record(event)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()

    async def produce_async(slot: int) -> None:
        for n in range(per_producer):
            event = llm(trace)
            ids[slot].append(event[SPAN_ID])
            writer.record(event)
            if n % 500 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(produce_async(8 + i) for i in range(8)))
    for t in threads:
        await asyncio.to_thread(t.join)
    assert await writer.flush(timeout=120)
    stats = writer.stats()
    await writer.close()
    sent = {s for slot in ids for s in slot}
    assert len(sent) == 200_000
    stored = await pool.fetch("SELECT span_id FROM observability.spans WHERE trace_id = $1", trace)
    assert len(stored) == 200_000
    assert {r["span_id"] for r in stored} == sent
    assert stats.written == 200_000 and stats.dropped_overflow == 0 and stats.balances()


async def test_coalesced_spans_need_no_update_and_late_ends_update_open_rows(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Spans closed within a flush are written with no end-upsert; one open past the grace is
    written open, then completed by a single upsert when it ends."""
    writer = PostgresProvider(config(db_dsn, flush_interval=0.05, open_row_grace=0.2))
    await writer.start()
    trace, t0 = new_trace_id(), time.time_ns()

    def event(kind: str, span_id: str, **kw: Any) -> tuple[Any, ...]:
        return llm(
            trace, **{"kind": kind, "span_id": span_id, "start_ns": t0, "end_ns": None, **kw}
        )

    quick = [new_span_id() for _ in range(100)]
    for s in quick:
        writer.record(event(EventKind.SPAN_START, s, status=None, duration_ms=None))
        writer.record(event(EventKind.SPAN_END, s, end_ns=t0 + 1000, status="ok", duration_ms=1.0))
    assert await writer.flush(timeout=30)
    assert writer.stats().end_upserts == 0
    slow = new_span_id()
    writer.record(event(EventKind.SPAN_START, slow, status=None, duration_ms=None))
    await asyncio.sleep(0.6)  # past the grace: the flusher writes it open on its own
    status = await pool.fetchval("SELECT status FROM observability.spans WHERE span_id = $1", slow)
    assert status == "open"
    writer.record(
        event(EventKind.SPAN_END, slow, status="error", duration_ms=600.0, error_type="Timeout")
    )
    assert await writer.flush(timeout=30)
    stats = writer.stats()
    await writer.close()
    row = await pool.fetchrow(
        "SELECT status, duration_ms, error_type, count(*) OVER () AS n "
        "FROM observability.spans WHERE span_id = $1",
        slow,
    )
    assert (row["status"], row["duration_ms"], row["error_type"], row["n"]) == (
        "error",
        600.0,
        "Timeout",
        1,
    )
    assert stats.end_upserts == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM observability.spans WHERE trace_id = $1", trace)
        == 101
    )
    assert stats.written == 202 and stats.balances()


async def test_rows_the_server_refuses_are_dead_lettered_and_the_rest_written(
    db_dsn: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10,000-row batch with 3 rows the server refuses writes 9,997 rows and 3 dead letters."""
    trace = new_trace_id()
    events = [llm(trace) for _ in range(10_000)]
    poisoned = {events[i][SPAN_ID] for i in (0, 4321, 9999)}
    trace_col = schema.SPAN_COLUMNS.index("trace_id")

    def build_past_the_sanitiser(event: Any) -> tuple[str, tuple[Any, ...]]:
        table, row = build(event)
        # A plain tuple by now (the redaction pass rebuilds it): read it by index.
        if event[SPAN_ID] in poisoned:  # upper-case hex: the CHECK constraint refuses it
            row = (*row[:trace_col], trace.upper(), *row[trace_col + 1 :])
        return table, row

    monkeypatch.setattr(flusher_module, "build", build_past_the_sanitiser)
    writer = PostgresProvider(config(db_dsn, max_batch_rows=10_000, flush_interval=10))
    await writer.start()
    for e in events:
        writer.record(e)
    assert await writer.flush(timeout=60)
    stats = writer.stats()
    await writer.close()
    assert (
        await pool.fetchval("SELECT count(*) FROM observability.spans WHERE trace_id = $1", trace)
        == 9_997
    )
    letters = await pool.fetch(
        "SELECT target_table, row_data, sqlstate FROM observability.dead_letters"
    )
    assert len(letters) == 3
    assert {r["target_table"] for r in letters} == {"spans"}
    assert {r["sqlstate"] for r in letters} == {"23514"}
    assert all(any(s in r["row_data"] for s in poisoned) for r in letters)  # type: ignore[operator]
    assert (stats.written, stats.dead_lettered) == (9_997, 3) and stats.balances()


async def test_metrics_and_sync_status_follow_the_written_rows(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Written LLM spans roll up into metrics_aggregates and provider_sync_status counts them."""
    writer = PostgresProvider(config(db_dsn))
    await writer.start()
    trace = new_trace_id()
    for i in range(40):
        writer.record(llm(trace, duration_ms=float(i + 1), detail=("m-a", "p", 10, 5, None, None)))
    assert await writer.flush(timeout=30)
    await writer.close()
    row = await pool.fetchrow(
        "SELECT sum(count) AS n, sum(sum) AS total, min(min) AS lo, max(max) AS hi "
        "FROM observability.metrics_aggregates WHERE metric = 'span.duration_ms' AND model = 'm-a'"
    )
    assert row is not None
    assert (row["n"], row["total"], row["lo"], row["hi"]) == (40, sum(range(1, 41)), 1.0, 40.0)
    tokens = await pool.fetchval(
        "SELECT sum(sum) FROM observability.metrics_aggregates WHERE metric = 'llm.input_tokens'"
    )
    assert tokens == 400
    sent = await pool.fetchval(
        "SELECT rows_sent FROM observability.provider_sync_status WHERE provider = 'postgres'"
    )
    assert sent >= 40


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_forked_child_writes_with_its_own_writer_and_parent_is_undisturbed(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """After fork the child gets a fresh writer that works; the parent's keeps working too."""
    cfg = config(db_dsn, thread_mode=True)
    writer = PostgresProvider(cfg)
    writer.start_sync()
    parent_trace, child_trace = new_trace_id(), new_trace_id()
    for _ in range(10):
        writer.record(llm(parent_trace))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            inherited_stats = writer.stats()
            writer.start_sync()
            for _ in range(25):
                writer.record(llm(child_trace))
            ok = writer.flush_sync(timeout=30)
            stats = writer.stats()
            writer.close_sync(timeout=5)
            report = f"{inherited_stats.enqueued} {int(ok)} {stats.written} {int(stats.balances())}"
            os.write(write_fd, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    report = os.read(read_fd, 100).decode().split()
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == ["0", "1", "25", "1"]  # the child inherited none of the parent's events
    for _ in range(10):
        writer.record(llm(parent_trace))
    assert await asyncio.to_thread(writer.flush_sync, 30)
    stats = writer.stats()
    await asyncio.to_thread(writer.close_sync, 5)
    count = "SELECT count(*) FROM observability.spans WHERE trace_id = $1"
    assert await pool.fetchval(count, parent_trace) == 20
    assert await pool.fetchval(count, child_trace) == 25
    assert stats.written == 20 and stats.balances()
