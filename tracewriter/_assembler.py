"""The assembler: events in, rows out, with starts and ends coalesced. Pure and synchronous.

Owns turning the events the flusher takes from the buffer into rows for the sink: building each
row (through :func:`tracewriter._records.build`), holding a start *event* back for
``open_row_grace`` seconds in case its end arrives, coalescing the two into one complete row
built once (written once by COPY), and building a start still alone when the grace is over as
an open row (its end then becomes an upsert). It knows nothing of SQL, asyncio, the sink or
the buffer; time comes in as an argument.

Everything it keeps is a plain tuple of atomic values (events, rows, held ``(event, since)``
pairs and their keys) or a container holding many of them, so a full flush's worth of work in
progress adds next to nothing for the cycle collector to walk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from tracewriter._records import (
    BUILDERS,
    KIND,
    SPAN_ID,
    TRACE_ID,
    Builders,
    EventKind,
    EventTuple,
    Row,
    build,
    coalesce,
)
from tracewriter._schema import SPANS, TRACES

_default_build: Final = build

__all__ = ["Assembler", "Pending", "Rejection"]

_START_TABLES: Final = {EventKind.SPAN_START: SPANS, EventKind.TRACE_START: TRACES}
_STARTS: Final = frozenset(_START_TABLES)
_END_TABLES: Final = {EventKind.SPAN_END: SPANS, EventKind.TRACE_END: TRACES}

# Why an event was refused and its kind, for the flusher to count and log.
Rejection = tuple[Exception, object]
HeldKey = tuple[str, object, object]


class Pending:
    """Rows for one table and, position for position, how many events each settles.

    A coalesced start and end is one row settling two events; every other row settles one.
    The weights are a ``bytearray``: one object for the whole batch, not one per row.
    """

    __slots__ = ("rows", "weights")

    def __init__(self, rows: list[Row] | None = None, weights: bytearray | None = None) -> None:
        self.rows: list[Row] = rows if rows is not None else []
        self.weights = weights if weights is not None else bytearray()

    def __len__(self) -> int:
        return len(self.rows)

    def events(self) -> int:
        """How many events these rows settle."""
        return sum(self.weights)


def _pending(table_map: dict[str, Pending], table: str) -> Pending:
    pending = table_map.get(table)
    if pending is None:
        pending = table_map[table] = Pending()
    return pending


class Assembler:
    """Builds rows from events; holds open starts; hands out what is ready with :meth:`take`.

    ``build`` is the row builder (a parameter so a test can make rows the database refuses);
    ``builders`` its table by kind, when it has one (the priced builders of
    :func:`tracewriter._records.priced_builders`).
    """

    def __init__(
        self,
        *,
        open_row_grace: float,
        build: Callable[[EventTuple], tuple[str, Row]] = build,
        builders: Builders | None = None,
    ) -> None:
        self._grace = open_row_grace
        self._build = build
        # With a table of builders, dispatch on the kind here: one call per event, not three.
        if builders is None and build is _default_build:
            builders = BUILDERS
        self._builders = builders
        self._held: dict[HeldKey, tuple[EventTuple, float]] = {}
        self._inserts: dict[str, Pending] = {}
        self._ends: dict[str, Pending] = {}
        self._rejected: list[Rejection] = []

    @property
    def held(self) -> int:
        """Start events held back, waiting for their end or for the grace to pass."""
        return len(self._held)

    def pending_events(self) -> int:
        """Events taken in but not yet handed out (held, or built and not taken)."""
        ready = sum(p.events() for p in self._inserts.values())
        return len(self._held) + ready + sum(p.events() for p in self._ends.values())

    def add(self, events: deque[EventTuple], now: float, limit: int) -> int:
        """Take up to ``limit`` events from the left of ``events``; returns how many it took.

        Never raises for an event: one that cannot become a row is recorded as a rejection.
        """
        held = self._held
        inserts = self._inserts
        build_row = self._build
        builders = self._builders
        end_tables = _END_TABLES
        popleft = events.popleft
        count = min(limit, len(events))
        for _ in range(count):
            event = popleft()
            try:
                kind = event[KIND]
                if kind in _STARTS:
                    # Held as the event: its row is built once, complete if the end comes.
                    table = _START_TABLES[kind]
                    key = (table, event[TRACE_ID], event[SPAN_ID])
                    earlier = held.get(key)
                    if earlier is not None:  # the same span started twice: keep both facts
                        self._open_row(table, earlier[0])
                    held[key] = (event, now)
                    continue
                end_of = end_tables.get(kind)
                if end_of is not None:
                    start = held.pop((end_of, event[TRACE_ID], event[SPAN_ID]), None)
                    if start is not None:  # coalesce: one complete row, no end row
                        self._coalesce(end_of, start[0], event)
                        continue
                found = builders.get(kind) if builders is not None else None
                if found is not None:
                    table = found[0]
                    row = found[1](event)
                else:  # a custom builder, or an unknown kind (build() says why it is refused)
                    table, row = build_row(event)
            except Exception as exc:  # InvalidEvent, or a hostile value beat the sanitiser
                self._rejected.append((exc, _kind_of(event)))
                continue
            # An end whose start is not held (written open already, or never seen) is an
            # upsert; anything else is a new row.
            pending = _pending(self._ends if end_of is not None else inserts, table)
            pending.rows.append(row)
            pending.weights.append(1)
        return count

    def _open_row(self, table: str, start: EventTuple) -> None:
        """Build a held start alone, as an open row to insert (or reject it)."""
        try:
            _, row = self._build(start)
        except Exception as exc:
            self._rejected.append((exc, _kind_of(start)))
            return
        pending = _pending(self._inserts, table)
        pending.rows.append(row)
        pending.weights.append(1)

    def _coalesce(self, table: str, start: EventTuple, end: EventTuple) -> None:
        try:
            combined = coalesce(start, end)
            builders = self._builders
            if builders is not None:
                row = builders[combined[KIND]][1](combined)
            else:
                _, row = self._build(combined)
        except Exception:
            # Which of the two is unusable? The start alone may still make its open row; the
            # end is then refused (or, if the start was the bad one, tried on its own).
            try:
                _, open_row = self._build(start)
            except Exception as exc:
                self._rejected.append((exc, _kind_of(start)))
                self._alone(end)
                return
            pending = _pending(self._inserts, table)
            pending.rows.append(open_row)
            pending.weights.append(1)
            try:
                self._build(end)
            except Exception as exc:
                self._rejected.append((exc, _kind_of(end)))
                return
            # Each builds alone but not together (their metadata, say): the end upserts.
            self._alone(end)
            return
        pending = _pending(self._inserts, table)
        pending.rows.append(row)
        pending.weights.append(2)

    def _alone(self, end: EventTuple) -> None:
        """An end event whose start is gone: its own row, for the end-upsert."""
        try:
            table, row = self._build(end)
        except Exception as exc:
            self._rejected.append((exc, _kind_of(end)))
            return
        pending = _pending(self._ends, table)
        pending.rows.append(row)
        pending.weights.append(1)

    def release(self, now: float, *, force: bool) -> None:
        """Build starts held past the grace (all of them with ``force``) as open rows."""
        grace = self._grace
        held = self._held
        due = [k for k, (_, since) in held.items() if force or now - since >= grace]
        for key in due:
            event, _ = held.pop(key)
            self._open_row(key[0], event)

    def take(self) -> tuple[dict[str, Pending], dict[str, Pending]]:
        """The rows ready to write, ``(inserts, ends)`` by table; the assembler forgets them."""
        inserts, ends = self._inserts, self._ends
        self._inserts, self._ends = {}, {}
        return inserts, ends

    def take_rejected(self) -> list[Rejection]:
        """The events refused since the last call, as ``(error, kind)``."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def clear(self) -> int:
        """Forget everything (closing); returns how many events that was."""
        events = self.pending_events()
        self._held.clear()
        self._inserts.clear()
        self._ends.clear()
        return events


def _kind_of(event: object) -> object:
    try:
        return event[KIND]  # type: ignore[index]
    except Exception:
        return None
