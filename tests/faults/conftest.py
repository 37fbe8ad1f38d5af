"""Servers and databases for the fault suite.

Scenarios that take the server away (stop/start, pg_hba changes) get a private embedded server
per module, even when ``TRACEWRITER_TEST_DSN`` names a shared one: that one cannot be stopped.
The other scenarios run on the run's server (embedded or shared) in a fresh database of their
own, copied from a migrated template, so database-level settings (``statement_timeout``,
``default_transaction_read_only``) and killed backends never reach another test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import _citus
import asyncpg
import pytest

from tracewriter.embedded import EmbeddedPostgres
from tracewriter.migrate import apply_migrations


def _admin(dsn: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def own_server() -> Iterator[EmbeddedPostgres]:
    """A private embedded server this module may stop, start and reconfigure."""
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(scope="module")
def own_db(own_server: EmbeddedPostgres) -> str:
    """A migrated database on the module's private server."""
    _admin(own_server.dsn, 'CREATE DATABASE "faults"')
    dsn = own_server.dsn_for("faults")
    apply_migrations(dsn)
    return dsn


@pytest.fixture
def clean_own_db(own_server: EmbeddedPostgres, own_db: str) -> str:
    """``own_db`` with the server running and every observability table emptied."""
    own_server.start()  # a test that failed mid-outage may have left it stopped
    _admin(
        own_db,
        "TRUNCATE observability.traces, observability.spans, observability.chat_messages, "
        "observability.document_events, observability.metrics_aggregates, "
        "observability.provider_sync_status, observability.dead_letters, "
        "observability.applied_batches",
    )
    return own_db


@pytest.fixture(scope="session")
def fault_template(server_dsn: str, migrated_database: Any) -> Iterator[str]:
    """The name of a migrated database on the run's server, to copy per test.

    PostgreSQL copies a template only while nobody is connected to it, and TimescaleDB keeps a
    background scheduler connected to every database that has the extension. Closing the
    template to connections and ending the scheduler's session keeps it copyable: the launcher
    starts schedulers only in databases that allow connections.
    """
    with migrated_database("tw_fault_template") as dsn:
        name = urlsplit(dsn).path.lstrip("/")
        _admin(
            server_dsn,
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )
        yield name


@pytest.fixture
def fault_db(server_dsn: str, fault_template: str) -> Iterator[str]:
    """A DSN for a fresh migrated database of this test's own, dropped afterwards."""
    name = f"tw_fault_{uuid.uuid4().hex[:12]}"
    try:
        # A template copy; on a Citus cluster a fresh distributed, migrated database.
        yield _citus.copy_database(server_dsn, name, fault_template)
    finally:
        _citus.drop_database(server_dsn, name)
