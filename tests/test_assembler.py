"""The assembler and the event layout: plain tuples in, coalesced rows out, nothing the GC walks.

No database: the assembler is pure, and the flusher's retry state is driven with the in-memory
sink. The garbage-collector checks use ``gc.is_tracked`` after two full collections, which is
deterministic: a tuple of atomic values is untracked by the first collection it survives, and a
tuple holding one (an event's ``detail``) by the next — as every object has been by the time it
reaches the oldest generation, the one whose collections are the long pauses.
"""

from __future__ import annotations

import gc
import json
from collections import deque
from typing import Any

import pytest

from tracewriter import (
    Event,
    EventKind,
    ObservabilityService,
    PostgresProvider,
    Provider,
    WriterConfig,
)
from tracewriter import _records as records
from tracewriter import _schema as schema
from tracewriter._assembler import Assembler
from tracewriter._ids import new_span_id, new_trace_id
from tracewriter.testing import InMemorySink

pytestmark = pytest.mark.timeout(60)

NEVER = "postgresql://nobody@localhost/never_connected"


class Capture(Provider):
    """A provider that keeps the events it is given."""

    name = "capture"

    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        self.events.append(event)


def record_everything(svc: ObservabilityService, metadata: Any) -> None:
    ctx = svc.start_trace("t", user_id="u", session_id="s", kb_id="kb", metadata=metadata)
    with svc.span(ctx, "retrieve", "retrieval", metadata):
        svc.log_llm_call(ctx, model="m", input_tokens=3, output_tokens=4, metadata=metadata)
    svc.log_chat_message(ctx, role="user", content="hi", metadata=metadata)
    svc.log_document_event(ctx, document_id="d", event_type="parse", metadata=metadata)
    svc.end_trace(ctx, metadata=metadata)


def test_events_are_plain_tuples_laid_out_as_event() -> None:
    """Providers get exact flat tuples; the index constants and Event.of name their fields."""
    capture = Capture()
    svc = ObservabilityService(providers=[capture])
    record_everything(svc, {"a": 1})
    ctx = svc.start_trace("t")
    svc.start_span(ctx, "stream", "llm").end()  # a handle ended with no facts
    svc.start_span(ctx, "stream", "llm").end(model="m", output_tokens=4, metadata={"a": 1})
    scope = svc.span(ctx, "generate", "llm")
    with scope:
        scope.set(model="m", input_tokens=3)
    assert len(capture.events) == 14
    assert all(type(e) is tuple for e in capture.events)
    # The common fields, then the kind's own inline, padded with None to six: 22 fields, so
    # that no event comes from CPython's tuple free lists (uncounted by the collector).
    kind_fields = {EventKind.SPAN: 6, EventKind.CHAT: 3, EventKind.DOCUMENT: 3}
    for e in capture.events:
        assert len(e) == records.EVENT_LEN == 22
        # An end carrying facts (a handle's, a scope's) uses the LLM span's six.
        facts = e[records.KIND] == EventKind.SPAN_END and e[records.DETAIL :] != records.NO_DETAIL
        used = 6 if facts else kind_fields.get(e[records.KIND], 0)
        assert e[records.DETAIL + used :] == (None,) * (6 - used)
        assert all(type(v) is not tuple for v in e)  # nothing nested: untracked at once
    llm = next(e for e in capture.events if e[records.KIND] == EventKind.SPAN)
    view = Event.of(llm)
    assert view.kind == EventKind.SPAN and view.span_type == "llm"
    assert llm[records.TRACE_ID] == view.trace_id and llm[records.DETAIL] == "m"
    assert view.detail is not None and view.detail[0] == "m" and view.flat() == llm
    trace_start = capture.events[0]
    assert Event.of(trace_start).detail is None and Event.of(trace_start).flat() == trace_start
    for name in Event._fields:
        assert getattr(records, name.upper()) == Event._fields.index(name)


@pytest.mark.parametrize(
    "metadata",
    [None, {"a": 1, "b": "x", "c": 1.5}, {"nested": {"a": [1, 2]}, "k": [1, 2, 3]}],
    ids=["none", "flat", "nested"],
)
def test_buffered_events_are_invisible_to_the_cycle_collector(metadata: Any) -> None:
    """After one young collection no buffered event (nor anything it holds) is tracked by the
    GC: nothing nested in an event makes it wait for a second collection, in an older
    generation whose collections walk every object it holds."""
    svc = ObservabilityService(NEVER, max_buffer_rows=1000, max_batch_rows=1000)
    for _ in range(20):
        record_everything(svc, metadata)
    assert svc.postgres is not None
    events = list(svc.postgres._buffer._items)
    assert len(events) == 140
    gc.collect(0)
    tracked = [e for e in events if gc.is_tracked(e)]
    assert tracked == []
    assert not any(gc.is_tracked(e[records.METADATA]) for e in events)


def test_metadata_is_snapshotted_as_json_text() -> None:
    """A metadata dict becomes JSON text at record time: later mutation by the caller is not
    seen, event_metadata() reads it back, and the row holds the same JSON text."""
    nested: dict[str, Any] = {"k": [1, 2], "d": {"x": "y"}}
    flat = {"a": 1}
    snap_nested = records.snapshot_metadata(nested)
    snap_flat = records.snapshot_metadata(flat)
    nested["k"].append(3)
    flat["a"] = 2
    assert type(snap_nested) is str and records.event_metadata(snap_nested) == {
        "k": [1, 2],
        "d": {"x": "y"},
    }
    assert type(snap_flat) is str and records.event_metadata(snap_flat) == {"a": 1}
    assert records.metadata_text(snap_flat) == records.encode_metadata({"a": 1})
    assert json.loads(records.metadata_text(snap_nested) or "") == {"k": [1, 2], "d": {"x": "y"}}
    # A caller's own text is not mistaken for encoded JSON.
    assert records.snapshot_metadata("raw") == {"value": "raw"}
    assert records.metadata_text(records.snapshot_metadata("raw")) == '{"value":"raw"}'
    # orjson refuses a cycle: the copy is kept, and the background path encodes it thoroughly.
    cyclic: dict[str, Any] = {}
    cyclic["self"] = [cyclic]
    kept = records.snapshot_metadata(cyclic)
    assert type(kept) is dict
    assert "<cycle>" in (records.metadata_text(kept) or "")


def test_nul_in_encoded_metadata_is_removed_as_encode_metadata_does() -> None:
    """JSON text carrying a NUL character ends as the same text encode_metadata gives."""
    value = {"k": ["a\x00b"], "n": {"x": "\x00"}}
    snap = records.snapshot_metadata(value)
    assert type(snap) is str
    assert records.metadata_text(snap) == records.encode_metadata(value)
    assert "\\u0000" not in (records.metadata_text(snap) or "")


def span_event(kind: str, trace_id: str, span_id: str, **kw: Any) -> tuple[Any, ...]:
    fields: dict[str, Any] = dict.fromkeys(Event._fields)
    fields.update(kind=kind, start_ns=1_700_000_000_000_000_000, trace_id=trace_id)
    fields.update(span_id=span_id, name="s", span_type="chain")
    fields.update(kw)
    return Event(**fields).flat()


def test_assembler_coalesces_holds_and_releases() -> None:
    """A start and end in one pass become one row of weight 2; a lone start is held until the
    grace passes, then released open, and its later end becomes an upsert."""
    trace = new_trace_id()
    a, b = new_span_id(), new_span_id()
    assembler = Assembler(open_row_grace=5.0)
    events = deque(
        [
            span_event(EventKind.SPAN_START, trace, a),
            span_event(EventKind.SPAN_START, trace, b),
            span_event(EventKind.SPAN_END, trace, a, status="ok", duration_ms=2.0),
        ]
    )
    assert assembler.add(events, now=100.0, limit=2) == 2  # a slice at a time
    assert assembler.add(events, now=100.0, limit=10) == 1 and not events
    inserts, ends = assembler.take()
    assert len(inserts[schema.SPANS]) == 1 and list(inserts[schema.SPANS].weights) == [2]
    assert inserts[schema.SPANS].rows[0][schema.SPAN_COLUMNS.index("status")] == "ok"
    assert not ends and assembler.held == 1 and assembler.pending_events() == 1
    assembler.release(104.0, force=False)
    assert assembler.held == 1
    assembler.release(105.0, force=False)
    inserts, _ = assembler.take()
    assert assembler.held == 0
    assert inserts[schema.SPANS].rows[0][schema.SPAN_COLUMNS.index("status")] == "open"
    assembler.add(deque([span_event(EventKind.SPAN_END, trace, b, status="error")]), 106.0, 10)
    inserts, ends = assembler.take()
    assert not inserts and len(ends[schema.SPANS]) == 1


def test_a_coalesced_event_takes_the_outcome_from_the_end_and_the_rest_from_the_start() -> None:
    """coalesce() keeps the start's identity and the end's outcome, merges the end's metadata
    over the start's, and builds the same row as the start completed by the end."""
    trace, span = new_trace_id(), new_span_id()
    start = span_event(
        EventKind.SPAN_START, trace, span, user_id="u", metadata=records.snapshot_metadata({"a": 1})
    )
    end = span_event(
        EventKind.SPAN_END,
        trace,
        span,
        name="ignored",
        status="error",
        duration_ms=7.5,
        error_type="Boom",
        error_message="went wrong",
        end_ns=1_700_000_000_007_500_000,
        metadata=records.snapshot_metadata({"b": 2}),
    )
    view = Event.of(records.coalesce(start, end))
    assert (view.kind, view.start_ns, view.end_ns) == (EventKind.SPAN_END, start[1], end[2])
    assert (view.name, view.user_id, view.status, view.duration_ms) == ("s", "u", "error", 7.5)
    assert (view.error_type, view.error_message) == ("Boom", "went wrong")
    assert json.loads(view.metadata) == {"a": 1, "b": 2}
    _, row = records.build(records.coalesce(start, end))
    columns = dict(zip(schema.SPAN_COLUMNS, row, strict=True))
    assert columns["status"] == "error" and columns["error_type"] == "Boom"
    assert columns["name"] == "s" and json.loads(columns["metadata"]) == {"a": 1, "b": 2}


class Unhashable:
    """A status whose hash raises something other than TypeError: no row can hold it."""

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


def test_an_unusable_end_leaves_its_start_an_open_row() -> None:
    """Unusable numbers in an end only lose the duration; an end no row can be built from
    leaves its start written open, and the end alone is refused and counted."""
    trace, span = new_trace_id(), new_span_id()
    assembler = Assembler(open_row_grace=5.0)
    odd_end = span_event(EventKind.SPAN_END, trace, span, status="ok")
    odd_end = (*odd_end[:2], "not a number", *odd_end[3:9], float("nan"), *odd_end[10:])
    assembler.add(deque([span_event(EventKind.SPAN_START, trace, span), odd_end]), 0.0, 10)
    inserts, ends = assembler.take()
    rows = inserts[schema.SPANS].rows
    assert len(rows) == 1 and list(inserts[schema.SPANS].weights) == [2]
    assert rows[0][schema.SPAN_COLUMNS.index("duration_ms")] is None
    assert not ends and assembler.take_rejected() == []

    other = new_span_id()
    hostile_end = span_event(EventKind.SPAN_END, trace, other, status=Unhashable())
    assembler.add(deque([span_event(EventKind.SPAN_START, trace, other), hostile_end]), 0.0, 10)
    inserts, ends = assembler.take()
    rows = inserts[schema.SPANS].rows
    assert len(rows) == 1 and list(inserts[schema.SPANS].weights) == [1]
    assert rows[0][schema.SPAN_COLUMNS.index("status")] == "open"
    assert not ends and len(assembler.take_rejected()) == 1


def test_assembler_rejects_bad_events_without_losing_the_rest() -> None:
    """Malformed ids and hostile values become rejections; the good events still become rows."""
    trace = new_trace_id()
    assembler = Assembler(open_row_grace=5.0)
    events = deque(
        [
            span_event(EventKind.SPAN, "not-hex", new_span_id()),
            span_event(EventKind.SPAN_END, [1, 2], new_span_id()),  # type: ignore[arg-type]
            span_event(EventKind.SPAN, trace, new_span_id()),
            ("no such kind",),
        ]
    )
    assembler.add(events, now=0.0, limit=100)
    rejected = assembler.take_rejected()
    assert len(rejected) == 3
    inserts, _ = assembler.take()
    assert len(inserts[schema.SPANS]) == 1


async def test_rows_held_for_a_retry_are_invisible_to_the_cycle_collector() -> None:
    """While the sink is down, the built rows waiting for a retry are untracked by the GC and
    the ledger still balances; once the sink is back they are all written."""
    sink = InMemorySink()
    provider = PostgresProvider(
        WriterConfig(flush_interval=3600.0, open_row_grace=0.0, retry_max_backoff=0.05),
        sink=sink,
    )
    svc = ObservabilityService(providers=[provider])
    await svc.start()
    sink.available = False
    for _ in range(50):
        record_everything(svc, {"nested": [1, 2]})
    assert not await provider.flush(timeout=0.2)
    batches = [b for q in provider._flusher._inserts.values() for b in q]
    rows = [r for b in batches for r in b.rows]
    assert len(rows) == 250  # 7 events each; the trace and the span each coalesced into a row
    gc.collect()
    gc.collect()
    assert not any(gc.is_tracked(r) for r in rows)
    stats = provider.stats()
    assert stats.balances() and stats.in_flight == 350
    sink.available = True
    assert await provider.flush(timeout=5.0)
    await svc.close()
    stats = provider.stats()
    assert stats.balances() and stats.written == 350


def test_a_literal_backslash_u0000_is_not_taken_for_a_nul_character() -> None:
    """Only a real NUL sends metadata down the thorough (depth-limited) path; the six
    characters backslash-u-0-0-0-0 in a key are stored as they are, however deep the rest."""
    deep: dict[str, object] = {"leaf": "bottom"}
    for i in range(64):
        deep = {f"level{i}": deep}
    literal = {"\\u0000": None, **deep}
    assert json.loads(records.encode_metadata(literal) or "") == literal
    assert "\\u0000" not in (records.encode_metadata({"nul\x00": "a\x00b"}) or "")


def test_integers_past_64_bits_are_decoded_exactly() -> None:
    """Metadata decoded for a provider or a redactor keeps integers past 64 bits exact."""
    text = records.encode_metadata({"huge": 2**80, "neg": -(2**70), "small": 3})
    assert records.decode_json(text or "") == {"huge": 2**80, "neg": -(2**70), "small": 3}
    assert records.event_metadata(text) == {"huge": 2**80, "neg": -(2**70), "small": 3}


def test_the_metadata_bound_counts_utf8_bytes_and_holds_after_a_merge() -> None:
    """Metadata past 1 MiB of UTF-8 (not of characters) becomes a truncation marker, and so
    does a span whose start and end metadata, each under the bound, merge past it."""
    two_byte_chars = "é" * (records.METADATA_BYTES * 6 // 10)  # 0.6 Mi chars, 1.2 MiB
    text = records.encode_metadata({"blob": two_byte_chars}) or ""
    assert len(text) < records.METADATA_BYTES
    assert json.loads(text)["_truncated"] is True
    half = "é" * (records.METADATA_BYTES // 3)  # about 0.67 MiB each
    trace_id, span_id = new_trace_id(), new_span_id()
    start = (
        records.EventKind.SPAN_START, 1, None, trace_id, span_id, None, "s", "chain", None, None,
        None, None, None, None, None, records.encode_metadata({"a": half}), None,
    )  # fmt: skip
    end = (
        records.EventKind.SPAN_END, 1, 2, trace_id, span_id, None, "s", "chain", "ok", 1.0,
        None, None, None, None, None, records.encode_metadata({"b": half}), None,
    )  # fmt: skip
    merged = records.coalesce(start, end)[records.METADATA]
    assert len(merged.encode()) <= records.METADATA_BYTES
    assert json.loads(merged)["_truncated"] is True


@pytest.mark.parametrize("key", [5.952612402491012e-06, 1e-05, 1e16, 0.1, -2.5e300])
def test_a_float_key_is_spelled_alike_on_the_fast_and_the_thorough_path(key: float) -> None:
    """A NUL in a value sends metadata down the thorough path; its float keys must still be
    spelled as orjson spells them on the fast path."""
    fast = json.loads(records.encode_metadata({key: "x"}) or "")
    thorough = json.loads(records.encode_metadata({key: "x\x00"}) or "")
    assert list(fast) == list(thorough)
    assert thorough == {next(iter(fast)): "x"}


def test_label_groups_are_memoised_only_for_short_text() -> None:
    """A request's identity is cleaned once and remembered; a value past 256 characters, or
    one that is not text (1 and True are equal as keys), is cleaned every time and never
    remembered, so the memo neither pins large text nor hands one value another's labels."""
    trace = new_trace_id()
    user_col = schema.SPAN_COLUMNS.index("user_id")
    session_col = schema.SPAN_COLUMNS.index("session_id")

    def row_of(user: object, session: object) -> tuple[Any, ...]:
        event = span_event(EventKind.SPAN, trace, new_span_id(), user_id=user, session_id=session)
        return records.build(event)[1]

    short = f"sess-{new_span_id()}"
    assert row_of("u\x00ser", short)[user_col] == "user"  # NUL removed: PostgreSQL refuses it
    assert (records._I, "u\x00ser", short, None) in records._GROUPS
    assert row_of("u\x00ser", short)[session_col] == short  # from the memo, same labels
    long_session = "s" * 300
    assert row_of("u", long_session)[session_col] == long_session
    assert not any(long_session in key for key in records._GROUPS)
    assert row_of(1, short)[user_col] == "1"
    assert row_of(True, short)[user_col] == "True"
    assert (records._I, 1, short, None) not in records._GROUPS
