"""The fault suite: the writer under real failures (a stopped server, killed backends, a held
lock, statement timeouts, a read-only database, bad credentials, process exit).

Every scenario checks the same two promises: the ledger balances (``enqueued == written +
dropped_overflow + dead_lettered + rejected_invalid + sampled_out + buffered + in_flight``;
nothing is sampled out here), and every event
the buffer accepted is in the database exactly once. This module holds what the scenarios share:
a workload that records through the public service API and remembers which events the buffer
accepted, and the exactly-once check against the database.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tracewriter import ObservabilityService, WriterStats

# The writer's connections carry this application_name (set by the PostgreSQL sink).
WRITER_APP = "tracewriter"


def with_database(dsn: str, database: str) -> str:
    """Return the URI ``dsn`` pointing at ``database``."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, closed on exit (the test's own, never the writer's)."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def terminate_writer(conn: asyncpg.Connection) -> int:
    """Terminate every writer backend connected to ``conn``'s database; return how many."""
    return int(
        await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database() "
            "AND pid <> pg_backend_pid()",
            WRITER_APP,
        )
    )


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def percentile(values: list[int], q: float) -> int:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (0 when empty)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Workload:
    """Records a request-shaped mix of events through a service, one unit at a time.

    One unit is a trace with a ``span()`` block, an LLM call, a chat message and a document
    event: seven events, one row in each of four tables plus a trace row. After each recording
    call it reads ``dropped_overflow`` to learn whether the buffer accepted that event, and keeps
    the key of every row that must reach the database (a row whose start and end events were
    both dropped must not; one with either accepted must, exactly once). It also keeps the
    duration of every recording call in nanoseconds.
    """

    svc: ObservabilityService
    spans: set[str] = field(default_factory=set)
    traces: set[str] = field(default_factory=set)
    chats: set[str] = field(default_factory=set)
    documents: set[str] = field(default_factory=set)
    latencies_ns: list[int] = field(default_factory=list)
    units: int = 0
    calls: int = 0

    def stats(self) -> WriterStats:
        """The writer's counters now."""
        stats = self.svc.stats()
        assert stats is not None
        return stats

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, bool]:
        before = self.stats().dropped_overflow
        t0 = time.perf_counter_ns()
        result = fn(*args, **kw)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.calls += 1
        return result, self.stats().dropped_overflow == before

    def unit(self) -> None:
        """Record one unit (seven events); raises only if the library does."""
        n = self.units
        self.units += 1
        svc = self.svc
        ctx, trace_in = self._call(
            svc.start_trace, "request", user_id=f"u{n % 7}", session_id=f"s{n}", kb_id="kb-1"
        )
        scope = svc.span(ctx, "retrieve", "retrieval", {"unit": n})
        span_id, span_in = self._call(scope.__enter__)
        _, end_in = self._call(scope.__exit__, None, None, None)
        if span_in or end_in:
            self.spans.add(span_id)
        llm_id, llm_in = self._call(
            svc.log_llm_call, ctx, model="m-1", provider="p", input_tokens=n % 1000,
            output_tokens=7, duration_ms=12.5, metadata={"unit": n},
        )  # fmt: skip
        if llm_in:
            self.spans.add(llm_id)
        marker = f"{ctx.trace_id}-{n}"
        _, chat_in = self._call(svc.log_chat_message, ctx, role="user", content=marker)
        if chat_in:
            self.chats.add(marker)
        _, doc_in = self._call(
            svc.log_document_event, ctx, document_id=marker, event_type="embed", chunk_count=3
        )
        if doc_in:
            self.documents.add(marker)
        _, trace_end_in = self._call(svc.end_trace, ctx, duration_ms=20.0)
        if trace_in or trace_end_in:
            self.traces.add(ctx.trace_id)

    async def run(self, stop: asyncio.Event, *, per_tick: int = 5, tick: float = 0.005) -> None:
        """Record ``per_tick`` units every ``tick`` seconds until ``stop`` is set."""
        while not stop.is_set():
            for _ in range(per_tick):
                self.unit()
            await asyncio.sleep(tick)

    def expected_events(self) -> int:
        """Events the buffer accepted (all of them must end up written)."""
        stats = self.stats()
        return stats.enqueued - stats.dropped_overflow - stats.rejected_invalid


async def assert_exactly_once(conn: asyncpg.Connection, work: Workload) -> None:
    """Every row the workload expects is in ``conn``'s database exactly once, and no other."""

    async def counts(sql: str) -> dict[str, int]:
        return {r[0]: r[1] for r in await conn.fetch(sql)}

    checks = {
        "spans": (work.spans, "SELECT span_id, count(*) FROM observability.spans GROUP BY 1"),
        "traces": (work.traces, "SELECT trace_id, count(*) FROM observability.traces GROUP BY 1"),
        "chat_messages": (
            work.chats,
            "SELECT content, count(*) FROM observability.chat_messages GROUP BY 1",
        ),
        "document_events": (
            work.documents,
            "SELECT document_id, count(*) FROM observability.document_events GROUP BY 1",
        ),
    }
    for table, (expected, sql) in checks.items():
        stored = await counts(sql)
        twice = {k: n for k, n in stored.items() if n != 1}
        assert not twice, f"{table}: {len(twice)} rows stored more than once"
        missing = expected - stored.keys()
        extra = stored.keys() - expected
        assert not missing, f"{table}: {len(missing)} accepted rows missing"
        assert not extra, f"{table}: {len(extra)} rows stored that were counted as dropped"


def assert_settled(stats: WriterStats) -> None:
    """The ledger balances and nothing is left buffered or in flight."""
    assert stats.balances(), stats
    assert (stats.buffered, stats.in_flight) == (0, 0), stats
