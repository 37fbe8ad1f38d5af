"""Retention: ``tracewriter retention`` drops exactly the old partitions (native) or chunks
(TimescaleDB), per table or for all, says what it dropped, and refuses to run as the writer."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tracewriter import cli
from tracewriter.migrate import apply_migrations
from tracewriter.retention import RetentionError, drop_old_partitions

_UPPER = re.compile(r"\)\s+TO\s+\('([^']+)'\)")


def with_database(dsn: str, database: str) -> str:
    """Return the URI ``dsn`` pointing at ``database``."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def admin(dsn: str, *statements: str) -> None:
    """Run statements outside a transaction as the harness's superuser."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def migrated(server_dsn: str, partitioning: str) -> Iterator[str]:
    """A private database migrated with ``partitioning`` forced ('' lets the server decide)."""
    name = f"tw_retention_{uuid.uuid4().hex[:12]}"
    admin(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(server_dsn, name)
    try:
        options = f"-c tracewriter.partitioning={partitioning}" if partitioning else ""
        apply_migrations(make_conninfo(dsn, options=options) if options else dsn)
        yield dsn
    finally:
        admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def native_db(server_dsn: str) -> Iterator[str]:
    """A private database on native partitions, whatever the server offers."""
    yield from migrated(server_dsn, "native")


@pytest.fixture
def timescale_db(timescaledb_server: str) -> Iterator[str]:
    """A private database on TimescaleDB hypertables."""
    yield from migrated(timescaledb_server, "timescaledb")


def insert_span(dsn: str, ts: datetime) -> uuid.UUID:
    """Insert one spans row at ``ts``; return its id."""
    row_id = uuid.uuid4()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            'INSERT INTO observability.spans (trace_id, id, "timestamp", span_id, name) '
            "VALUES (%s, %s, %s, %s, 'retained?')",
            (uuid.uuid4().hex, row_id, ts, secrets.token_hex(8)),
        )
    return row_id


def span_ids(dsn: str) -> set[uuid.UUID]:
    """The ids of every spans row in ``dsn``."""
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM observability.spans").fetchall()}


def native_partitions_ending_by(dsn: str, cutoff: datetime) -> set[tuple[str, str]]:
    """(table, partition) of every native partition whose upper bound is at or before cutoff,
    read from the catalog independently of the library."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET datestyle = 'ISO, YMD'")
        rows = conn.execute(
            "SELECT parent.relname, child.oid::regclass::text, "
            "pg_get_expr(child.relpartbound, child.oid) "
            "FROM pg_inherits i JOIN pg_class parent ON parent.oid = i.inhparent "
            "JOIN pg_class child ON child.oid = i.inhrelid "
            "WHERE parent.relnamespace = 'observability'::regnamespace AND parent.relkind = 'p'"
        ).fetchall()
    found = set()
    for table, partition, bound in rows:
        match = _UPPER.search(bound)
        if match and datetime.fromisoformat(match.group(1)) <= cutoff:
            found.add((table, partition))
    return found


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    """``tracewriter retention ARGS --format json``; its JSON document."""
    assert cli.main(["retention", *args, "--format", "json"]) == 0
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


def test_native_retention_drops_exactly_the_old_partitions_after_a_dry_run(
    native_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run lists the partitions that ended over 3 days ago and drops nothing; the real
    run drops exactly those, with their rows, and keeps the DEFAULT partition's rows."""
    now = datetime.now(UTC)
    old = insert_span(native_db, now - timedelta(days=5))
    recent = insert_span(native_db, now - timedelta(hours=1))
    ancient = insert_span(native_db, now - timedelta(days=3650))  # in DEFAULT: never dropped
    expected = native_partitions_ending_by(native_db, now - timedelta(days=3))
    assert ("spans", f"observability.spans_p{now - timedelta(days=5):%Y%m%d}") in expected

    planned = run_cli(capsys, "--dsn", native_db, "--older-than", "3d", "--dry-run")
    assert planned["partitioning"] == "native" and planned["dry_run"] is True
    listed = {(d["table"], d["partition"]) for d in planned["dropped"]}  # type: ignore[attr-defined]
    assert listed == expected
    assert span_ids(native_db) == {old, recent, ancient}

    done = run_cli(capsys, "--dsn", native_db, "--older-than", "3d")
    assert {(d["table"], d["partition"]) for d in done["dropped"]} == expected  # type: ignore[attr-defined]
    assert span_ids(native_db) == {recent, ancient}
    assert native_partitions_ending_by(native_db, now - timedelta(days=3)) == set()
    assert run_cli(capsys, "--dsn", native_db, "--older-than", "3d")["dropped"] == []


def test_native_retention_for_one_table_leaves_the_others(native_db: str) -> None:
    """--table spans drops only spans' old partitions; the other tables keep theirs."""
    cutoff = datetime.now(UTC) - timedelta(days=3)
    before = native_partitions_ending_by(native_db, cutoff)
    mode, dropped = drop_old_partitions(native_db, timedelta(days=3), table="spans")
    assert mode == "native"
    assert {(d.table, d.partition) for d in dropped} == {p for p in before if p[0] == "spans"}
    assert native_partitions_ending_by(native_db, cutoff) == {p for p in before if p[0] != "spans"}
    # Other tables had old partitions too (the daily ones), so keeping them means something.
    assert {t for t, _ in before} >= {"spans", "traces", "document_events"}


@pytest.mark.timescaledb
def test_timescaledb_retention_drops_exactly_the_old_chunks(
    timescale_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On hypertables the same command lists, then drops, the chunks that ended over 7 days
    ago: their rows go, the recent rows stay."""
    now = datetime.now(UTC)
    old = insert_span(timescale_db, now - timedelta(days=30))
    older = insert_span(timescale_db, now - timedelta(days=60))
    recent = insert_span(timescale_db, now)
    with psycopg.connect(timescale_db) as conn:
        chunks = {
            r[0]
            for r in conn.execute(
                "SELECT chunk_schema || '.' || chunk_name FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = 'observability' "
                "AND range_end <= now() - interval '7 days'"
            ).fetchall()
        }
    assert len(chunks) == 2  # the two old days of spans

    planned = run_cli(capsys, "--dsn", timescale_db, "--older-than", "7d", "--dry-run")
    assert planned["partitioning"] == "timescaledb"
    assert {d["partition"] for d in planned["dropped"]} == chunks  # type: ignore[attr-defined]
    assert span_ids(timescale_db) == {old, older, recent}

    done = run_cli(capsys, "--dsn", timescale_db, "--older-than", "7d", "--table", "spans")
    assert {d["partition"] for d in done["dropped"]} == chunks  # type: ignore[attr-defined]
    assert span_ids(timescale_db) == {recent}


def test_the_writer_role_may_not_run_retention(native_db: str, server_dsn: str) -> None:
    """Run as a login with only tracewriter_writer, retention fails and says to use the owner."""
    with psycopg.connect(native_db) as conn:
        row = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'tracewriter_writer'")
        if row.fetchone() != (1,):
            pytest.skip("the test server's role may not create roles, so there is no writer role")
    login = f"tw_writer_{uuid.uuid4().hex[:12]}"
    password = secrets.token_urlsafe(16)
    admin(server_dsn, f"CREATE ROLE {login} LOGIN PASSWORD '{password}' IN ROLE tracewriter_writer")
    try:
        parts = urlsplit(native_db)
        host = parts.netloc.rpartition("@")[2]
        dsn = urlunsplit(parts._replace(netloc=f"{login}:{quote(password)}@{host}"))
        insert_span(native_db, datetime.now(UTC) - timedelta(days=5))
        with pytest.raises(RetentionError, match="as the owner") as caught:
            drop_old_partitions(dsn, timedelta(days=3))
        assert password not in str(caught.value)
        assert len(span_ids(native_db)) == 1
    finally:
        admin(server_dsn, f"DROP OWNED BY {login}", f"DROP ROLE {login}")
