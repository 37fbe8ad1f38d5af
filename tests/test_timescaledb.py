"""TimescaleDB: migrating as a database owner, chunk creation under parallel COPY, and the
opt-in policies that only the Timescale-License build has.

Every test here needs a server where TimescaleDB is available and preloaded; elsewhere they
skip, and in CI's TimescaleDB pass (``TRACEWRITER_REQUIRE_TIMESCALEDB``) they fail instead.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

from tracewriter import _schema as schema
from tracewriter._config import WriterConfig
from tracewriter._pgsink import PostgresSink
from tracewriter.migrate import apply_migrations, migration_ids

HYPERTABLES = {
    "traces": timedelta(days=1),
    "spans": timedelta(days=1),
    "document_events": timedelta(days=1),
    "chat_messages": timedelta(days=7),
    "metrics_aggregates": timedelta(days=7),
}


def with_database(dsn: str, database: str, user: str | None = None, password: str = "") -> str:
    """Return the URI ``dsn`` pointing at ``database``, as ``user`` when given."""
    parts = urlsplit(dsn)._replace(path="/" + database)
    if user is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{quote(user)}:{quote(password)}@{host}")
    return urlunsplit(parts)


def admin(dsn: str, *statements: str) -> None:
    """Run statements outside a transaction as the harness's superuser."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def fetch_one(dsn: str, sql: str) -> Any:
    """The first column of the first row ``sql`` returns on ``dsn``."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def hypertables(dsn: str) -> dict[str, timedelta]:
    """The observability hypertables of ``dsn`` with their chunk intervals."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = 'observability'"
        ).fetchall()
    return dict(rows)


class OwnedDatabase:
    """A database owned by a fresh login role that is neither superuser nor CREATEROLE."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.role = f"tw_owner_{uuid.uuid4().hex[:12]}"
        self.name = f"tw_owned_{uuid.uuid4().hex[:12]}"
        self.password = secrets.token_urlsafe(16)
        admin(
            server_dsn,
            f"CREATE ROLE {self.role} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB "
            f"PASSWORD '{self.password}'",
            f'CREATE DATABASE "{self.name}" OWNER {self.role}',
        )
        self.superuser_dsn = with_database(server_dsn, self.name)
        self.dsn = with_database(server_dsn, self.name, self.role, self.password)

    def drop(self) -> None:
        admin(
            self.server_dsn,
            f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)',
            f"DROP ROLE IF EXISTS {self.role}",
        )


@pytest.fixture
def owned_db(timescaledb_server: str) -> Iterator[OwnedDatabase]:
    """A private database with a non-superuser owner, on the TimescaleDB server."""
    db = OwnedDatabase(timescaledb_server)
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def timescale_db(timescaledb_server: str) -> Iterator[str]:
    """A private database migrated (as superuser) onto hypertables."""
    name = f"tw_tsdb_{uuid.uuid4().hex[:12]}"
    admin(timescaledb_server, f'CREATE DATABASE "{name}"')
    dsn = with_database(timescaledb_server, name)
    try:
        apply_migrations(dsn)
        yield dsn
    finally:
        admin(timescaledb_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- migrating as the database owner --------------------------------------------------------------


@pytest.mark.timescaledb
def test_an_owner_migrates_onto_hypertables_when_a_superuser_created_the_extension(
    owned_db: OwnedDatabase,
) -> None:
    """With the extension created beforehand, a non-superuser owner gets every hypertable."""
    admin(owned_db.superuser_dsn, "CREATE EXTENSION timescaledb")
    notices: list[str] = []
    assert apply_migrations(owned_db.dsn, on_notice=notices.append) == migration_ids()
    assert fetch_one(owned_db.dsn, "SELECT observability.partitioning_mode()") == "timescaledb"
    assert hypertables(owned_db.dsn) == HYPERTABLES
    assert not [n for n in notices if "native partitions" in n]


@pytest.mark.timescaledb
def test_an_owner_creates_the_trusted_extension_itself(owned_db: OwnedDatabase) -> None:
    """With nothing created beforehand, the owner may create the trusted extension itself."""
    assert apply_migrations(owned_db.dsn) == migration_ids()
    assert fetch_one(owned_db.dsn, "SELECT observability.partitioning_mode()") == "timescaledb"
    assert hypertables(owned_db.dsn) == HYPERTABLES


@pytest.mark.timescaledb
def test_an_owner_without_create_gets_native_partitions_and_a_notice(
    owned_db: OwnedDatabase,
) -> None:
    """An owner without CREATE on the database migrates natively and is told how to get more."""
    # A locked-down database: the platform team provisions the schema; the owner may create
    # objects in it but nothing in the database itself, extensions included.
    admin(
        owned_db.superuser_dsn,
        f'REVOKE CREATE ON DATABASE "{owned_db.name}" FROM PUBLIC, {owned_db.role}',
        f"CREATE SCHEMA observability AUTHORIZATION {owned_db.role}",
    )
    notices: list[str] = []
    assert apply_migrations(owned_db.dsn, on_notice=notices.append) == migration_ids()
    assert fetch_one(owned_db.dsn, "SELECT observability.partitioning_mode()") == "native"
    assert (
        fetch_one(owned_db.dsn, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        == 0
    )
    said = [n for n in notices if "native partitions" in n]
    assert len(said) == 1, notices
    assert "may not create the extension" in said[0]
    assert "CREATE EXTENSION timescaledb" in said[0]  # what to do to get hypertables
    # The native path is complete: partitions ahead and the DEFAULT partition exist.
    assert fetch_one(owned_db.dsn, "SELECT to_regclass('observability.spans_default') IS NOT NULL")


# --- the writer's COPY across a day boundary ------------------------------------------------------


def _row(table: str, ts: datetime, n: int) -> tuple[Any, ...]:
    """A valid row for ``table`` at ``ts``, with the columns in the writer's order."""
    trace_id = uuid.uuid4().hex
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "timestamp": ts,
        "trace_id": trace_id,
        "span_id": secrets.token_hex(8),
        "name": f"row-{n}",
        "status": "ok",
        "role": "user",
        "content": f"message {n}",
        "content_preview": f"message {n}",
        "kb_id": "kb-1",
        "document_id": f"doc-{n}",
        "event_type": "embed",
    }
    return tuple(values.get(column) for column in schema.COLUMNS[table])


@pytest.mark.timescaledb
async def test_parallel_copies_across_a_day_boundary_create_the_new_chunks_and_lose_nothing(
    timescale_db: str,
) -> None:
    """Two writers COPYing every table across a new midnight create its chunks and lose no row."""
    # Ten days ahead: no chunk exists there yet, so the COPYs themselves must create them.
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        days=10
    )
    tables = (schema.TRACES, schema.SPANS, schema.CHAT_MESSAGES, schema.DOCUMENT_EVENTS)
    per_batch = 500
    sinks = [PostgresSink(WriterConfig(dsn=timescale_db, pool_size=4)) for _ in range(2)]
    for sink in sinks:
        await sink.open()
    try:
        batches = []
        for w, sink in enumerate(sinks):
            for table in tables:
                for half in range(2):
                    rows = [
                        _row(
                            table,
                            midnight + timedelta(milliseconds=(i - per_batch) * 7 + half * 3 + w),
                            i,
                        )
                        for i in range(per_batch * 2)
                    ]
                    # One batch of each pair de-duplicates through the staging table.
                    batches.append(sink.copy_rows(table, rows, dedupe=bool(half)))
        await asyncio.wait_for(asyncio.gather(*batches), timeout=60)
    finally:
        for sink in sinks:
            await sink.close(5)

    conn = await asyncpg.connect(timescale_db)
    try:
        for table in tables:
            counts = await conn.fetchrow(
                f'SELECT count(*) FILTER (WHERE "timestamp" < $1) AS before, '
                f'count(*) FILTER (WHERE "timestamp" >= $1) AS after '
                f"FROM observability.{table}",
                midnight,
            )
            assert (counts["before"], counts["after"]) == (2 * 2 * per_batch, 2 * 2 * per_batch)
            chunks = await conn.fetchval(
                "SELECT count(*) FROM show_chunks($1::regclass, newer_than => $2::timestamptz)",
                f"observability.{table}",
                midnight - timedelta(days=8),
            )
            # Daily tables: the day before midnight and the day after; weekly: one or two.
            expected = {2} if HYPERTABLES[table] == timedelta(days=1) else {1, 2}
            assert chunks in expected, table
    finally:
        await conn.close()


# --- opt-in policies ------------------------------------------------------------------------------


@pytest.mark.timescaledb
async def test_policies_are_detected_and_refused_with_a_clear_message_on_an_apache_build(
    timescale_db: str,
) -> None:
    """On the Apache build, asking for retention or compression policies names what is missing."""
    conn = await asyncpg.connect(timescale_db)
    try:
        license_ = await conn.fetchval("SELECT observability.timescaledb_license()")
        assert license_ == await conn.fetchval("SELECT current_setting('timescaledb.license')")
        if license_ != "apache":
            pytest.skip(f"this server's TimescaleDB is the {license_} build, which has policies")
        for call in ("add_retention_policy('30 days')", "add_compression_policy('7 days')"):
            with pytest.raises(asyncpg.FeatureNotSupportedError) as caught:
                await conn.fetchval(f"SELECT observability.{call}")
            message = str(caught.value)
            assert call.split("(")[0] in message
            assert "timescaledb.license = apache" in message
            assert "Timescale License" in message
            assert "drop_partitions_older_than" in (caught.value.hint or "")
        jobs = await conn.fetchval("SELECT count(*) FROM timescaledb_information.jobs")
        policies = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs "
            "WHERE proc_name LIKE 'policy_%' AND hypertable_schema = 'observability'"
        )
        assert policies == 0, jobs
    finally:
        await conn.close()


async def test_policies_on_native_partitions_point_to_drop_partitions_older_than(
    server_dsn: str,
) -> None:
    """On native partitions the policy functions refuse and say what does the job instead."""
    name = f"tw_native_{uuid.uuid4().hex[:12]}"
    admin(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    try:
        apply_migrations(
            psycopg.conninfo.make_conninfo(dsn, options="-c tracewriter.partitioning=native")
        )
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT observability.timescaledb_license()") is None
            with pytest.raises(asyncpg.FeatureNotSupportedError, match="native partitions"):
                await conn.fetchval("SELECT observability.add_retention_policy('30 days')")
        finally:
            await conn.close()
    finally:
        admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
