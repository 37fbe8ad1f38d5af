"""Databases for the test harness on a Citus cluster, and plain ones everywhere else.

When ``TRACEWRITER_TEST_DSN`` names a Citus coordinator (the citus extension exists in the
database it names, and workers are registered there), every database the harness makes must be
a distributed one: Citus keeps its node list per database, so the database is created on the
coordinator and on every worker, the extension created in each, and the workers registered in
it on the coordinator — what ``../shared/citus/setup.sh --database NAME`` does, over SQL. The
migrations then distribute the trace tables there (sql/0005.trace_keys.sql).

Template copies (``CREATE DATABASE ... TEMPLATE``) do not work on Citus: the coordinator's
maintenance daemon stays connected to every distributed database, and a copy of the coordinator
alone would point at shards of another database. There a copy is a fresh, migrated database.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tracewriter.migrate import apply_migrations

__all__ = [
    "SHARD_COUNT",
    "copy_database",
    "create_database",
    "drop_database",
    "empty_tables",
    "recover_in_doubt",
    "worker_dsns",
    "workers",
]

# Few shards per table: every one is multiplied by the partitions (15 a table) and made by DDL,
# and the tests need more than one only to show that a trace stays on one.
SHARD_COUNT = 2


def _at(
    dsn: str, *, database: str | None = None, host: str | None = None, port: int | None = None
) -> str:
    parts = urlsplit(dsn)
    if host is not None:
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{host}:{port}"
        parts = parts._replace(netloc=f"{user}@{netloc}" if user else netloc)
    if database is not None:
        parts = parts._replace(path="/" + database)
    return urlunsplit(parts)


async def _run(dsn: str, *statements: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = []
        for sql in statements:
            rows = await conn.fetch(sql)
        return rows
    finally:
        await conn.close()


@functools.cache
def workers(server_dsn: str) -> tuple[tuple[str, int], ...]:
    """The active Citus workers of the server at ``server_dsn``; empty when it is not Citus."""

    async def find() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(server_dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
                return []
            return await conn.fetch(
                "SELECT nodename, nodeport FROM pg_dist_node "
                "WHERE isactive AND noderole = 'primary' AND groupid <> 0 ORDER BY nodeport"
            )
        finally:
            await conn.close()

    return tuple((r[0], r[1]) for r in asyncio.run(find()))


def create_database(server_dsn: str, name: str) -> str:
    """Create database ``name`` (distributed on Citus); return its DSN."""
    nodes = workers(server_dsn)
    if not nodes:
        asyncio.run(_run(server_dsn, f'CREATE DATABASE "{name}"'))
        return _at(server_dsn, database=name)

    async def make() -> None:
        coordinator = urlsplit(server_dsn)

        async def on(node: str) -> None:
            await _run(node, f'CREATE DATABASE "{name}"')
            await _run(_at(node, database=name), "CREATE EXTENSION citus")

        # The nodes are independent until the workers are registered: make them at once.
        await asyncio.gather(
            on(server_dsn), *(on(_at(server_dsn, host=h, port=p)) for h, p in nodes)
        )
        await _run(
            _at(server_dsn, database=name),
            f"SELECT citus_set_coordinator_host('{coordinator.hostname}', {coordinator.port})",
            *(f"SELECT citus_add_node('{h}', {p})" for h, p in nodes),
            # The migrations read it (sql/0005.trace_keys.sql).
            f"ALTER DATABASE \"{name}\" SET tracewriter.shard_count = '{SHARD_COUNT}'",
        )

    asyncio.run(make())
    return _at(server_dsn, database=name)


def copy_database(server_dsn: str, name: str, template: str) -> str:
    """A database ``name`` like the migrated ``template``: a copy, or on Citus a fresh migration."""
    if not workers(server_dsn):
        asyncio.run(_run(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return _at(server_dsn, database=name)
    dsn = create_database(server_dsn, name)
    apply_migrations(dsn)
    return dsn


def drop_database(server_dsn: str, name: str) -> None:
    """Drop database ``name`` wherever :func:`create_database` made it.

    A test that killed backends mid two-phase commit can leave prepared transactions on the
    workers, and PostgreSQL refuses to drop a database they use: those are rolled back first
    (the test is over; nobody will read its rows).
    """
    nodes = workers(server_dsn)

    async def on_worker(node: str) -> None:
        gids = await _run(node, f"SELECT gid FROM pg_prepared_xacts WHERE database = '{name}'")
        if gids:
            conn = await asyncpg.connect(_at(node, database=name))
            try:
                for (gid,) in gids:
                    await conn.execute(f"ROLLBACK PREPARED '{gid}'")
            finally:
                await conn.close()
        await _run(node, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop() -> None:
        # The coordinator first: nothing may route to the workers' copies while they go.
        await _run(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await asyncio.gather(*(on_worker(_at(server_dsn, host=h, port=p)) for h, p in nodes))

    asyncio.run(drop())


async def recover_in_doubt(dsn: str) -> None:
    """On Citus, finish the two-phase commits cut off between their phases, now.

    A coordinator backend killed after PREPARE TRANSACTION on the workers leaves prepared
    transactions that hold their rows' keys: a retry of the same rows waits on them until
    Citus' maintenance daemon recovers them (``citus.recover_2pc_interval``, a minute). Tests
    that kill backends call this instead of waiting; elsewhere it does nothing.
    """
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regproc('pg_catalog.recover_prepared_transactions')"):
            await conn.execute("SELECT recover_prepared_transactions()")
    finally:
        await conn.close()


async def empty_tables(conn: asyncpg.Connection, tables: Iterable[str]) -> None:
    """Empty the observability ``tables`` for the next test.

    TRUNCATE of a distributed table is DDL on every shard of every partition (seconds, even with
    two shards); DELETE of a test's few rows is one statement per table. Elsewhere TRUNCATE.
    """
    names = [f"observability.{t}" for t in tables]
    if await conn.fetchval("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL"):
        for name in names:
            await conn.execute(f"DELETE FROM {name}")
    else:
        await conn.execute(f"TRUNCATE {', '.join(names)} CASCADE")


def worker_dsns(server_dsn: str, database: str) -> list[str]:
    """DSNs of ``database`` on each worker of the Citus cluster at ``server_dsn``."""
    return [_at(server_dsn, database=database, host=h, port=p) for h, p in workers(server_dsn)]
