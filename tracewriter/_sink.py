"""The interface between the flusher and a database: the ``Sink`` protocol and its errors.

Owns the contract only. A sink writes rows it is handed, exactly as given, and reports failures
as one of two errors the flusher decides on: :class:`RetriableSinkError` (the server is away,
busy, or refused for a reason that may pass: keep the rows, back off) and :class:`DataSinkError`
(the server refused the data itself: isolate the bad rows). The PostgreSQL sink lives in
``_pgsink``; an in-memory one for tests lives in :mod:`tracewriter.testing`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DataSinkError",
    "DeadLetter",
    "RetriableSinkError",
    "Sink",
    "SinkError",
    "SyncStatus",
]

Row = tuple[Any, ...]


class SinkError(Exception):
    """A write failed. ``retriable`` says whether the same rows may succeed later."""

    retriable: bool = True

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class RetriableSinkError(SinkError):
    """The server is unreachable, busy, timed out or refused writes for now; keep the rows.

    A write that failed this way may or may not have committed (the connection can drop after
    the server committed), so the flusher retries it through the sink's de-duplicating path.
    """

    retriable = True


class DataSinkError(SinkError):
    """The server refused the data itself (SQLSTATE class 22 or 23); retrying as-is is useless."""

    retriable = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row the database refused, kept as text with the reason."""

    table: str
    row_text: str
    error: str
    sqlstate: str | None


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """One provider's progress since its last recorded status: deltas plus the latest outcome.

    ``error``, ``error_at`` and ``consecutive_failures`` describe the latest failure streak not
    yet recorded (None and 0 when there is none); a successful flush after an outage carries
    the outage's, so the status says what happened even when nothing could be written during it.
    """

    provider: str
    flushed_at: _dt.datetime
    succeeded: bool
    error: str | None
    rows_sent: int
    rows_failed: int
    rows_dropped: int
    error_at: _dt.datetime | None = None
    consecutive_failures: int = 0


@runtime_checkable
class Sink(Protocol):
    """Where the flusher writes. Every method may raise :class:`SinkError` and nothing else."""

    async def open(self) -> None:
        """Connect and check the schema; configuration problems raise ``ConfigurationError``."""

    async def close(self, timeout: float) -> None:
        """Release connections within ``timeout`` seconds."""

    def forget(self) -> object:
        """Drop every connection without touching it, and return what holds them.

        For a forked child (the connections are the parent's) and for a writer whose event loop
        has ended (its connections cannot be closed any more). The caller keeps the returned
        object referenced, so that no finaliser ever runs on those sockets; :meth:`open` may
        be called again afterwards. A sink without connections returns None.
        """

    async def copy_rows(self, table: str, rows: Sequence[Row], *, dedupe: bool) -> None:
        """Append new rows; with ``dedupe`` rows whose (id, timestamp) exist are skipped."""

    async def upsert_ends(self, table: str, rows: Sequence[Row]) -> None:
        """Complete open rows with their end (status, duration, error, metadata), inserting
        rows whose start never reached the database. Idempotent."""

    async def upsert_metrics(self, batch_id: str, rows: Sequence[Row]) -> None:
        """Add roll-up rows to metrics_aggregates, once per ``batch_id`` however often called."""

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Store refused rows with their errors."""

    async def record_sync_status(self, status: SyncStatus) -> None:
        """Add ``status`` to the provider's row in provider_sync_status."""

    async def maintain(self) -> None:
        """Periodic housekeeping: partitions ahead of time, pruning of old batch claims."""
