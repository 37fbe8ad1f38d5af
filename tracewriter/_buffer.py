"""The bounded buffer between the recording API and the flusher, and the ledger of every event.

Owns two things that must change together under one lock: the queue of events not yet taken
by the flusher, and the counters that say what became of every event ever offered. At every
moment ``enqueued == written + dropped_overflow + dead_lettered + rejected_invalid +
sampled_out + buffered + in_flight``. It knows nothing of SQL, asyncpg, or what an event
contains.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracewriter._logging import RateLimitedLog, get_logger

__all__ = ["Buffer", "LedgerSnapshot"]

_log = get_logger("buffer")


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """The counters at one instant, taken under the buffer's lock (so they balance)."""

    enqueued: int
    written: int
    written_by_table: dict[str, int] = field(default_factory=dict)
    dropped_overflow: int = 0
    dropped_at_close: int = 0
    dead_lettered: int = 0
    rejected_invalid: int = 0
    sampled_out: int = 0
    buffered: int = 0
    in_flight: int = 0

    def balances(self) -> bool:
        """Whether every enqueued event is accounted for exactly once."""
        return self.enqueued == (
            self.written
            + self.dropped_overflow
            + self.dead_lettered
            + self.rejected_invalid
            + self.sampled_out
            + self.buffered
            + self.in_flight
        )


class Buffer:
    """A bounded FIFO of events; ``put`` is one locked append and never blocks on I/O.

    The bound counts events buffered *and* in flight (taken by the flusher but not yet
    settled), so memory stays bounded however long the database is away. ``on_batch_ready``
    is called (outside the lock) when the queue reaches ``batch_rows``, to wake the flusher.
    """

    def __init__(
        self,
        *,
        max_rows: int,
        batch_rows: int,
        on_batch_ready: Callable[[], None] | None = None,
    ) -> None:
        self._max_rows = max_rows
        self._batch_rows = batch_rows
        self.on_batch_ready = on_batch_ready
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._enqueued = 0
        self._written = 0
        self._written_by_table: dict[str, int] = {}
        self._dropped_overflow = 0
        self._dropped_at_close = 0
        self._dead_lettered = 0
        self._rejected_invalid = 0
        self._sampled_out = 0
        self._in_flight = 0
        self._overflow_log = RateLimitedLog(_log, "buffer_overflow")

    # --- the hot path -------------------------------------------------------------------------

    def put(self, item: Any) -> bool:
        """Append ``item`` if there is room; returns False (and counts a drop) if not."""
        with self._lock:
            self._enqueued += 1
            size = len(self._items)
            if size + self._in_flight >= self._max_rows or self._closed:
                self._dropped_overflow += 1
                accepted = False
            else:
                self._items.append(item)
                accepted = True
        if not accepted:
            self._overflow_log.hit(max_buffer_rows=self._max_rows, closed=self._closed)
        elif size + 1 == self._batch_rows and self.on_batch_ready is not None:
            self.on_batch_ready()
        return accepted

    def reject(self, count: int = 1) -> None:
        """Count ``count`` events refused before they were queued (invalid arguments)."""
        with self._lock:
            self._enqueued += count
            self._rejected_invalid += count

    # --- the flusher's side -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> deque[Any]:
        """Swap out every queued event in O(1); they are in flight until settled."""
        with self._lock:
            items, self._items = self._items, deque()
            self._in_flight += len(items)
        return items

    def settle(
        self,
        *,
        written: dict[str, int] | None = None,
        dead_lettered: int = 0,
        rejected_invalid: int = 0,
        dropped: int = 0,
        dropped_at_close: int = 0,
        sampled_out: int = 0,
    ) -> None:
        """Record the outcome of in-flight events; each outcome takes them out of flight."""
        written_total = sum(written.values()) if written else 0
        with self._lock:
            self._in_flight -= (
                written_total
                + dead_lettered
                + rejected_invalid
                + dropped
                + dropped_at_close
                + sampled_out
            )
            self._written += written_total
            if written:
                for table, n in written.items():
                    self._written_by_table[table] = self._written_by_table.get(table, 0) + n
            self._dead_lettered += dead_lettered
            self._rejected_invalid += rejected_invalid
            self._sampled_out += sampled_out
            self._dropped_overflow += dropped + dropped_at_close
            self._dropped_at_close += dropped_at_close

    def close(self) -> None:
        """Refuse further events (they are counted as dropped); what is queued stays."""
        with self._lock:
            self._closed = True

    def snapshot(self) -> LedgerSnapshot:
        """The counters, consistent with each other."""
        with self._lock:
            return LedgerSnapshot(
                enqueued=self._enqueued,
                written=self._written,
                written_by_table=dict(self._written_by_table),
                dropped_overflow=self._dropped_overflow,
                dropped_at_close=self._dropped_at_close,
                dead_lettered=self._dead_lettered,
                rejected_invalid=self._rejected_invalid,
                sampled_out=self._sampled_out,
                buffered=len(self._items),
                in_flight=self._in_flight,
            )
