"""Least privilege: what tracewriter_writer and tracewriter_reader may and may not do.

Each test connects as a LOGIN role made for this run and granted one of the group roles, on a
private migrated database, so that nothing a refused statement might have done can reach
other tests.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

from tracewriter._sketch import Sketch, to_sql_text
from tracewriter._sql import Statements
from tracewriter.migrate import (
    apply_migrations,
    list_migrations,
    migration_ids,
    rollback_migrations,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
HISTOGRAM = [0] * 39 + [1]
TELEMETRY_TABLES = ("traces", "spans", "chat_messages", "document_events", "metrics_aggregates")


def with_database(dsn: str, database: str) -> str:
    """Return the URI ``dsn`` pointing at ``database``."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def as_user(dsn: str, user: str, password: str) -> str:
    """Return the URI ``dsn`` with its credentials replaced."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{host}"))


def admin(dsn: str, *statements: str) -> None:
    """Run statements outside a transaction as the harness's (superuser) role."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


@pytest.fixture(scope="module")
def roles_db(server_dsn: str) -> Iterator[str]:
    """A private migrated database with both roles (else skip), dropped at the end."""
    name = f"tw_roles_{uuid.uuid4().hex[:12]}"
    admin(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    try:
        apply_migrations(dsn)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_roles "
                "WHERE rolname IN ('tracewriter_writer', 'tracewriter_reader')"
            ).fetchone()
        if row != (2,):
            pytest.skip("the test server's role may not create roles, so 0002.roles made none")
        yield dsn
    finally:
        admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def secret_table(roles_db: str) -> str:
    """A table in another schema (public) that neither role was given."""
    name = f"public.tw_secret_{uuid.uuid4().hex[:12]}"
    admin(roles_db, f"CREATE TABLE {name} (x text)", f"INSERT INTO {name} VALUES ('hidden')")
    return name


def login_role(server_dsn: str, dsn: str, group: str) -> Iterator[str]:
    """Create a LOGIN role in ``group`` for this run; yield a DSN for it; drop it afterwards."""
    user = f"tw_{group.removeprefix('tracewriter_')}_{uuid.uuid4().hex[:12]}"
    password = secrets.token_urlsafe(16)
    admin(server_dsn, f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {group}")
    try:
        yield as_user(dsn, user, password)
    finally:
        admin(
            server_dsn,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'",
            f"DROP ROLE IF EXISTS {user}",
        )


@pytest.fixture(scope="module")
def writer_dsn(server_dsn: str, roles_db: str) -> Iterator[str]:
    """A DSN for a LOGIN role that is a member of tracewriter_writer."""
    yield from login_role(server_dsn, roles_db, "tracewriter_writer")


@pytest.fixture(scope="module")
def reader_dsn(server_dsn: str, roles_db: str) -> Iterator[str]:
    """A DSN for a LOGIN role that is a member of tracewriter_reader."""
    yield from login_role(server_dsn, roles_db, "tracewriter_reader")


@pytest.fixture
async def writer(writer_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection as the writer's login role."""
    conn = await asyncpg.connect(writer_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def reader(reader_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection as the reader's login role."""
    conn = await asyncpg.connect(reader_dsn)
    try:
        yield conn
    finally:
        await conn.close()


# --- the writer may do its job --------------------------------------------------------------------


async def test_writer_inserts_and_copies_rows(writer: asyncpg.Connection) -> None:
    """The writer INSERTs, and binary-COPYs through copy_records_to_table, into every table."""
    now = datetime.now(UTC)
    await writer.execute(
        'INSERT INTO observability.traces (id, "timestamp", trace_id, span_id, name) '
        "VALUES ($1, $2, $3, $4, 'insert')",
        uuid.uuid4(),
        now,
        TRACE_ID,
        SPAN_ID,
    )
    await writer.copy_records_to_table(
        "spans",
        schema_name="observability",
        columns=["id", "timestamp", "trace_id", "span_id", "name", "input_tokens"],
        records=[(uuid.uuid4(), now, TRACE_ID, SPAN_ID, "copy", 12) for _ in range(3)],
    )
    await writer.copy_records_to_table(
        "chat_messages",
        schema_name="observability",
        columns=["id", "timestamp", "role", "content", "content_preview"],
        records=[(uuid.uuid4(), now, "user", "hello", "hello")],
    )
    await writer.copy_records_to_table(
        "document_events",
        schema_name="observability",
        columns=["id", "timestamp", "kb_id", "document_id", "event_type", "status"],
        records=[(uuid.uuid4(), now, "kb", "doc", "parse", "ok")],
    )
    await writer.execute(
        "INSERT INTO observability.dead_letters (target_table, row_data, error, sqlstate) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
        ["spans"],
        ["(...)"],
        ["bad row"],
        ["22P02"],
    )
    assert await writer.fetchval("SELECT count(*) FROM observability.spans") >= 3


async def test_writer_upserts_end_rows_metrics_and_provider_status(
    writer: asyncpg.Connection,
) -> None:
    """The writer's ON CONFLICT DO UPDATE statements, which read the stored row, work."""
    now = datetime.now(UTC)
    span = uuid.uuid4()
    end_upsert = (
        'INSERT INTO observability.spans AS t (id, "timestamp", trace_id, span_id, status, '
        "duration_ms, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) "
        'ON CONFLICT (trace_id, id, "timestamp") DO UPDATE SET status = EXCLUDED.status, '
        "duration_ms = EXCLUDED.duration_ms, metadata = CASE WHEN EXCLUDED.metadata IS NULL "
        "THEN t.metadata ELSE coalesce(t.metadata, '{}') || EXCLUDED.metadata END"
    )
    await writer.execute(end_upsert, span, now, TRACE_ID, SPAN_ID, "open", None, '{"a": 1}')
    await writer.execute(end_upsert, span, now, TRACE_ID, SPAN_ID, "ok", 12.5, '{"b": 2}')
    await writer.execute(
        "UPDATE observability.traces AS t SET status = u.status "
        'FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, "timestamp", status) '
        'WHERE t.id = u.id AND t."timestamp" = u."timestamp"',
        [uuid.uuid4()],
        [now],
        ["ok"],
    )

    metrics_upsert = (
        "WITH claim AS (INSERT INTO observability.applied_batches (batch_id) VALUES ($1) "
        "ON CONFLICT DO NOTHING RETURNING batch_id) "
        'INSERT INTO observability.metrics_aggregates AS m (id, "timestamp", metric, count, '
        "sum, min, max, histogram) SELECT $2, $3, 'latency', 1, 5, 5, 5, $4 "
        "WHERE EXISTS (SELECT 1 FROM claim) "
        'ON CONFLICT ("timestamp", metric, span_type, model, kb_id, status) DO UPDATE SET '
        "count = m.count + EXCLUDED.count, sum = m.sum + EXCLUDED.sum, "
        "histogram = observability.histogram_add(m.histogram, EXCLUDED.histogram)"
    )
    minute = now.replace(second=0, microsecond=0)
    batch = uuid.uuid4()
    for batch_id in (batch, batch, uuid.uuid4()):  # the retried batch counts once
        await writer.execute(metrics_upsert, batch_id, uuid.uuid4(), minute, HISTOGRAM)

    provider = f"p_{uuid.uuid4().hex[:8]}"
    status_upsert = (
        "INSERT INTO observability.provider_sync_status AS s (provider, last_flush_at, "
        "rows_sent) VALUES ($1, now(), $2) ON CONFLICT (provider) DO UPDATE SET "
        "last_flush_at = EXCLUDED.last_flush_at, rows_sent = s.rows_sent + EXCLUDED.rows_sent, "
        "updated_at = now()"
    )
    await writer.execute(status_upsert, provider, 3)
    await writer.execute(status_upsert, provider, 4)

    row = await writer.fetchrow(
        "SELECT status, duration_ms, metadata::text FROM observability.spans WHERE id = $1", span
    )
    assert row is not None
    assert (row["status"], row["duration_ms"]) == ("ok", 12.5)
    assert row["metadata"] == '{"a": 1, "b": 2}'
    count = await writer.fetchval(
        "SELECT count FROM observability.metrics_aggregates "
        "WHERE \"timestamp\" = $1 AND metric = 'latency'",
        minute,
    )
    assert count == 2
    sent = await writer.fetchval(
        "SELECT rows_sent FROM observability.provider_sync_status WHERE provider = $1", provider
    )
    assert sent == 7


async def test_writer_upserts_sketches_and_writes_costs(writer: asyncpg.Connection) -> None:
    """The sketch upsert of migration 0004 and the cost columns need no grant beyond 0002's."""
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    sketch = Sketch()
    for v in (5.0, 50.0, 500.0):
        sketch.add(v)
    row = [
        [str(uuid.uuid4())],
        [minute],
        ["llm.cost_usd"],
        ["llm"],
        ["gpt-4o"],
        [""],
        ["ok"],
        [3],
        [555.0],
        [5.0],
        [500.0],
        [None],
        [to_sql_text(sketch.encode())],
    ]
    for batch_id in (uuid.uuid4(), uuid.uuid4()):
        await writer.execute(Statements.build().metrics_upsert, batch_id, *row)
    await writer.execute(
        'INSERT INTO observability.spans (id, "timestamp", trace_id, span_id, cost_usd, '
        "price_source, price_version) VALUES ($1, $2, $3, $4, 0.0125, 'user', 'sha256:x')",
        uuid.uuid4(),
        minute,
        TRACE_ID,
        SPAN_ID,
    )
    stored = await writer.fetchrow(
        "SELECT count, observability.sketch_count(sketch) AS n FROM "
        "observability.metrics_aggregates WHERE \"timestamp\" = $1 AND metric = 'llm.cost_usd'",
        minute,
    )
    assert stored is not None and (stored["count"], stored["n"]) == (6, 6)


async def test_writer_stages_through_a_temp_table(writer: asyncpg.Connection) -> None:
    """The retry-safe path — COPY into a temp table LIKE the target, then INSERT … SELECT … ON
    CONFLICT DO NOTHING — works for the writer, and a replayed batch adds nothing."""
    rows = [(uuid.uuid4(), datetime.now(UTC), TRACE_ID, "user", "again", "again") for _ in range(2)]
    columns = ["id", "timestamp", "trace_id", "role", "content", "content_preview"]
    for _ in range(2):
        async with writer.transaction():
            await writer.execute(
                "CREATE TEMP TABLE tw_stage_chat_messages "
                "(LIKE observability.chat_messages INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            await writer.copy_records_to_table(
                "tw_stage_chat_messages", columns=columns, records=rows
            )
            await writer.execute(
                'INSERT INTO observability.chat_messages (id, "timestamp", trace_id, role, '
                'content, content_preview) SELECT id, "timestamp", trace_id, role, content, '
                "content_preview FROM tw_stage_chat_messages ON CONFLICT DO NOTHING"
            )
    stored = await writer.fetchval(
        "SELECT count(*) FROM observability.chat_messages WHERE id = ANY($1::uuid[])",
        [r[0] for r in rows],
    )
    assert stored == 2


async def test_writer_maintains_partitions_and_prunes_batches(
    writer: asyncpg.Connection, roles_db: str
) -> None:
    """The writer may run ensure_partitions and prune_applied_batches, which run as the owner."""
    created = await writer.fetchval("SELECT observability.ensure_partitions(0, 40)")
    mode = await writer.fetchval("SELECT observability.partitioning_mode()")
    assert created > 0 if mode == "native" else created == 0
    assert await writer.fetchval("SELECT observability.ensure_partitions(0, 40)") == 0
    await writer.execute(
        "INSERT INTO observability.applied_batches (batch_id) VALUES ($1)", uuid.uuid4()
    )
    assert await writer.fetchval("SELECT observability.prune_applied_batches('0 seconds')") >= 1
    if mode == "native":
        with psycopg.connect(roles_db) as conn:
            owner = conn.execute(
                "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = "
                "'observability.spans_default'::regclass"
            ).fetchone()
            newest = conn.execute(
                "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_inherits i "
                "ON i.inhrelid = c.oid WHERE i.inhparent = 'observability.spans'::regclass "
                "ORDER BY c.relname DESC LIMIT 1"
            ).fetchone()
            assert newest is not None
            privileges = conn.execute(
                "SELECT pg_get_userbyid(relowner), "
                "has_table_privilege('tracewriter_reader', oid, 'SELECT'), "
                "has_table_privilege('tracewriter_writer', oid, 'INSERT'), "
                "has_table_privilege('tracewriter_writer', oid, 'DELETE') "
                "FROM pg_class WHERE oid = %s::regclass",
                (newest[0],),
            ).fetchone()
        # The partition made for the writer belongs to the tables' owner and carries the
        # parent's grants, and no more.
        assert owner is not None and privileges is not None
        assert privileges == (owner[0], True, True, False)


# --- the writer may do nothing else ---------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM observability.traces",
        "DELETE FROM observability.applied_batches",
        "DELETE FROM observability.dead_letters",
        "TRUNCATE observability.spans",
        "TRUNCATE observability.applied_batches",
        "DROP TABLE observability.traces",
        "DROP TABLE observability.dead_letters",
        "ALTER TABLE observability.spans ADD COLUMN x int",
        "SELECT * FROM observability.dead_letters",
        "UPDATE observability.chat_messages SET content = ''",
        "UPDATE observability.dead_letters SET error = ''",
        "SELECT observability.drop_partitions_older_than('1 day')",
        "CREATE TABLE observability.mine (x int)",
    ],
)
async def test_writer_is_refused_everything_else(
    writer: asyncpg.Connection, statement: str
) -> None:
    """DELETE, TRUNCATE, DROP, ALTER, and reads or updates it does not need are refused."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await writer.execute(statement)


async def test_writer_cannot_read_other_schemas(
    writer: asyncpg.Connection, secret_table: str
) -> None:
    """A table in another schema is out of the writer's reach."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await writer.fetch(f"SELECT * FROM {secret_table}")


# --- the reader -----------------------------------------------------------------------------------


async def test_reader_reads_every_table(reader: asyncpg.Connection) -> None:
    """The reader SELECTs from every observability table and uses the histogram functions."""
    for table in (*TELEMETRY_TABLES, "provider_sync_status", "dead_letters", "applied_batches"):
        await reader.fetchval(f"SELECT count(*) FROM observability.{table}")
    assert (
        await reader.fetchval(
            "SELECT observability.histogram_quantile($1::bigint[], 0.5)", HISTOGRAM
        )
        == 2.0**19
    )


async def test_reader_reads_percentiles_from_sketches(reader: asyncpg.Connection) -> None:
    """The reader may merge sketches and read quantiles from them (functions of 0004)."""
    sketch = Sketch()
    sketch.add(100.0)
    assert await reader.fetchval(
        "SELECT observability.sketch_quantile(observability.sketch_merge(s), 0.5) "
        "FROM (VALUES ($1::bigint[])) AS v(s)",
        sketch.encode(),
    ) == sketch.quantile(0.5)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO observability.provider_sync_status (provider) VALUES ('reader')",
        "UPDATE observability.traces SET status = 'x'",
        "DELETE FROM observability.spans",
        "TRUNCATE observability.document_events",
        "SELECT observability.ensure_partitions()",
        "SELECT observability.prune_applied_batches('1 day')",
    ],
)
async def test_reader_cannot_write(reader: asyncpg.Connection, statement: str) -> None:
    """The reader may change nothing, nor run the maintenance functions."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.execute(statement)


async def test_reader_cannot_read_other_schemas(
    reader: asyncpg.Connection, secret_table: str
) -> None:
    """A table in another schema is out of the reader's reach."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.fetch(f"SELECT * FROM {secret_table}")


# --- rolling the roles back -----------------------------------------------------------------------


async def test_rolling_back_the_roles_revokes_this_databases_grants(
    server_dsn: str, roles_db: str
) -> None:
    """0002's rollback revokes this database's grants and keeps roles that others still use."""
    name = f"tw_roles_rb_{uuid.uuid4().hex[:12]}"
    admin(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    # Everything after 0001.schema is rolled back and applied again, 0002.roles among them.
    after_schema = migration_ids()[1:]
    try:
        apply_migrations(dsn)
        with psycopg.connect(dsn) as conn:
            mode = conn.execute("SELECT observability.partitioning_mode()").fetchone()
        # On native partitions the DEFAULT partition has grants of its own to revoke too.
        readable = "observability.spans_default" if mode == ("native",) else "observability.spans"
        privileges = (
            "SELECT has_schema_privilege('tracewriter_writer', 'observability', 'USAGE'), "
            "has_table_privilege('tracewriter_writer', 'observability.spans', 'INSERT'), "
            f"has_table_privilege('tracewriter_reader', '{readable}', 'SELECT'), "
            "has_function_privilege('tracewriter_writer', "
            "'observability.ensure_partitions(integer, integer)', 'EXECUTE')"
        )
        with psycopg.connect(dsn) as conn:
            assert conn.execute(privileges).fetchone() == (True, True, True, True)
        assert rollback_migrations(dsn, count=len(after_schema)) == after_schema[::-1]
        with psycopg.connect(dsn) as conn:
            assert conn.execute(privileges).fetchone() == (False, False, False, False)
            kept = conn.execute(
                "SELECT count(*) FROM pg_roles "
                "WHERE rolname IN ('tracewriter_writer', 'tracewriter_reader')"
            ).fetchone()
        assert kept == (2,)  # roles_db still grants to them
        assert apply_migrations(dsn) == after_schema
        assert list_migrations(dsn) == [(m, True) for m in migration_ids()]
        with psycopg.connect(dsn) as conn:
            assert conn.execute(privileges).fetchone() == (True, True, True, True)
    finally:
        admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_database_owner_without_createrole_can_migrate(
    server_dsn: str, roles_db: str
) -> None:
    """An owner that may not create roles still migrates, granting to the roles that exist."""
    owner = f"tw_owner_{uuid.uuid4().hex[:12]}"
    password = secrets.token_urlsafe(16)
    name = f"tw_owned_{uuid.uuid4().hex[:12]}"
    admin(
        server_dsn,
        f"CREATE ROLE {owner} LOGIN NOCREATEROLE NOSUPERUSER PASSWORD '{password}'",
        f'CREATE DATABASE "{name}" OWNER {owner}',
    )
    dsn = as_user(with_database(server_dsn, name), owner, password)
    notices: list[str] = []
    try:
        assert apply_migrations(dsn, on_notice=notices.append) == migration_ids()
        # The roles existed, so no role was skipped (other notices, such as TimescaleDB's
        # being installed but not preloaded, say nothing about roles).
        assert [n for n in notices if "not created" in n] == []
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT has_table_privilege('tracewriter_writer', 'observability.traces', "
                "'INSERT'), has_table_privilege('tracewriter_reader', 'observability.traces', "
                "'SELECT')"
            ).fetchone()
        assert row == (True, True)
    finally:
        admin(
            server_dsn,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f"DROP ROLE IF EXISTS {owner}",
        )
