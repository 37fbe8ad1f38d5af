"""The buffer and flusher against the in-memory sink: coalescing, retries, isolation, accounting."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from tracewriter import _flusher as flusher_module
from tracewriter import _graveyard as graveyard
from tracewriter import _schema as schema
from tracewriter._buffer import Buffer
from tracewriter._flusher import Flusher, FlusherSettings
from tracewriter._ids import new_span_id, new_trace_id
from tracewriter._records import SPAN_ID, Event, EventKind
from tracewriter._sink import RetriableSinkError, SinkError
from tracewriter.testing import InMemorySink


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def span_event(kind: str, trace_id: str, span_id: str, start_ns: int, **kw: Any) -> tuple[Any, ...]:
    fields: dict[str, Any] = dict(
        kind=kind,
        start_ns=start_ns,
        end_ns=None,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=None,
        name="step",
        span_type="chain",
        status=None,
        duration_ms=None,
        error_type=None,
        error_message=None,
        user_id=None,
        session_id=None,
        kb_id=None,
        metadata=None,
        detail=None,
    )
    fields.update(kw)
    return Event(**fields).flat()


def llm_event(trace_id: str | None = None, **kw: Any) -> tuple[Any, ...]:
    return span_event(
        EventKind.SPAN,
        trace_id or new_trace_id(),
        new_span_id(),
        time.time_ns(),
        end_ns=time.time_ns(),
        span_type="llm",
        status="ok",
        duration_ms=12.5,
        detail=("gpt-x", "openai", 10, 20, None, None),
        **kw,
    )


def make(
    *, max_rows: int = 100_000, batch: int = 5000, grace: float = 5.0, sink: Any = None
) -> tuple[Buffer, InMemorySink, Flusher, FakeClock]:
    clock = FakeClock()
    buffer = Buffer(max_rows=max_rows, batch_rows=batch)
    sink = sink or InMemorySink()
    settings = FlusherSettings(
        max_batch_rows=batch, open_row_grace=grace, retry_initial_backoff=0.001
    )
    return buffer, sink, Flusher(buffer, sink, settings, clock=clock), clock


async def test_start_and_end_in_one_flush_become_one_copied_row() -> None:
    """A span whose start and end share a flush is written once by COPY, with no end-upsert."""
    buffer, sink, flusher, _ = make()
    trace, span, t0 = new_trace_id(), new_span_id(), time.time_ns()
    buffer.put(span_event(EventKind.SPAN_START, trace, span, t0, metadata={"a": 1}))
    buffer.put(
        span_event(
            EventKind.SPAN_END, trace, span, t0, end_ns=t0 + 5_000_000, status="ok", duration_ms=5.0
        )
    )
    assert await flusher.flush_once(force=False)
    rows = sink.rows(schema.SPANS)
    assert len(rows) == 1
    row = dict(zip(schema.SPAN_COLUMNS, rows[0], strict=True))
    assert row["status"] == "ok" and row["duration_ms"] == 5.0 and row["metadata"] == '{"a":1}'
    assert sink.calls["upsert_ends"] == 0
    snap = buffer.snapshot()
    assert snap.written == 2 and snap.balances()


async def test_open_span_waits_for_grace_then_is_written_open_and_completed_by_upsert() -> None:
    """A span still open at flush time is held for the grace, written open, then end-upserted."""
    buffer, sink, flusher, clock = make(grace=5.0)
    trace, span, t0 = new_trace_id(), new_span_id(), time.time_ns()
    buffer.put(span_event(EventKind.SPAN_START, trace, span, t0))
    assert not await flusher.flush_once(force=False)  # held: something is pending
    assert sink.rows(schema.SPANS) == []
    assert buffer.snapshot().in_flight == 1
    clock.now += 6.0
    await flusher.flush_once(force=False)
    (open_row,) = sink.rows(schema.SPANS)
    assert open_row[schema.SPAN_COLUMNS.index("status")] == "open"
    buffer.put(
        span_event(
            EventKind.SPAN_END, trace, span, t0, status="error", duration_ms=9.0, error_type="Boom"
        )
    )
    assert await flusher.flush_once(force=False)
    (row,) = sink.rows(schema.SPANS)
    assert row[0] == open_row[0]  # same deterministic row id: completed, not duplicated
    assert row[schema.SPAN_COLUMNS.index("status")] == "error"
    assert sink.calls["upsert_ends"] == 1
    assert buffer.snapshot().balances() and buffer.snapshot().written == 2


async def test_refused_rows_are_isolated_and_dead_lettered() -> None:
    """Three refused rows in a 10,000-row batch leave 9,997 written and 3 dead letters."""
    buffer, sink, flusher, _ = make(batch=10_000, max_rows=20_000)
    events = [llm_event() for _ in range(10_000)]
    bad = {events[i][SPAN_ID] for i in (17, 5000, 9999)}
    span_col = schema.SPAN_COLUMNS.index("span_id")
    sink.refuse = lambda table, row: row[span_col] in bad
    for e in events:
        buffer.put(e)
    assert await flusher.flush_once(force=False)
    assert len(sink.rows(schema.SPANS)) == 9_997
    assert len(sink.dead_letters) == 3
    assert all(d.table == "spans" and d.sqlstate == "23514" for d in sink.dead_letters)
    snap = buffer.snapshot()
    assert (snap.written, snap.dead_lettered) == (9_997, 3) and snap.balances()


async def test_unavailable_sink_keeps_rows_and_writes_them_once_when_back() -> None:
    """While the sink is away rows stay in flight; when it returns each is written once."""
    buffer, sink, flusher, _ = make()
    sink.available = False
    for _ in range(100):
        buffer.put(llm_event())
    assert not await flusher.flush_once(force=False)
    assert not await flusher.flush_once(force=False)
    snap = buffer.snapshot()
    assert snap.in_flight == 100 and snap.written == 0 and snap.balances()
    assert flusher.stats().retries == 2 and flusher.stats().consecutive_failures == 2
    sink.available = True
    assert await flusher.flush_once(force=False)
    assert len(sink.rows(schema.SPANS)) == 100
    assert buffer.snapshot().written == 100 and buffer.snapshot().balances()


class CommitThenFailSink(InMemorySink):
    """Commits the first COPY and then reports a lost connection, as a real server can."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_once = False
        self.dedupe_seen: list[bool] = []

    async def copy_rows(self, table: str, rows: Sequence[tuple[Any, ...]], *, dedupe: bool) -> None:
        self.dedupe_seen.append(dedupe)
        await super().copy_rows(table, rows, dedupe=dedupe)
        if not self.failed_once:
            self.failed_once = True
            raise RetriableSinkError("connection lost after commit", sqlstate="08006")


async def test_ambiguous_failure_is_retried_through_the_deduplicating_path() -> None:
    """A COPY that committed but reported failure is retried de-duplicating: no row twice."""
    sink = CommitThenFailSink()
    buffer, sink, flusher, _ = make(sink=sink)
    for _ in range(50):
        buffer.put(llm_event())
    assert not await flusher.flush_once(force=False)
    assert await flusher.flush_once(force=False)
    assert sink.dedupe_seen == [False, True]
    assert len(sink.rows(schema.SPANS)) == 50
    snap = buffer.snapshot()
    assert snap.written == 50 and snap.balances()


async def test_full_buffer_drops_and_counts() -> None:
    """Past max_rows (buffered plus in flight) new events are dropped and counted."""
    buffer, sink, flusher, _ = make(max_rows=10, batch=5)
    sink.available = False
    for _ in range(6):
        buffer.put(llm_event())
    await flusher.flush_once(force=False)  # 6 in flight now
    accepted = sum(buffer.put(llm_event()) for _ in range(10))
    snap = buffer.snapshot()
    assert accepted == 4 and snap.dropped_overflow == 6 and snap.balances()


async def test_drain_gives_up_at_its_deadline_and_abandon_counts_the_rest() -> None:
    """drain() returns False by its deadline when the sink is away; abandon() counts the rest."""
    buffer = Buffer(max_rows=1000, batch_rows=100)
    sink = InMemorySink()
    sink.available = False
    flusher = Flusher(buffer, sink, FlusherSettings(retry_initial_backoff=0.01))
    for _ in range(30):
        buffer.put(llm_event())
    started = time.monotonic()
    assert not await flusher.drain(0.3)
    assert time.monotonic() - started < 2.0
    assert flusher.abandon() == 30
    snap = buffer.snapshot()
    assert snap.dropped_at_close == 30 and snap.dropped_overflow == 30 and snap.balances()
    assert not buffer.put(llm_event())  # closed: refused and counted
    assert buffer.snapshot().balances()


async def test_invalid_events_are_rejected_and_counted() -> None:
    """An event with a malformed trace id is refused at build time and counted, not written."""
    buffer, _, flusher, _ = make()
    buffer.put(llm_event(trace_id="NOT-A-TRACE-ID"))
    buffer.put(llm_event())
    assert await flusher.flush_once(force=False)
    snap = buffer.snapshot()
    assert (snap.written, snap.rejected_invalid) == (1, 1) and snap.balances()


async def test_metric_rollups_are_upserted_once_per_batch_id() -> None:
    """Written spans produce per-minute roll-ups; a retried roll-up batch is not counted twice."""

    class FailMetricsOnce(InMemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.fail = True

        async def upsert_metrics(self, batch_id: str, rows: Sequence[tuple[Any, ...]]) -> None:
            await super().upsert_metrics(batch_id, rows)
            if self.fail:
                self.fail = False
                raise RetriableSinkError("lost after commit")

    sink = FailMetricsOnce()
    buffer, sink, flusher, _ = make(sink=sink)
    trace = new_trace_id()
    for _ in range(7):
        buffer.put(llm_event(trace_id=trace))
    assert not await flusher.flush_once(force=False)
    assert await flusher.flush_once(force=False)
    durations = [r for k, r in sink.metrics.items() if k[1] == "span.duration_ms"]
    assert sum(r[7] for r in durations) == 7  # count
    assert sum(sum(r[11]) for r in durations) == 7  # histogram total


async def test_cancelled_flush_loses_no_accounting() -> None:
    """Cancelling a flush mid-write leaves every taken event counted exactly once."""

    class StallAfterThree(InMemorySink):
        async def copy_rows(
            self, table: str, rows: Sequence[tuple[Any, ...]], *, dedupe: bool
        ) -> None:
            if self.calls["copy_rows"] >= 3:
                self.calls["copy_rows"] += 1
                await asyncio.Event().wait()  # a COPY that never finishes
            await super().copy_rows(table, rows, dedupe=dedupe)

    buffer, sink, flusher, _ = make(batch=100, sink=StallAfterThree())
    for _ in range(1000):
        buffer.put(llm_event())
    task = asyncio.ensure_future(flusher.flush_once(force=True))
    while sink.calls["copy_rows"] < 10:  # three batches written, seven stuck mid-COPY
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert buffer.snapshot().written == 300
    assert flusher.abandon() == 700
    snap = buffer.snapshot()
    assert snap.dropped_at_close == 700 and snap.balances()
    assert len(sink.rows(schema.SPANS)) == 300


def test_metadata_of_any_mapping_is_stored_as_an_object() -> None:
    """A MappingProxyType, ChainMap or UserDict, alone or nested, encodes as a JSON object."""
    import collections
    import json
    import types

    from tracewriter._records import encode_metadata

    for value in (
        types.MappingProxyType({"a": 1}),
        collections.ChainMap({"a": 1}),
        collections.UserDict({"a": 1}),
    ):
        assert json.loads(encode_metadata(value) or "") == {"a": 1}
        assert json.loads(encode_metadata({"outer": value}) or "") == {"outer": {"a": 1}}


async def test_drain_returns_once_what_was_taken_is_written_despite_new_events() -> None:
    """flush() waits for what was recorded before it, not for a producer that keeps going."""
    buffer, sink, flusher, _ = make()
    for _ in range(50):
        buffer.put(llm_event())
    stop = asyncio.Event()

    async def producer() -> None:
        while not stop.is_set():
            buffer.put(llm_event())
            await asyncio.sleep(0)

    task = asyncio.ensure_future(producer())
    try:
        assert await flusher.drain(5.0)
    finally:
        stop.set()
        await task
    assert len(sink.rows(schema.SPANS)) >= 50
    assert buffer.snapshot().balances()


class FlakySink(InMemorySink):
    """Raises a bare SinkError (documented retriable) on its first ``failures`` COPYs."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def copy_rows(self, table: str, rows: Sequence[Any], *, dedupe: bool) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError("the server hiccupped", sqlstate="53300")
        await super().copy_rows(table, rows, dedupe=dedupe)


async def test_a_bare_sink_error_is_retried_as_its_retriable_flag_says() -> None:
    """A SinkError with retriable=True keeps its rows for a retry and is no internal error."""
    buffer, sink, flusher, _ = make(sink=FlakySink(failures=2))
    for _ in range(3):
        buffer.put(llm_event())
    assert not await flusher.flush_once(force=True)
    assert not await flusher.flush_once(force=True)
    assert await flusher.flush_once(force=True)
    stats, ledger = flusher.stats(), buffer.snapshot()
    assert (stats.internal_errors, stats.retries) == (0, 2)
    assert ledger.written == 3 and ledger.dead_lettered == 0 and ledger.balances()
    assert len(sink.rows(schema.SPANS)) == 3


async def test_refused_rows_are_logged_rate_limited_and_letters_past_the_cap_count_as_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many refused rows give one warning, not one each; past the pending cap they are dropped
    and counted as dropped, never as dead-lettered."""
    monkeypatch.setattr(flusher_module, "_MAX_PENDING_DEAD_LETTERS", 5)
    buffer, sink, flusher, _ = make(batch=64)
    sink.refuse = lambda table, row: True
    sink.available = True
    # The dead letters cannot be written either, so they stay pending: the cap is reached.
    monkeypatch.setattr(sink, "write_dead_letters", _never_written)
    for _ in range(12):
        buffer.put(llm_event())
    with capture_logs() as logs:
        await flusher.flush_once(force=True)
    ledger = buffer.snapshot()
    assert (ledger.dead_lettered, ledger.dropped_overflow) == (5, 7), ledger
    assert ledger.balances() and ledger.in_flight == 0
    lettered = [e for e in logs if e["event"] == "batch_dead_lettered"]
    dropped = [e for e in logs if e["event"] == "dead_letter_dropped"]
    assert len(lettered) == 1 and len(dropped) == 1, logs


async def _never_written(letters: Sequence[Any]) -> None:
    raise RetriableSinkError("dead_letters is locked", sqlstate="55P03")


async def test_what_a_flush_is_done_with_waits_for_the_next_collection() -> None:
    """The taken events and each written batch are buried, not freed one by one (see
    tracewriter/_graveyard.py), and the next collection frees them; the ledger balances."""
    buffer, sink, flusher, _ = make()
    threshold = gc.get_threshold()
    gc.set_threshold(0)  # no automatic collection in between; the collector stays enabled
    try:
        gc.collect()
        assert graveyard.buried() == 0
        for _ in range(10):
            buffer.put(llm_event())
        assert await flusher.flush_once(force=False)
        assert len(sink.rows(schema.SPANS)) == 10
        assert graveyard.buried() >= 2  # the taken deque and the written batch
        gc.collect(0)
        assert graveyard.buried() == 0
    finally:
        gc.set_threshold(*threshold)
    assert buffer.snapshot().balances() and buffer.snapshot().written == 10
