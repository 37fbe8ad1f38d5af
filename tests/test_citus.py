"""The schema and the writer on a Citus cluster: distribution by trace_id, isolation, exactly-once.

These run when ``TRACEWRITER_TEST_DSN`` names a Citus coordinator (the fourth pass of ``.ci/run``
uses the cluster ``../shared/citus/setup.sh`` starts) and are skipped on a single node, where
the rest of the suite covers the same paths.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import _citus
import asyncpg
import pytest

from tracewriter import ObservabilityService
from tracewriter import _schema as schema
from tracewriter._config import WriterConfig
from tracewriter._ids import new_span_id, new_trace_id
from tracewriter._pgsink import PostgresSink
from tracewriter._sink import DataSinkError
from tracewriter.migrate import apply_migrations

pytestmark = pytest.mark.timeout(120)

TRACE_TABLES = ("traces", "spans", "chat_messages", "document_events")
LOCAL_TABLES = ("metrics_aggregates", "provider_sync_status", "dead_letters", "applied_batches")


@pytest.fixture(scope="module")
def citus_dsn(server_dsn: str) -> Iterator[str]:
    """A migrated distributed database of this module's own (skip unless the server is Citus)."""
    if not _citus.workers(server_dsn):
        pytest.skip("TRACEWRITER_TEST_DSN is not a Citus coordinator with workers")
    name = f"tw_citus_{uuid.uuid4().hex[:12]}"
    try:
        dsn = _citus.create_database(server_dsn, name)
        apply_migrations(dsn)
        yield dsn
    finally:
        _citus.drop_database(server_dsn, name)


@pytest.fixture
async def conn(citus_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the module's database, with the writer's tables emptied."""
    c = await asyncpg.connect(citus_dsn)
    await _citus.empty_tables(c, (*TRACE_TABLES, *LOCAL_TABLES))
    try:
        yield c
    finally:
        await c.close()


def service(dsn: str) -> ObservabilityService:
    return ObservabilityService(dsn, flush_interval=0.05, open_row_grace=0.1)


def span_row(trace_id: str, **values: Any) -> tuple[Any, ...]:
    """A spans row in the writer's column order; unnamed columns are NULL."""
    now = dt.datetime.now(dt.UTC)
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "timestamp": now,
        "trace_id": trace_id,
        "span_id": new_span_id(),
        "name": "s",
        "status": "ok",
        **values,
    }
    return tuple(row.get(c) for c in schema.SPAN_COLUMNS)


async def record_one_trace(dsn: str) -> str:
    """Record a trace with a span, an LLM call, a chat message and a document event."""
    svc = service(dsn)
    await svc.start()
    try:
        ctx = svc.start_trace("request", user_id="u1", kb_id="kb-1")
        with svc.span(ctx, "retrieve", "retrieval"):
            pass
        svc.log_llm_call(ctx, model="m", provider="p", input_tokens=3, output_tokens=4)
        svc.log_chat_message(ctx, role="user", content="hello")
        svc.log_document_event(ctx, document_id="doc-1", event_type="embed", chunk_count=2)
        svc.end_trace(ctx)
        assert await svc.flush(timeout=30)
        stats = svc.stats()
        assert stats is not None and stats.written == stats.enqueued, stats
    finally:
        await svc.close()
    return ctx.trace_id


async def test_trace_tables_are_distributed_by_trace_id_and_co_located(
    conn: asyncpg.Connection,
) -> None:
    """The four trace tables are hash-distributed by trace_id in one co-location group with the
    configured shard count; the roll-up and bookkeeping tables stay on the coordinator."""
    rows = await conn.fetch(
        "SELECT p.logicalrelid::text AS tbl, p.partmethod::text AS method, "
        "column_to_column_name(p.logicalrelid, p.partkey) AS col, p.colocationid, "
        "(SELECT count(*) FROM pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid) AS shards "
        "FROM pg_dist_partition AS p "
        "WHERE p.logicalrelid::text = ANY($1::text[])",
        [f"observability.{t}" for t in (*TRACE_TABLES, *LOCAL_TABLES)],
    )
    found = {r["tbl"].removeprefix("observability."): r for r in rows}
    assert sorted(found) == sorted(TRACE_TABLES)
    assert {(r["method"], r["col"], r["shards"]) for r in rows} == {
        ("h", "trace_id", _citus.SHARD_COUNT)
    }
    assert len({r["colocationid"] for r in rows}) == 1
    # The partitions are distributed with their parent, DEFAULT included.
    partitions = await conn.fetchval(
        "SELECT count(*) FROM pg_inherits AS i "
        "JOIN pg_class AS parent ON parent.oid = i.inhparent "
        "WHERE parent.oid = 'observability.spans'::regclass "
        "AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = i.inhrelid)"
    )
    assert partitions == 0


async def test_one_trace_is_read_from_one_shard(citus_dsn: str, conn: asyncpg.Connection) -> None:
    """Reading a trace with its spans, chat messages and document events is one task on one
    worker: everything of one trace lives in one shard group."""
    trace_id = await record_one_trace(citus_dsn)
    query = (
        "SELECT t.name, s.span_id, c.content, d.document_id "
        "FROM observability.traces AS t "
        "JOIN observability.spans AS s USING (trace_id) "
        "JOIN observability.chat_messages AS c USING (trace_id) "
        "JOIN observability.document_events AS d USING (trace_id) "
        "WHERE t.trace_id = $1"
    )
    plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", trace_id))
    job = plan[0]["Plan"]["Distributed Query"]["Job"]
    assert job["Task Count"] == 1
    rows = await conn.fetch(query, trace_id)
    assert {(r["name"], r["content"], r["document_id"]) for r in rows} == {
        ("request", "hello", "doc-1")
    }
    assert len({r["span_id"] for r in rows}) == 2  # the span() block and the LLM call


@pytest.mark.parametrize(
    ("column", "value", "sqlstate"),
    [("span_id", "NOT-HEX", "23514"), ("status", None, "23502")],
    ids=["check", "not_null"],
)
async def test_a_worker_refusal_inside_copy_is_a_data_error_with_its_true_sqlstate(
    citus_dsn: str, conn: asyncpg.Connection, column: str, value: Any, sqlstate: str
) -> None:
    """A CHECK or NOT NULL violation a worker raises inside COPY, which the coordinator reports
    as XX000, reaches the flusher as a data error carrying the worker's SQLSTATE, and the good
    rows of the batch are not written by the failed attempt."""
    trace_id = new_trace_id()
    rows = [span_row(trace_id) for _ in range(20)]
    rows[7] = span_row(trace_id, **{column: value})
    columns = list(schema.SPAN_COLUMNS)
    # Without the sink's handling this is all the writer would see: an internal error.
    with pytest.raises(asyncpg.InternalServerError):
        await conn.copy_records_to_table(
            "spans", schema_name="observability", columns=columns, records=rows
        )
    sink = PostgresSink(WriterConfig(dsn=citus_dsn))
    await sink.open()
    try:
        with pytest.raises(DataSinkError) as refused:
            await sink.copy_rows("spans", rows, dedupe=False)
        # The halves the flusher splits the batch into: the good one is written.
        await sink.copy_rows("spans", rows[:7], dedupe=False)
    finally:
        await sink.close(timeout=5)
    assert refused.value.sqlstate == sqlstate
    assert await conn.fetchval("SELECT count(*) FROM observability.spans") == 7


async def test_a_refused_row_is_dead_lettered_and_its_batch_written(
    citus_dsn: str, conn: asyncpg.Connection
) -> None:
    """Through the public API, a span the workers refuse (a CHECK added for the test) ends in
    dead_letters with the worker's SQLSTATE while every other row of its batch is written, and
    the writer's ledger balances."""
    await conn.execute(
        "ALTER TABLE observability.spans ADD CONSTRAINT tw_test_no_poison CHECK (name <> 'poison')"
    )
    try:
        svc = ObservabilityService(citus_dsn, flush_interval=10.0, max_batch_rows=1000)
        await svc.start()
        ctx = svc.start_trace("request")
        for i in range(200):
            svc.log_llm_call(ctx, name="poison" if i == 123 else "ok", model="m", provider="p")
        svc.end_trace(ctx)
        assert await svc.flush(timeout=60)
        stats = svc.stats()
        await svc.close()
    finally:
        await conn.execute("ALTER TABLE observability.spans DROP CONSTRAINT tw_test_no_poison")
    assert stats is not None and stats.balances(), stats
    assert (stats.written, stats.dead_lettered) == (stats.enqueued - 1, 1), stats
    assert await conn.fetchval("SELECT count(*) FROM observability.spans") == 199
    letters = await conn.fetch(
        "SELECT target_table, sqlstate, row_data FROM observability.dead_letters"
    )
    assert [(r["target_table"], r["sqlstate"]) for r in letters] == [("spans", "23514")]
    assert "poison" in letters[0]["row_data"]


async def test_a_replayed_batch_is_stored_once(citus_dsn: str, conn: asyncpg.Connection) -> None:
    """Replaying rows that were already committed — what a retry after an unacknowledged commit
    does — through the de-duplicating COPY and the end-upsert adds nothing on Citus."""
    trace_ids = [new_trace_id() for _ in range(50)]  # spread over every shard
    rows = [span_row(t, status="open") for t in trace_ids for _ in range(4)]
    ends = [
        tuple("ok" if c == "status" else 1.5 if c == "duration_ms" else v
              for c, v in zip(schema.SPAN_COLUMNS, row, strict=True))
        for row in rows[::2]
    ]  # fmt: skip
    sink = PostgresSink(WriterConfig(dsn=citus_dsn))
    await sink.open()
    try:
        await sink.copy_rows("spans", rows, dedupe=False)
        await sink.copy_rows("spans", rows, dedupe=True)
        await sink.upsert_ends("spans", ends)
        await sink.upsert_ends("spans", ends)
    finally:
        await sink.close(timeout=5)
    stored = await conn.fetch(
        "SELECT id::text, count(*) AS n, max(status) AS status FROM observability.spans GROUP BY id"
    )
    assert len(stored) == len(rows) and {r["n"] for r in stored} == {1}
    done = {r[0] for r in ends}
    assert all((r["status"] == "ok") == (r["id"] in done) for r in stored)


async def test_ensure_partitions_moves_default_rows_and_leaves_no_coordinator_copy(
    conn: asyncpg.Connection,
) -> None:
    """A row that landed in DEFAULT is moved into the partition created for its day, readable
    there, and the coordinator keeps no local heap of it (the shards hold the only copy)."""
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
    trace_id = new_trace_id()
    await conn.execute(
        'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id, name) '
        "VALUES ($1, $2, $3, $4, 'late')",
        uuid.uuid4(),
        ahead,
        trace_id,
        new_span_id(),
    )
    assert await conn.fetchval("SELECT count(*) FROM observability.spans_default") == 1
    assert await conn.fetchval("SELECT observability.ensure_partitions(0, 41)") > 0
    partition = f"observability.spans_p{ahead:%Y%m%d}"
    # (tableoid would name the worker's shard; ask the partition itself.)
    assert (
        await conn.fetchval(f"SELECT count(*) FROM {partition} WHERE trace_id = $1", trace_id) == 1
    )
    assert await conn.fetchval("SELECT count(*) FROM observability.spans_default") == 0
    # On the coordinator a distributed table is a shell: any bytes in it are a stale copy.
    assert await conn.fetchval("SELECT pg_relation_size($1::regclass)", partition) == 0
    assert await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
        partition,
    )
