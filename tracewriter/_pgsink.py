"""The PostgreSQL sink: an asyncpg pool, binary COPY for new rows, prepared statements for the rest.

Owns the connection pool (each connection set up with the writer's timestamptz codec,
``_codecs``) and the translation of asyncpg's errors into the two the flusher acts on. It knows
the SQL (through ``_sql``) and nothing of the API or the buffer.

On Citus a CHECK or NOT NULL violation a worker raises during COPY comes back through the
coordinator as SQLSTATE XX000 (internal error) with the worker's message but not its state, so
it cannot be told from a real internal error by its code. Such a COPY is tried once more through
the staging path (temp table, then ``INSERT ... SELECT``), which Citus reports with the worker's
own SQLSTATE; an XX000 that persists there is treated as a refusal of these rows, so that the
flusher isolates them instead of retrying them forever.

COPY feeds asyncpg an async iterable that yields to the event loop every ``copy_yield_rows``
rows: asyncpg encodes a plain list in one go without yielding (about 5 µs a row, so a
10,000-row COPY would stall the host's loop ~50 ms).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from tracewriter import _schema as schema
from tracewriter._codecs import decode_timestamptz, encode_timestamptz
from tracewriter._config import WriterConfig, redact_dsn, redact_text
from tracewriter._logging import get_logger
from tracewriter._schema import Row
from tracewriter._sink import DataSinkError, DeadLetter, RetriableSinkError, SinkError, SyncStatus
from tracewriter._slices import pause
from tracewriter._sql import Statements
from tracewriter.errors import ConfigurationError

__all__ = ["PostgresSink", "classify_error"]

_log = get_logger("pgsink")


# SQLSTATE classes that mean "this data is refused": 22 data exception, 23 integrity violation.
_DATA_CLASSES = frozenset({"22", "23"})
# Single states that also mean the data itself is at fault.
_DATA_STATES = frozenset({"42804", "54000", "54001"})  # datatype mismatch, program limits

# internal_error: what Citus reports for a worker's error inside a COPY through the coordinator.
_INTERNAL_ERROR = "XX000"

# Metric batch claims older than this are pruned; a retry never comes that late.
_BATCH_CLAIM_RETENTION = _dt.timedelta(days=1)


def classify_error(exc: BaseException, dsn: str | None = None) -> SinkError:
    """Map an exception from asyncpg or the network to a retriable or a data sink error."""
    message = redact_text(f"{type(exc).__name__}: {exc}", dsn)
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state[:2] in _DATA_CLASSES or state in _DATA_STATES:
            return DataSinkError(message, sqlstate=state)
        # 08 connection, 53 resources, 57 operator (admin shutdown, statement timeout),
        # 40 deadlock/serialisation, 25006 read-only, 42501 permissions, 55P03 lock timeout
        # and anything unknown: the rows are fine, the server is not (yet) — keep them.
        return RetriableSinkError(message, sqlstate=state or None)
    if isinstance(exc, UnicodeError | TypeError | ValueError | OverflowError):
        # The client could not encode a value; the server never saw the row.
        return DataSinkError(message)
    return RetriableSinkError(message)


async def _use_our_codecs(conn: asyncpg.Connection) -> None:
    """Each new pool connection encodes timestamptz with the writer's codec (``_codecs``):
    the values asyncpg's default sends and returns, for 0.25 µs a row instead of 0.61
    (compiled; 0.39 as Python)."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=encode_timestamptz,
        decoder=decode_timestamptz,
        format="tuple",
    )


async def _yielding(rows: Sequence[Row], every: int) -> AsyncIterator[Row]:
    # Slices of ``every`` rows with a plain for loop: no per-row counter or modulo.
    for start in range(0, len(rows), every):
        if start:
            await pause()
        for row in rows[start : start + every]:
            yield row


class PostgresSink:
    """Writes to the observability schema of one database through an asyncpg pool."""

    def __init__(self, config: WriterConfig) -> None:
        if not config.dsn:
            raise ConfigurationError("dsn: a PostgreSQL DSN is required (or TRACEWRITER_DSN)")
        self._config = config
        self._sql = Statements.build()
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresSink(dsn={redact_dsn(self._config.dsn)!r}, schema={self._sql.schema!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool and check the schema is migrated; raise ConfigurationError if not."""
        cfg = self._config
        dsn = cfg.dsn
        pool: asyncpg.Pool | None = None
        try:
            pool = await asyncpg.create_pool(
                dsn,
                # No floor: during an outage asyncpg would keep re-dialling to restore it and log
                # a traceback each time; connections are made when a flush needs them.
                min_size=0,
                max_size=cfg.pool_size,
                timeout=cfg.connect_timeout,
                command_timeout=cfg.command_timeout,
                # PgBouncer in transaction mode cannot keep named prepared statements.
                statement_cache_size=0 if cfg.pgbouncer else 100,
                server_settings={"application_name": "tracewriter"},
                init=_use_our_codecs,
            )
            # Connect once now, so that a wrong host, password or database fails start() loudly.
            conn = await pool.acquire(timeout=cfg.connect_timeout)
        except Exception as exc:
            if pool is not None:
                pool.terminate()
            raise ConfigurationError(
                f"cannot connect to {redact_dsn(dsn)}: {redact_text(str(exc), dsn)}"
            ) from None
        try:
            ok = await conn.fetchval(self._sql.check_schema, self._sql.schema)
        except Exception as exc:
            await pool.release(conn)
            await pool.close()
            raise ConfigurationError(
                f"cannot read the schema at {redact_dsn(dsn)}: {redact_text(str(exc), dsn)}"
            ) from None
        await pool.release(conn)
        if not ok:
            await pool.close()
            raise ConfigurationError(
                f"schema {self._sql.schema!r} is not migrated in {redact_dsn(dsn)}: "
                "run `tracewriter migrate`"
            )
        self._pool = pool

    async def close(self, timeout: float) -> None:
        """Close the pool, terminating connections that do not finish within ``timeout``."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=max(timeout, 0.01))
        except Exception:  # the timeout, or a connection that broke while closing
            pool.terminate()

    def forget(self) -> asyncpg.Pool | None:
        """Drop the pool without touching its connections and return it.

        A forked child must not use the parent's connections, and a pool whose loop has ended
        cannot be closed; the caller keeps the returned pool referenced.
        """
        pool, self._pool = self._pool, None
        return pool

    # --- writes -------------------------------------------------------------------------------

    def _acquire(self) -> Any:
        if self._pool is None:
            raise RetriableSinkError("the sink is not open")
        return self._pool.acquire(timeout=self._config.connect_timeout)

    async def _guarded(self, coro: Any) -> Any:
        try:
            return await coro
        except SinkError:
            raise
        except Exception as exc:
            raise classify_error(exc, self._config.dsn) from exc

    async def copy_rows(self, table: str, rows: Sequence[Row], *, dedupe: bool) -> None:
        await self._guarded(self._copy_rows(table, rows, dedupe))

    async def _copy_rows(self, table: str, rows: Sequence[Row], dedupe: bool) -> None:
        columns = schema.COLUMNS[table]
        every = self._config.copy_yield_rows
        timeout = self._config.command_timeout
        async with self._acquire() as conn:
            if not dedupe:
                try:
                    # One short autocommit transaction per COPY: on TimescaleDB the transaction
                    # that creates a new chunk blocks other writers until it commits.
                    await conn.copy_records_to_table(
                        table,
                        schema_name=self._sql.schema,
                        columns=columns,
                        records=_yielding(rows, every),
                        timeout=timeout,
                    )
                    return
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate != _INTERNAL_ERROR:
                        raise
                    # Possibly a worker's refusal wrapped by Citus: the staging path below
                    # reports the true error. The COPY was one transaction and failed whole,
                    # so nothing of it is there to duplicate.
                    _log.debug("copy_internal_error_restaged", table=table, rows=len(rows))
            # The previous attempt may have committed: stage, then insert what is missing.
            try:
                async with conn.transaction():
                    await conn.execute(self._sql.stage_create[table])
                    await conn.copy_records_to_table(
                        f"tw_stage_{table}",
                        columns=columns,
                        records=_yielding(rows, every),
                        timeout=timeout,
                    )
                    await conn.execute(self._sql.stage_insert[table], timeout=timeout)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != _INTERNAL_ERROR:
                    raise
                # Refused again, by another statement: retrying would only repeat it. Isolate.
                message = redact_text(f"{type(exc).__name__}: {exc}", self._config.dsn)
                raise DataSinkError(message, sqlstate=_INTERNAL_ERROR) from exc

    async def upsert_ends(self, table: str, rows: Sequence[Row]) -> None:
        columns = list(zip(*rows, strict=True)) if rows else []
        try:
            await self._execute(self._sql.end_upsert[table], *map(list, columns))
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != _INTERNAL_ERROR:
                raise classify_error(exc, self._config.dsn) from exc
            # INSERT ... SELECT reports a worker's own SQLSTATE through Citus, so an internal
            # error here is this server's and, for these rows, may well repeat forever: let
            # the flusher split the batch and retry, dead-lettering only rows that keep failing.
            message = redact_text(f"{type(exc).__name__}: {exc}", self._config.dsn)
            raise DataSinkError(message, sqlstate=_INTERNAL_ERROR) from exc
        except SinkError:
            raise
        except Exception as exc:
            raise classify_error(exc, self._config.dsn) from exc

    async def upsert_metrics(self, batch_id: str, rows: Sequence[Row]) -> None:
        if not rows:
            return
        # A stable order: concurrent writers upserting the same cells lock them in one order.
        ordered = sorted(rows, key=lambda r: (r[1], r[2], r[3], r[4], r[5], r[6]))
        columns = [list(c) for c in zip(*ordered, strict=True)]
        # histogram and sketch: arrays of unequal length per row travel as text literals
        columns[-2] = ["{" + ",".join(map(str, h)) + "}" for h in columns[-2]]
        columns[-1] = ["{" + ",".join(map(str, s)) + "}" for s in columns[-1]]
        await self._guarded(self._execute(self._sql.metrics_upsert, batch_id, *columns))

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        await self._guarded(
            self._execute(
                self._sql.dead_letters_insert,
                [d.table for d in letters],
                [d.row_text for d in letters],
                [d.error for d in letters],
                [d.sqlstate for d in letters],
            )
        )

    async def record_sync_status(self, status: SyncStatus) -> None:
        await self._guarded(
            self._execute(
                self._sql.sync_status_upsert,
                status.provider,
                status.flushed_at,
                status.succeeded,
                status.error,
                status.error_at,
                status.consecutive_failures,
                status.rows_sent,
                status.rows_failed,
                status.rows_dropped,
            )
        )

    async def maintain(self) -> None:
        async def run() -> None:
            async with self._acquire() as conn:
                created = await conn.fetchval(self._sql.ensure_partitions)
                await conn.execute(self._sql.prune_batches, _BATCH_CLAIM_RETENTION)
            if created:
                _log.info("partitions_created", count=created)

        await self._guarded(run())

    async def _execute(self, sql: str, *args: Any) -> None:
        async with self._acquire() as conn:
            await conn.execute(sql, *args, timeout=self._config.command_timeout)
