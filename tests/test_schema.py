"""The schema as migrated: catalog shape, CHECKs, histogram functions and partitioning.

Catalog and function tests run on the run's shared database (``db_dsn``). Tests that create or
drop partitions get a private database so that they cannot disturb other tests.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import _citus
import asyncpg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tracewriter._ids import is_valid_span_id, is_valid_trace_id
from tracewriter.migrate import apply_migrations

# conftest's async fixtures (``pool``) live on the session's event loop; run the tests there too.
pytestmark = pytest.mark.asyncio(loop_scope="session")

TIME_PARTITIONED = {
    "traces": timedelta(days=1),
    "spans": timedelta(days=1),
    "document_events": timedelta(days=1),
    "chat_messages": timedelta(days=7),
    "metrics_aggregates": timedelta(days=7),
}

# (column, type, nullable) in table order, as information_schema reports them (udt_name).
COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "traces": [
        ("id", "uuid", False),
        ("timestamp", "timestamptz", False),
        ("trace_id", "text", False),
        ("span_id", "text", False),
        ("name", "text", True),
        ("user_id", "text", True),
        ("session_id", "text", True),
        ("kb_id", "text", True),
        ("status", "text", False),
        ("duration_ms", "float8", True),
        ("error_type", "text", True),
        ("error_message", "text", True),
        ("metadata", "jsonb", True),
    ],
    "spans": [
        ("id", "uuid", False),
        ("timestamp", "timestamptz", False),
        ("trace_id", "text", False),
        ("span_id", "text", False),
        ("parent_span_id", "text", True),
        ("name", "text", True),
        ("span_type", "text", True),
        ("status", "text", False),
        ("duration_ms", "float8", True),
        ("error_type", "text", True),
        ("error_message", "text", True),
        ("model", "text", True),
        ("provider", "text", True),
        ("input_tokens", "int4", True),
        ("output_tokens", "int4", True),
        ("cached_input_tokens", "int4", True),
        ("reasoning_tokens", "int4", True),
        ("user_id", "text", True),
        ("session_id", "text", True),
        ("kb_id", "text", True),
        ("metadata", "jsonb", True),
        # migration 0004: the cost of an LLM call and where its prices came from
        ("cost_usd", "numeric", True),
        ("price_source", "text", True),
        ("price_version", "text", True),
    ],
    "chat_messages": [
        ("id", "uuid", False),
        ("timestamp", "timestamptz", False),
        ("trace_id", "text", True),
        ("span_id", "text", True),
        ("session_id", "text", True),
        ("user_id", "text", True),
        ("kb_id", "text", True),
        ("role", "text", False),
        ("content", "text", False),
        ("content_preview", "text", False),
        ("token_count", "int4", True),
        ("metadata", "jsonb", True),
    ],
    "document_events": [
        ("id", "uuid", False),
        ("timestamp", "timestamptz", False),
        ("trace_id", "text", True),
        ("kb_id", "text", False),
        ("document_id", "text", False),
        ("event_type", "text", False),
        ("status", "text", False),
        ("duration_ms", "float8", True),
        ("chunk_count", "int4", True),
        ("error_type", "text", True),
        ("error_message", "text", True),
        ("metadata", "jsonb", True),
    ],
    "metrics_aggregates": [
        ("id", "uuid", False),
        ("timestamp", "timestamptz", False),
        ("metric", "text", False),
        ("span_type", "text", False),
        ("model", "text", False),
        ("kb_id", "text", False),
        ("status", "text", False),
        ("count", "int8", False),
        ("sum", "float8", False),
        ("min", "float8", True),
        ("max", "float8", True),
        # nullable since 0004, which adds the sketch that supersedes it
        ("histogram", "_int8", True),
        ("sketch", "_int8", True),
    ],
    "provider_sync_status": [
        ("provider", "text", False),
        ("last_flush_at", "timestamptz", True),
        ("last_success_at", "timestamptz", True),
        ("last_error", "text", True),
        ("last_error_at", "timestamptz", True),
        ("rows_sent", "int8", False),
        ("rows_failed", "int8", False),
        ("rows_dropped", "int8", False),
        ("updated_at", "timestamptz", False),
        ("consecutive_failures", "int4", False),
    ],
    "dead_letters": [
        ("id", "int8", False),
        ("created_at", "timestamptz", False),
        ("target_table", "text", False),
        ("row_data", "text", False),
        ("error", "text", False),
        ("sqlstate", "text", True),
    ],
    "applied_batches": [
        ("batch_id", "uuid", False),
        ("applied_at", "timestamptz", False),
    ],
}

# The four trace tables are keyed by trace_id first (sql/0005.trace_keys.sql): Citus distributes
# them by it. chat_messages and document_events hold theirs as a UNIQUE key until their trace_id
# may be made NOT NULL; metrics_aggregates, never distributed, keeps (id, "timestamp").
TRACE_KEY = ["trace_id", "id", "timestamp"]
PRIMARY_KEYS = {
    "traces": TRACE_KEY,
    "spans": TRACE_KEY,
    "chat_messages": TRACE_KEY,
    "document_events": TRACE_KEY,
    "metrics_aggregates": ["id", "timestamp"],
    "provider_sync_status": ["provider"],
    "dead_letters": ["id"],
    "applied_batches": ["batch_id"],
}

# index name -> (table, the definition from USING on, as pg_get_indexdef prints it). No trace
# table has an index of trace_id alone: its key begins with trace_id (sql/0006).
INDEXES = {
    "traces_timestamp_idx": ("traces", 'btree ("timestamp" DESC)'),
    "traces_user_id_timestamp_idx": ("traces", 'btree (user_id, "timestamp" DESC)'),
    "traces_session_id_timestamp_idx": ("traces", 'btree (session_id, "timestamp" DESC)'),
    "traces_kb_id_timestamp_idx": ("traces", 'btree (kb_id, "timestamp" DESC)'),
    "traces_error_timestamp_idx": (
        "traces",
        "btree (\"timestamp\" DESC) WHERE (status = 'error'::text)",
    ),
    "spans_timestamp_idx": ("spans", 'btree ("timestamp" DESC)'),
    "spans_span_type_timestamp_idx": ("spans", 'btree (span_type, "timestamp" DESC)'),
    "spans_model_timestamp_idx": (
        "spans",
        'btree (model, "timestamp" DESC) WHERE (model IS NOT NULL)',
    ),
    "spans_error_timestamp_idx": (
        "spans",
        "btree (\"timestamp\" DESC) WHERE (status = 'error'::text)",
    ),
    "chat_messages_timestamp_idx": ("chat_messages", 'btree ("timestamp" DESC)'),
    "chat_messages_user_id_timestamp_idx": (
        "chat_messages",
        'btree (user_id, "timestamp" DESC)',
    ),
    "chat_messages_session_id_timestamp_idx": (
        "chat_messages",
        'btree (session_id, "timestamp" DESC)',
    ),
    "chat_messages_kb_id_timestamp_idx": ("chat_messages", 'btree (kb_id, "timestamp" DESC)'),
    "document_events_timestamp_idx": ("document_events", 'btree ("timestamp" DESC)'),
    "document_events_kb_id_timestamp_idx": (
        "document_events",
        'btree (kb_id, "timestamp" DESC)',
    ),
    "document_events_document_id_timestamp_idx": (
        "document_events",
        'btree (kb_id, document_id, "timestamp" DESC)',
    ),
    "document_events_error_timestamp_idx": (
        "document_events",
        "btree (\"timestamp\" DESC) WHERE (status = 'error'::text)",
    ),
    "metrics_aggregates_bucket_key": (
        "metrics_aggregates",
        'btree ("timestamp", metric, span_type, model, kb_id, status)',
    ),
    "metrics_aggregates_metric_timestamp_idx": (
        "metrics_aggregates",
        'btree (metric, "timestamp" DESC)',
    ),
    "dead_letters_created_at_idx": ("dead_letters", "btree (created_at)"),
    "applied_batches_applied_at_idx": ("applied_batches", "btree (applied_at)"),
}

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
BUCKETS = 40


def with_database(dsn: str, database: str) -> str:
    """Return the URI ``dsn`` pointing at ``database``."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def admin(server_dsn: str, sql: str) -> None:
    """Run one statement outside a transaction on the server's maintenance database."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql)


def create_migrated_database(server_dsn: str, prefix: str, *, partitioning: str = "") -> str:
    """Create a uniquely named database on the server, migrate it, and return its DSN.

    ``partitioning`` ('native' or 'timescaledb') forces the migration's choice, so the native
    path is tested on a TimescaleDB server too; empty lets the migration decide.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    dsn = _citus.create_database(server_dsn, name)  # distributed on a Citus cluster
    try:
        if partitioning:
            forced = make_conninfo(dsn, options=f"-c tracewriter.partitioning={partitioning}")
            apply_migrations(forced)
        else:
            apply_migrations(dsn)
    except BaseException:
        drop_database(server_dsn, dsn)
        raise
    return dsn


def drop_database(server_dsn: str, dsn: str) -> None:
    """Drop the database ``dsn`` names, disconnecting anyone still on it."""
    _citus.drop_database(server_dsn, urlsplit(dsn).path.lstrip("/"))


@pytest.fixture
def native_private_db(server_dsn: str) -> Iterator[str]:
    """A private database of this test's own, on native partitions whatever the server offers."""
    dsn = create_migrated_database(server_dsn, "tw_schema", partitioning="native")
    try:
        yield dsn
    finally:
        drop_database(server_dsn, dsn)


@pytest.fixture(scope="module")
def native_module_db(server_dsn: str) -> Iterator[str]:
    """A natively partitioned database shared by this module's tests that only add rows."""
    dsn = create_migrated_database(server_dsn, "tw_schema", partitioning="native")
    try:
        yield dsn
    finally:
        drop_database(server_dsn, dsn)


def partition_of(relation: str) -> str:
    """The partition a row's ``tableoid::regclass`` names: on Citus the query runs on a worker
    and names the partition's shard (``traces_p20261130_102022``); drop the shard id."""
    return re.sub(r"_\d+$", "", relation)


async def connect_native(dsn: str) -> asyncpg.Connection:
    """Connect to ``dsn``, a database migrated onto native partitions."""
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT observability.partitioning_mode()") == "native"
    return conn


@pytest.fixture
async def native(native_module_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's natively partitioned database."""
    conn = await connect_native(native_module_db)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def native_private(native_private_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a private, natively partitioned database."""
    conn = await connect_native(native_private_db)
    try:
        yield conn
    finally:
        await conn.close()


def bucket(value: float) -> int:
    """The histogram bucket of ``value``, computed independently of the library."""
    if value < 1:
        return 0
    return min(math.floor(2 * math.log2(value)) + 1, BUCKETS - 1)


def histogram(values: list[float]) -> list[int]:
    """A 40-bucket histogram of ``values``."""
    counts = [0] * BUCKETS
    for value in values:
        counts[bucket(value)] += 1
    return counts


def utc_day(offset_days: int = 0) -> date:
    """Today's date in UTC, shifted by ``offset_days``."""
    return datetime.now(UTC).date() + timedelta(days=offset_days)


def noon(day: date) -> datetime:
    """Midday UTC of ``day``: far from any partition edge."""
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


async def insert_trace(conn: asyncpg.Connection, ts: datetime, **overrides: object) -> uuid.UUID:
    """Insert a minimal trace row at ``ts``; return its id."""
    row: dict[str, object] = {"id": uuid.uuid4(), "timestamp": ts, "trace_id": TRACE_ID}
    row["span_id"] = SPAN_ID
    row.update(overrides)
    columns = ", ".join(f'"{c}"' for c in row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await conn.execute(
        f"INSERT INTO observability.traces ({columns}) VALUES ({params})", *row.values()
    )
    return row["id"]  # type: ignore[return-value]


async def partitions(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Partition name -> bound expression for ``table``."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        f"observability.{table}",
    )
    return {r["relname"]: r["bound"] for r in rows}


async def bounds(conn: asyncpg.Connection, bound: str) -> tuple[datetime, datetime]:
    """The (from, to) of a range partition bound, read back as timestamptz."""
    match = re.fullmatch(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)", bound)
    assert match, bound
    row = await conn.fetchrow(
        "SELECT $1::text::timestamptz AS lo, $2::text::timestamptz AS hi",
        match.group(1),
        match.group(2),
    )
    assert row is not None
    return row["lo"], row["hi"]


# --- catalog --------------------------------------------------------------------------------------


async def test_every_table_has_the_designed_columns(pool: asyncpg.Pool) -> None:
    """Each table has exactly the designed columns, in order, with their types and nullability."""
    rows = await pool.fetch(
        "SELECT table_name, column_name, udt_name, is_nullable = 'YES' AS nullable "
        "FROM information_schema.columns WHERE table_schema = 'observability' "
        "ORDER BY table_name, ordinal_position"
    )
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for r in rows:
        if r["table_name"] in COLUMNS:
            found.setdefault(r["table_name"], []).append(
                (r["column_name"], r["udt_name"], r["nullable"])
            )
    assert found == COLUMNS


async def test_defaults_are_as_designed(pool: asyncpg.Pool) -> None:
    """Status columns default to 'open', metric dimensions to '', counters to 0, times to now()."""
    rows = await pool.fetch(
        "SELECT table_name, column_name, column_default FROM information_schema.columns "
        "WHERE table_schema = 'observability' AND column_default IS NOT NULL"
    )
    defaults = {(r["table_name"], r["column_name"]): r["column_default"] for r in rows}
    assert defaults[("traces", "status")] == "'open'::text"
    assert defaults[("spans", "status")] == "'open'::text"
    for dimension in ("span_type", "model", "kb_id", "status"):
        assert defaults[("metrics_aggregates", dimension)] == "''::text"
    for counter in ("rows_sent", "rows_failed", "rows_dropped"):
        assert defaults[("provider_sync_status", counter)] == "0"
    assert defaults[("provider_sync_status", "updated_at")] == "now()"
    assert defaults[("dead_letters", "created_at")] == "now()"
    assert defaults[("applied_batches", "applied_at")] == "now()"
    identity = await pool.fetchval(
        "SELECT identity_generation FROM information_schema.columns "
        "WHERE table_schema = 'observability' AND table_name = 'dead_letters' "
        "AND column_name = 'id'"
    )
    assert identity == "ALWAYS"


async def test_primary_keys_are_as_designed(pool: asyncpg.Pool) -> None:
    """Trace tables are keyed by (trace_id, id, "timestamp"), the rest as before, on every path."""
    rows = await pool.fetch(
        "SELECT c.conrelid::regclass::text AS tbl, "
        "array_agg(a.attname ORDER BY k.ord) AS cols "
        "FROM pg_constraint c "
        "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
        "WHERE (c.contype = 'p' OR c.conname LIKE '%\\_trace\\_key') "
        "AND c.connamespace = 'observability'::regnamespace "
        "AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.conrelid) "
        "GROUP BY c.conrelid"
    )
    found = {r["tbl"].removeprefix("observability."): list(r["cols"]) for r in rows}
    assert found == PRIMARY_KEYS


async def test_indexes_are_as_designed(pool: asyncpg.Pool) -> None:
    """Every designed index exists on its table with its columns, order and predicate."""
    rows = await pool.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = 'observability' AND indexname = ANY($1::text[])",
        list(INDEXES),
    )
    found = {r["indexname"]: (r["tablename"], r["indexdef"].split(" USING ", 1)[1]) for r in rows}
    assert found == INDEXES
    unique = await pool.fetchval(
        "SELECT indisunique FROM pg_index "
        "WHERE indexrelid = 'observability.metrics_aggregates_bucket_key'::regclass"
    )
    assert unique is True


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("trace_id", TRACE_ID[:31]),
        ("trace_id", TRACE_ID + "0"),
        ("trace_id", TRACE_ID.upper()),
        ("trace_id", "0" * 32),
        ("trace_id", "g" * 32),
        ("span_id", SPAN_ID[:15]),
        ("span_id", SPAN_ID.upper()),
        ("span_id", "0" * 16),
        ("trace_id", TRACE_ID[:31] + "\n"),
        ("trace_id", TRACE_ID[:31] + "é"),
        ("span_id", " " + SPAN_ID[1:]),
    ],
)
async def test_id_checks_refuse_malformed_ids(pool: asyncpg.Pool, column: str, value: str) -> None:
    """A trace_id or span_id that is not lowercase hex of the exact length is refused."""
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await insert_trace(conn, datetime.now(UTC), **{column: value})


# Ids around the edges of the rule: lengths one off, every non-hex neighbour of the hex ranges,
# whitespace and a newline at either end (a regex `$` might match before it), a character of
# two bytes (character and byte counts differ), all zeros.
_ID_CANDIDATES = (
    [TRACE_ID, SPAN_ID, "0" * 32, "0" * 16, "0" * 31 + "1", "f" * 16, "", "a"]
    + [TRACE_ID[:n] for n in (15, 17, 31)]
    + [TRACE_ID + "0", SPAN_ID + "0", TRACE_ID.upper(), SPAN_ID.upper()]
    + [SPAN_ID[:15] + c for c in "/:@G`g-. \t\nå"]
    + [TRACE_ID[:31] + c for c in "/:@G`g-. \t\nå"]
    + [c + SPAN_ID[1:] for c in " \nA"]
    + [SPAN_ID + "\n", TRACE_ID + "\n", SPAN_ID[:8] + "\n" + SPAN_ID[9:], "é" * 16, "é" * 32]
)


async def test_id_checks_accept_exactly_what_the_writer_generates(pool: asyncpg.Pool) -> None:
    """Every id CHECK of every trace table accepts a value if and only if the writer's own
    validator does: the cheaper expression of 0007 is the same rule as 0001's regex."""
    async with pool.acquire() as conn:
        checks = await conn.fetch(
            "SELECT conrelid::regclass::text AS tbl, conname, "
            "pg_get_expr(conbin, conrelid) AS expr FROM pg_constraint "
            "WHERE contype = 'c' AND (conname LIKE '%span_id_check' "
            "OR conname LIKE '%trace_id_check')"
        )
        seen = set()
        for check in checks:
            table = check["tbl"].removeprefix("observability.")
            if table not in ("traces", "spans", "chat_messages", "document_events"):
                continue  # a partition's or chunk's copy of its table's constraint
            seen.add(check["conname"])
            column = check["conname"].removeprefix(table + "_").removesuffix("_check")
            valid = is_valid_trace_id if column == "trace_id" else is_valid_span_id
            # The expression names the column unqualified: give it a row with that column.
            verdicts = await conn.fetch(
                f"SELECT v.x AS value, ({check['expr']}) AS ok "
                f"FROM unnest($1::text[]) AS v(x), LATERAL (SELECT v.x AS {column}) AS c",
                _ID_CANDIDATES,
            )
            assert {r["value"]: r["ok"] for r in verdicts} == {
                value: valid(value) for value in _ID_CANDIDATES
            }, check["conname"]
    assert seen == {
        "traces_trace_id_check", "traces_span_id_check", "spans_trace_id_check",
        "spans_span_id_check", "spans_parent_span_id_check", "chat_messages_trace_id_check",
        "chat_messages_span_id_check", "document_events_trace_id_check",
    }  # fmt: skip


async def test_id_checks_apply_to_every_table_with_ids(pool: asyncpg.Pool) -> None:
    """Spans, chat messages and document events refuse upper-case ids as traces do."""
    now = datetime.now(UTC)
    bad = TRACE_ID.upper()
    statements = [
        (
            'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id) '
            "VALUES ($1, $2, $3, $4)",
            (uuid.uuid4(), now, TRACE_ID, SPAN_ID.upper()),
        ),
        (
            'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id, '
            "parent_span_id) VALUES ($1, $2, $3, $4, $5)",
            (uuid.uuid4(), now, TRACE_ID, SPAN_ID, "1234"),
        ),
        (
            'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, '
            "content, content_preview) VALUES ($1, $2, $3, 'user', 'hi', 'hi')",
            (uuid.uuid4(), now, bad),
        ),
        (
            'INSERT INTO observability.document_events (id, "timestamp", trace_id, kb_id, '
            "document_id, event_type, status) VALUES ($1, $2, $3, 'kb', 'doc', 'parse', 'ok')",
            (uuid.uuid4(), now, bad),
        ),
    ]
    async with pool.acquire() as conn:
        for sql, args in statements:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(sql, *args)


async def test_valid_rows_are_accepted(pool: asyncpg.Pool) -> None:
    """Well-formed rows are accepted in every trace table, each under its trace's id."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await insert_trace(conn, now)
        await conn.execute(
            'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, content, '
            "content_preview) VALUES ($1, $2, $3, 'user', $4, $5)",
            uuid.uuid4(),
            now,
            TRACE_ID,
            "x" * 2000,
            "x" * 500,
        )
        await conn.execute(
            'INSERT INTO observability.document_events (id, "timestamp", trace_id, kb_id, '
            "document_id, event_type, status) VALUES ($1, $2, $3, 'kb', 'doc', 'parse', 'ok')",
            uuid.uuid4(),
            now,
            TRACE_ID,
        )
        status = await conn.fetchval("SELECT status FROM observability.traces")
        rows = await conn.fetchval(
            "SELECT (SELECT count(*) FROM observability.chat_messages WHERE trace_id = $1) "
            "+ (SELECT count(*) FROM observability.document_events WHERE trace_id = $1)",
            TRACE_ID,
        )
    assert (status, rows) == ("open", 2)


async def test_content_preview_over_500_characters_is_refused(pool: asyncpg.Pool) -> None:
    """content_preview holds at most 500 characters (not bytes)."""
    async with pool.acquire() as conn:
        await conn.execute(
            'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, content, '
            "content_preview) VALUES ($1, $2, $3, 'user', 'c', $4)",
            uuid.uuid4(),
            datetime.now(UTC),
            TRACE_ID,
            "é" * 500,
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, '
                "content, content_preview) VALUES ($1, $2, $3, 'user', 'c', $4)",
                uuid.uuid4(),
                datetime.now(UTC),
                TRACE_ID,
                "x" * 501,
            )


async def test_metrics_upsert_on_the_bucket_key_adds_up(pool: asyncpg.Pool) -> None:
    """Two upserts into one bucket and dimensions leave one row holding both contributions."""
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    upsert = (
        'INSERT INTO observability.metrics_aggregates AS m (id, "timestamp", metric, '
        "span_type, model, count, sum, min, max, histogram) "
        "VALUES ($1, $2, 'llm.latency_ms', 'llm', 'gpt', $3, $4, $5, $6, $7) "
        'ON CONFLICT ("timestamp", metric, span_type, model, kb_id, status) DO UPDATE SET '
        "count = m.count + EXCLUDED.count, sum = m.sum + EXCLUDED.sum, "
        "min = LEAST(m.min, EXCLUDED.min), max = GREATEST(m.max, EXCLUDED.max), "
        "histogram = observability.histogram_add(m.histogram, EXCLUDED.histogram)"
    )
    async with pool.acquire() as conn:
        await conn.execute(upsert, uuid.uuid4(), minute, 2, 30.0, 10.0, 20.0, histogram([10, 20]))
        await conn.execute(upsert, uuid.uuid4(), minute, 1, 5.0, 5.0, 5.0, histogram([5]))
        row = await conn.fetchrow("SELECT * FROM observability.metrics_aggregates")
    assert row is not None
    assert (row["count"], row["sum"], row["min"], row["max"]) == (3, 35.0, 5.0, 20.0)
    assert (row["kb_id"], row["status"]) == ("", "")
    assert row["histogram"] == histogram([10, 20, 5])


async def test_metrics_histogram_must_have_40_buckets(pool: asyncpg.Pool) -> None:
    """A histogram of any other length than 40 buckets is refused."""
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                'INSERT INTO observability.metrics_aggregates (id, "timestamp", metric, '
                "count, sum, histogram) VALUES ($1, now(), 'm', 1, 1, $2)",
                uuid.uuid4(),
                [1] * 39,
            )


# --- histogram functions --------------------------------------------------------------------------


async def test_histogram_add_sums_element_wise(pool: asyncpg.Pool) -> None:
    """histogram_add sums bucket by bucket, treats a NULL side as empty, and is immutable."""
    async with pool.acquire() as conn:
        add = "SELECT observability.histogram_add($1::bigint[], $2::bigint[])"
        assert await conn.fetchval(add, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
        assert await conn.fetchval(add, None, [4, 5]) == [4, 5]
        assert await conn.fetchval(add, [4, 5], None) == [4, 5]
        assert await conn.fetchval(add, None, None) is None
        assert await conn.fetchval(add, [1, 1], [1, 1, 1]) == [2, 2, 1]
        volatility = await conn.fetchval(
            "SELECT provolatile::text FROM pg_proc "
            "WHERE oid = 'observability.histogram_add(bigint[], bigint[])'::regprocedure"
        )
    assert volatility == "i"


async def test_histogram_quantile_answers_the_bucket_upper_bound(pool: asyncpg.Pool) -> None:
    """The quantile is the upper bound of the bucket holding the q-th value; NULL when empty."""
    hist = histogram([0.5, 1.5, 3.0, 3.5])  # buckets 0, 2, 4, 4
    cases = [
        (0.0, 1.0),
        (0.25, 1.0),
        (0.5, 2.0),
        (0.75, 4.0),
        (1.0, 4.0),
        (0.3, 2.0),
    ]
    async with pool.acquire() as conn:
        quantile = "SELECT observability.histogram_quantile($1::bigint[], $2)"
        for q, expected in cases:
            assert await conn.fetchval(quantile, hist, q) == pytest.approx(expected), q
        assert await conn.fetchval(quantile, [0] * BUCKETS, 0.5) is None
        assert await conn.fetchval(quantile, None, 0.5) is None
        overflow = histogram([10.0**9])
        assert overflow[BUCKETS - 1] == 1
        assert await conn.fetchval(quantile, overflow, 0.99) == 2.0**19
        # 3 values, q = 0.1 * 3 is 0.30000000000000004 in floating point: still the 1st value.
        assert await conn.fetchval(quantile, histogram([0.5, 5, 50]), 0.1) == 1.0


async def test_histogram_quantile_brackets_the_exact_quantile(pool: asyncpg.Pool) -> None:
    """For random samples, the exact q-th value lies in the bucket whose bound is returned."""
    rng = random.Random(20240611)
    async with pool.acquire() as conn:
        for _ in range(40):
            values = [rng.lognormvariate(4, 2) for _ in range(rng.randint(1, 300))]
            q = rng.choice([0.5, 0.9, 0.95, 0.99, rng.random()])
            upper = await conn.fetchval(
                "SELECT observability.histogram_quantile($1::bigint[], $2)", histogram(values), q
            )
            exact = sorted(values)[max(1, math.ceil(q * len(values) - 1e-9)) - 1]
            k = bucket(exact)
            expected = 1.0 if k == 0 else 2.0**19 if k == BUCKETS - 1 else math.sqrt(2) ** k
            assert upper == pytest.approx(expected), (q, exact)
            assert exact < upper or k == BUCKETS - 1


async def test_histogram_sum_aggregates_rows(pool: asyncpg.Pool) -> None:
    """histogram_sum adds the histograms of many rows, so percentiles span buckets and rows."""
    async with pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT observability.histogram_sum(h) "
            "FROM (VALUES ($1::bigint[]), ($2::bigint[]), (NULL)) AS t(h)",
            histogram([1.5]),
            histogram([1.5, 100]),
        )
    assert total == histogram([1.5, 1.5, 100])


# --- native partitioning --------------------------------------------------------------------------


async def test_functions_exist_with_their_signatures(pool: asyncpg.Pool) -> None:
    """The maintenance functions the writer calls exist with the agreed signatures."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.oid::regprocedure::text AS sig, pg_get_function_result(p.oid) AS result, "
            "p.prosecdef FROM pg_proc p WHERE p.pronamespace = 'observability'::regnamespace"
        )
    found = {r["sig"]: (r["result"], r["prosecdef"]) for r in rows}
    assert found["observability.ensure_partitions(integer,integer)"] == ("integer", True)
    assert found["observability.drop_partitions_older_than(interval)"] == ("integer", False)
    assert found["observability.partitioning_mode()"] == ("text", False)
    assert found["observability.prune_applied_batches(interval)"] == ("integer", True)
    assert found["observability.histogram_add(bigint[],bigint[])"] == ("bigint[]", False)
    assert found["observability.histogram_quantile(bigint[],double precision)"] == (
        "double precision",
        False,
    )


async def test_rows_over_three_days_land_in_three_daily_partitions(
    native: asyncpg.Connection,
) -> None:
    """Rows from yesterday, today and tomorrow land in three partitions, each one UTC day wide."""
    days = [utc_day(-1), utc_day(0), utc_day(1)]
    ids = [await insert_trace(native, noon(day)) for day in days]
    placed = await native.fetch(
        "SELECT id, tableoid::regclass::text AS part FROM observability.traces "
        "WHERE id = ANY($1::uuid[])",
        ids,
    )
    where = {r["id"]: partition_of(r["part"]) for r in placed}
    names = [where[i] for i in ids]
    assert names == [f"observability.traces_p{day:%Y%m%d}" for day in days]
    bound_of = await partitions(native, "traces")
    for day, name in zip(days, names, strict=True):
        lo, hi = await bounds(native, bound_of[name.removeprefix("observability.")])
        assert lo == datetime(day.year, day.month, day.day, tzinfo=UTC)
        assert hi - lo == timedelta(days=1)


async def test_weekly_tables_are_partitioned_by_iso_week(native: asyncpg.Connection) -> None:
    """chat_messages rows land in a 7-day partition starting on Monday 00:00 UTC."""
    ts = noon(utc_day(0))
    row_id = uuid.uuid4()
    await native.execute(
        'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, content, '
        "content_preview) VALUES ($1, $2, $3, 'user', 'c', 'c')",
        row_id,
        ts,
        TRACE_ID,
    )
    part = partition_of(
        await native.fetchval(
            "SELECT tableoid::regclass::text FROM observability.chat_messages WHERE id = $1",
            row_id,
        )
    )
    monday = ts.date() - timedelta(days=ts.weekday())
    assert part == f"observability.chat_messages_p{monday:%Y%m%d}"
    lo, hi = await bounds(
        native, (await partitions(native, "chat_messages"))[part.removeprefix("observability.")]
    )
    assert lo == datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    assert hi - lo == timedelta(days=7)


async def test_migration_creates_partitions_from_7_days_back_to_7_ahead(
    native: asyncpg.Connection,
) -> None:
    """Each table has its DEFAULT partition and partitions covering 7 days back to 7 ahead."""
    for table, width in TIME_PARTITIONED.items():
        found = await partitions(native, table)
        assert found.pop(f"{table}_default") == "DEFAULT"
        covered = [await bounds(native, bound) for bound in found.values()]
        assert all(hi - lo == width for lo, hi in covered), table
        start = noon(utc_day(-7))
        end = noon(utc_day(7))
        assert any(lo <= start < hi for lo, hi in covered), table
        assert any(lo <= end < hi for lo, hi in covered), table


async def test_a_row_from_ten_years_ago_lands_in_default(native: asyncpg.Connection) -> None:
    """A row far outside the partitioned range is kept, in the DEFAULT partition."""
    ts = datetime.now(UTC) - timedelta(days=3652)
    row_id = await insert_trace(native, ts)
    part = await native.fetchval(
        "SELECT tableoid::regclass::text FROM observability.traces WHERE id = $1", row_id
    )
    assert partition_of(part) == "observability.traces_default"


async def test_ensure_partitions_is_idempotent(native: asyncpg.Connection) -> None:
    """A second call for the same range creates nothing and returns 0."""
    first = await native.fetchval("SELECT observability.ensure_partitions(3, 12)")
    assert first > 0  # days 8..12 ahead were not there yet
    assert await native.fetchval("SELECT observability.ensure_partitions(3, 12)") == 0
    assert await native.fetchval("SELECT observability.ensure_partitions()") == 0


async def test_ensure_partitions_bounds_are_utc_whatever_the_session_timezone(
    native_private_db: str,
) -> None:
    """Partitions created from a session in a +13:45 time zone still start at UTC midnight."""
    conn = await asyncpg.connect(native_private_db, server_settings={"TimeZone": "Pacific/Chatham"})
    try:
        await conn.execute("SET datestyle = 'SQL, DMY'")
        assert await conn.fetchval("SELECT observability.ensure_partitions(0, 30)") > 0
        await conn.execute("SET datestyle = 'ISO, YMD'")
        for table, width in TIME_PARTITIONED.items():
            for name, bound in (await partitions(conn, table)).items():
                if bound == "DEFAULT":
                    continue
                lo, hi = await bounds(conn, bound)
                lo_utc = lo.astimezone(UTC)
                assert lo_utc.time() == datetime.min.time(), name
                assert hi - lo == width, name
                assert name == f"{table}_p{lo_utc:%Y%m%d}"
                if width == timedelta(days=7):
                    assert lo_utc.weekday() == 0, name
    finally:
        await conn.close()


async def test_ensure_partitions_moves_rows_out_of_default(
    native_private: asyncpg.Connection,
) -> None:
    """Rows sitting in DEFAULT for a range being created are moved into the new partition."""
    ahead = noon(utc_day(20))
    span_id = uuid.uuid4()
    await native_private.execute(
        'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id, name) '
        "VALUES ($1, $2, $3, $4, 'late')",
        span_id,
        ahead,
        TRACE_ID,
        SPAN_ID,
    )
    chat_id = uuid.uuid4()
    await native_private.execute(
        'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, content, '
        "content_preview) VALUES ($1, $2, $3, 'user', 'c', 'c')",
        chat_id,
        ahead,
        TRACE_ID,
    )

    async def where(table: str, row_id: uuid.UUID) -> str:
        return partition_of(
            await native_private.fetchval(
                f"SELECT tableoid::regclass::text FROM observability.{table} WHERE id = $1", row_id
            )
        )

    assert await where("spans", span_id) == "observability.spans_default"

    assert await native_private.fetchval("SELECT observability.ensure_partitions(0, 25)") > 0

    monday = ahead.date() - timedelta(days=ahead.weekday())
    assert await where("spans", span_id) == f"observability.spans_p{ahead:%Y%m%d}"
    assert await where("chat_messages", chat_id) == (
        f"observability.chat_messages_p{monday:%Y%m%d}"
    )
    assert await native_private.fetchval(
        "SELECT name FROM observability.spans WHERE id = $1", span_id
    ) == ("late")
    assert await native_private.fetchval("SELECT count(*) FROM observability.spans_default") == 0


async def test_ensure_partitions_is_safe_under_concurrency(native_private_db: str) -> None:
    """Concurrent callers all succeed and between them create each partition exactly once."""
    conns = [await asyncpg.connect(native_private_db) for _ in range(4)]
    try:
        created = await asyncio.gather(
            *(c.fetchval("SELECT observability.ensure_partitions(0, 60)") for c in conns)
        )
        days = [utc_day(n) for n in range(61)]
        daily_missing = sum(1 for d in days if d > utc_day(7))
        weeks = {d - timedelta(days=d.weekday()) for d in days}
        last_week = utc_day(7) - timedelta(days=utc_day(7).weekday())
        weekly_missing = sum(1 for w in weeks if w > last_week)
        assert sum(created) == 3 * daily_missing + 2 * weekly_missing
        assert sorted(created)[:-1] == [0, 0, 0]
    finally:
        for c in conns:
            await c.close()


async def test_drop_partitions_older_than_removes_exactly_the_old_partitions(
    native_private: asyncpg.Connection,
) -> None:
    """Partitions whose range ended before the cut-off go with their rows; the rest stay."""
    old_row = await insert_trace(native_private, noon(utc_day(-5)))
    recent_row = await insert_trace(native_private, noon(utc_day(-1)))
    ancient_row = await insert_trace(native_private, datetime.now(UTC) - timedelta(days=3652))
    before: dict[str, tuple[datetime, datetime] | None] = {}
    for table in TIME_PARTITIONED:
        for name, bound in (await partitions(native_private, table)).items():
            before[name] = None if bound == "DEFAULT" else await bounds(native_private, bound)
    cutoff = await native_private.fetchval("SELECT now() - interval '3 days'")
    expected_gone = {n for n, b in before.items() if b is not None and b[1] <= cutoff}
    assert "traces_p" + f"{utc_day(-5):%Y%m%d}" in expected_gone

    dropped = await native_private.fetchval(
        "SELECT observability.drop_partitions_older_than('3 days')"
    )

    after = set()
    for table in TIME_PARTITIONED:
        after |= set(await partitions(native_private, table))
    assert dropped == len(expected_gone)
    assert after == set(before) - expected_gone
    assert all(f"{table}_default" in after for table in TIME_PARTITIONED)
    kept = await native_private.fetch("SELECT id FROM observability.traces")
    assert {r["id"] for r in kept} == {recent_row, ancient_row}
    assert old_row not in {r["id"] for r in kept}
    assert (
        await native_private.fetchval("SELECT observability.drop_partitions_older_than('3 days')")
        == 0
    )


# --- TimescaleDB ----------------------------------------------------------------------------------


@pytest.fixture
def timescale_db(timescaledb_server: str) -> Iterator[str]:
    """A private database migrated onto TimescaleDB hypertables (where TimescaleDB is usable)."""
    dsn = create_migrated_database(timescaledb_server, "tw_tsdb")
    try:
        yield dsn
    finally:
        drop_database(timescaledb_server, dsn)


@pytest.mark.timescaledb
async def test_timescaledb_hypertables_have_the_designed_chunk_intervals(timescale_db: str) -> None:
    """Each time-partitioned table is a hypertable on "timestamp" with its chunk interval."""
    conn = await asyncpg.connect(timescale_db)
    try:
        assert await conn.fetchval("SELECT observability.partitioning_mode()") == "timescaledb"
        rows = await conn.fetch(
            "SELECT hypertable_name, column_name, time_interval "
            "FROM timescaledb_information.dimensions WHERE hypertable_schema = 'observability'"
        )
        found = {r["hypertable_name"]: (r["column_name"], r["time_interval"]) for r in rows}
        assert found == {t: ("timestamp", width) for t, width in TIME_PARTITIONED.items()}
        assert await conn.fetchval("SELECT observability.ensure_partitions()") == 0
        assert await conn.fetchval("SELECT observability.ensure_partitions(7, 30)") == 0
    finally:
        await conn.close()


@pytest.mark.timescaledb
async def test_timescaledb_keeps_the_columns_keys_and_drops_old_chunks(timescale_db: str) -> None:
    """Hypertables keep the designed columns, and drop_partitions_older_than drops old chunks."""
    conn = await asyncpg.connect(timescale_db)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, udt_name, is_nullable = 'YES' AS nullable "
            "FROM information_schema.columns WHERE table_schema = 'observability' "
            "ORDER BY table_name, ordinal_position"
        )
        found: dict[str, list[tuple[str, str, bool]]] = {}
        for r in rows:
            found.setdefault(r["table_name"], []).append(
                (r["column_name"], r["udt_name"], r["nullable"])
            )
        assert found == COLUMNS
        old = await insert_trace(conn, datetime.now(UTC) - timedelta(days=30))
        new = await insert_trace(conn, datetime.now(UTC))
        assert await conn.fetchval("SELECT observability.drop_partitions_older_than('7 days')") >= 1
        kept = {r["id"] for r in await conn.fetch("SELECT id FROM observability.traces")}
        assert kept == {new}
        assert old not in kept
    finally:
        await conn.close()
