"""Test harness: a real PostgreSQL for every test that touches SQL.

With ``TRACEWRITER_TEST_DSN`` set, the run uses that server; otherwise it starts an embedded
PostgreSQL for the run. Either way the run creates its own database with a unique name, migrates
it, and drops it at the end, so runs never see each other's rows.

Randomised tests use the hypothesis profile ``ci`` (derandomised: a CI run can never fail by
chance) when ``CI`` is set, and ``dev`` (random, so local runs keep exploring) otherwise;
``HYPOTHESIS_PROFILE`` picks one explicitly. A failure found locally is kept as an ``@example``.

Tests that need TimescaleDB skip where it cannot be used, unless ``TRACEWRITER_REQUIRE_TIMESCALEDB``
is set (CI's TimescaleDB pass sets it): then a missing TimescaleDB fails them instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import _citus
import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from tracewriter.migrate import apply_migrations

hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

TABLES = (
    "traces",
    "spans",
    "chat_messages",
    "document_events",
    "metrics_aggregates",
    "provider_sync_status",
    "dead_letters",
)


def _with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at ``database`` (URI form, the only form the harness accepts)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN for a maintenance database on the server this run uses."""
    configured = os.environ.get("TRACEWRITER_TEST_DSN")
    if configured:
        yield configured
        return
    from tracewriter.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server.dsn


MigratedDatabase = Callable[[str], contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="session")
def migrated_database(server_dsn: str) -> MigratedDatabase:
    """``with migrated_database(prefix) as dsn``: a fresh, migrated database, dropped after."""

    @contextlib.contextmanager
    def create(prefix: str) -> Iterator[str]:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        try:
            dsn = _citus.create_database(server_dsn, name)  # distributed on a Citus cluster
            apply_migrations(dsn)
            yield dsn
        finally:
            _citus.drop_database(server_dsn, name)

    return create


@pytest.fixture(scope="session")
def db_dsn(migrated_database: MigratedDatabase) -> Iterator[str]:
    """A DSN for a freshly created and migrated database, dropped when the run ends."""
    with migrated_database("tracewriter_test") as dsn:
        yield dsn


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the run's database, with every observability table emptied first."""
    p = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    assert p is not None
    async with p.acquire() as conn:
        await _citus.empty_tables(conn, TABLES)
    try:
        yield p
    finally:
        await p.close()


# A postmaster-context setting of TimescaleDB's loader: it exists only when the library was
# preloaded at server start, and every role may read it (unlike shared_preload_libraries).
TIMESCALEDB_USABLE_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') "
    "AND EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers' "
    "AND context = 'postmaster')"
)


def skip_without_timescaledb(reason: str) -> None:
    """Skip the calling test for ``reason``, or fail it where TimescaleDB is required."""
    if os.environ.get("TRACEWRITER_REQUIRE_TIMESCALEDB"):
        pytest.fail(f"TRACEWRITER_REQUIRE_TIMESCALEDB is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def timescaledb_server(server_dsn: str) -> str:
    """The run's server DSN when TimescaleDB can be used there (available and preloaded)."""

    async def usable() -> bool:
        conn = await asyncpg.connect(server_dsn)
        try:
            return bool(await conn.fetchval(TIMESCALEDB_USABLE_SQL))
        finally:
            await conn.close()

    if not asyncio.run(usable()):
        skip_without_timescaledb("TimescaleDB is not available and preloaded on this server")
    return server_dsn
