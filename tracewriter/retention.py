"""Retention: drop whole partitions (native) or chunks (TimescaleDB) older than an age.

Owns the one call behind ``tracewriter retention``: :func:`drop_old_partitions` asks the
database's ``observability.drop_old_partitions`` which partitions of which tables end before
``now() - older_than``, and drops them unless ``dry_run``, all in one transaction. Nothing is
deleted row by row. It must run as the owner of the observability tables: the writer role may
not drop anything, and gets a clear error saying so.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Final

import psycopg

from tracewriter._config import redact_dsn, redact_text
from tracewriter.errors import ConfigurationError, TracewriterError

__all__ = ["TIME_PARTITIONED_TABLES", "DroppedPartition", "RetentionError", "drop_old_partitions"]

TIME_PARTITIONED_TABLES: Final = (
    "traces",
    "spans",
    "document_events",
    "chat_messages",
    "metrics_aggregates",
)

_DROP: Final = (
    "SELECT table_name, partition_name, range_end "
    "FROM observability.drop_old_partitions(%s, %s, %s)"
)
_MODE: Final = "SELECT observability.partitioning_mode()"


class RetentionError(TracewriterError):
    """The database refused the retention call (for instance: not run as the owner)."""


@dataclass(frozen=True, slots=True)
class DroppedPartition:
    """One partition or chunk that was (or, in a dry run, would be) dropped."""

    table: str
    partition: str
    range_end: _dt.datetime


def drop_old_partitions(
    dsn: str,
    older_than: _dt.timedelta,
    *,
    table: str | None = None,
    dry_run: bool = False,
) -> tuple[str, list[DroppedPartition]]:
    """Drop every partition (or chunk) of ``table`` (or of all time-partitioned tables) whose
    time range ends at or before ``now() - older_than``; return the partitioning mode
    (``native`` or ``timescaledb``) and what was dropped, oldest first per table.

    With ``dry_run`` nothing is dropped and the same list says what would be. The DEFAULT
    partition is never dropped.
    """
    if older_than < _dt.timedelta(0):
        raise ConfigurationError(f"older_than: must be >= 0, got {older_than}")
    if table is not None and table not in TIME_PARTITIONED_TABLES:
        tables = ", ".join(TIME_PARTITIONED_TABLES)
        raise ConfigurationError(f"table: {table!r} is not time-partitioned (one of {tables})")
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            mode_row = conn.execute(_MODE).fetchone()
            rows = conn.execute(_DROP, (older_than, table, dry_run)).fetchall()
    except psycopg.Error as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == "42501":
            text += " — run retention as the owner of the observability tables"
        raise RetentionError(
            f"retention failed on {redact_dsn(dsn)}: {redact_text(text, dsn)}"
            + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
        ) from None
    mode = str(mode_row[0]) if mode_row else "unknown"
    return mode, [DroppedPartition(t, p, end) for t, p, end in rows]
