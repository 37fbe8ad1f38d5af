"""Helpers for testing code that uses tracewriter, without a database.

:class:`InMemorySink` implements the writer's sink protocol in memory, with switches to make it
fail the way a real server does (unreachable, or refusing particular rows), so the buffer and
flusher can be exercised — by our tests and by yours — with no PostgreSQL at all.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tracewriter._sink import DataSinkError, DeadLetter, RetriableSinkError, SyncStatus

if TYPE_CHECKING:
    from tracewriter._sink import Sink

__all__ = ["InMemorySink"]

Row = tuple[Any, ...]


class InMemorySink:
    """A sink that keeps rows in dicts keyed like the real tables: ``(id, timestamp)``.

    ``available = False`` makes every call raise :class:`RetriableSinkError`; ``refuse`` is a
    predicate ``(table, row) -> bool`` naming rows to refuse with :class:`DataSinkError` (the
    whole call fails, as a COPY would); ``delay`` adds latency to every write.
    """

    def __init__(self) -> None:
        self.available = True
        self.refuse: Callable[[str, Row], bool] | None = None
        self.delay = 0.0
        self.tables: dict[str, dict[tuple[Any, Any], Row]] = defaultdict(dict)
        self.dead_letters: list[DeadLetter] = []
        self.metrics: dict[tuple[Any, ...], Row] = {}
        self.applied_batches: set[str] = set()
        self.statuses: list[SyncStatus] = []
        self.calls: Counter[str] = Counter()
        self.opened = False
        self.closed = False

    async def _enter(self, name: str, table: str | None = None, rows: Sequence[Row] = ()) -> None:
        self.calls[name] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.available:
            raise RetriableSinkError("in-memory sink unavailable", sqlstate="08006")
        if self.refuse is not None and table is not None:
            for row in rows:
                if self.refuse(table, row):
                    raise DataSinkError(f"refused row in {table}", sqlstate="23514")

    async def open(self) -> None:
        self.opened = True

    async def close(self, timeout: float) -> None:
        self.closed = True

    def forget(self) -> None:
        """Nothing to drop: the rows live in this process's memory."""
        return None

    async def copy_rows(self, table: str, rows: Sequence[Row], *, dedupe: bool) -> None:
        await self._enter("copy_rows", table, rows)
        target = self.tables[table]
        keys = [(row[0], row[1]) for row in rows]
        if not dedupe and any(k in target for k in keys):
            raise DataSinkError("duplicate key", sqlstate="23505")
        for key, row in zip(keys, rows, strict=True):
            target.setdefault(key, row)

    async def upsert_ends(self, table: str, rows: Sequence[Row]) -> None:
        await self._enter("upsert_ends", table, rows)
        target = self.tables[table]
        for row in rows:
            target[(row[0], row[1])] = row

    async def upsert_metrics(self, batch_id: str, rows: Sequence[Row]) -> None:
        await self._enter("upsert_metrics")
        if batch_id in self.applied_batches:
            return
        self.applied_batches.add(batch_id)
        for row in rows:
            key = tuple(row[1:7])
            old = self.metrics.get(key)
            if old is None:
                self.metrics[key] = row
            else:
                hist = [a + b for a, b in zip(old[11], row[11], strict=True)]
                self.metrics[key] = (
                    *old[:7],
                    old[7] + row[7],
                    old[8] + row[8],
                    min(old[9], row[9]),
                    max(old[10], row[10]),
                    hist,
                )

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        await self._enter("write_dead_letters")
        self.dead_letters.extend(letters)

    async def record_sync_status(self, status: SyncStatus) -> None:
        await self._enter("record_sync_status")
        self.statuses.append(status)

    async def maintain(self) -> None:
        await self._enter("maintain")

    def rows(self, table: str) -> list[Row]:
        """Every row stored in ``table``."""
        return list(self.tables[table].values())


if TYPE_CHECKING:
    # mypy proves here that the in-memory sink keeps the whole Sink contract.
    _conforms: type[Sink] = InMemorySink
