"""Property tests: arbitrary arguments through every public recording call.

Whatever a caller passes — text with NUL characters, lone surrogates, emoji or a megabyte of it;
numbers negative, huge, NaN or infinite, or not numbers at all; metadata nested, cyclic,
unserialisable or keyed by non-strings; malformed ids and ``traceparent`` headers — no call
raises, the buffer stays bounded, and every row that reaches PostgreSQL reads back equal to the
caller's values as the library's own sanitisers (``clean_text``, ``clean_int``, ``clean_float``,
``encode_metadata``) transform them. Nothing the sanitisers let through is refused by the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import types
import uuid
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewriter import ObservabilityService, TraceContext
from tracewriter._records import (
    CONTENT_CHARS,
    ERROR_MESSAGE_CHARS,
    PREVIEW_CHARS,
    clean_float,
    clean_int,
    clean_text,
    encode_metadata,
)

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- hostile values ---------------------------------------------------------------------------


class AppError(Exception):
    """What the application raises inside a span."""


class Colour(enum.Enum):
    RED = "red"
    HUGE = 2**80


class Unprintable:
    """An object whose str() raises (its repr works: hypothesis needs it to report examples)."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        return "Unprintable()"


@dataclasses.dataclass
class Point:
    x: int
    y: object


SPECIAL_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "😀",
    "👩‍👩‍👧‍👦",
    "e\u0301",
    "\ufeff\u202e\u200b",
    "\U0010ffff",
    "\\",
    "\\u0000",
    "'); DROP TABLE observability.spans; --",
    "\t\n\r\x0b\x0c\x1f\x7f",
    "null",
    '{"a": 1}',
]
ALL_CHARS = st.characters(exclude_categories=())  # surrogates and NUL included
short_text = st.one_of(st.text(ALL_CHARS, max_size=30), st.sampled_from(SPECIAL_TEXT))
# Lengths around the truncation limits (500 for previews, 1000 for names and messages).
long_text = st.builds(
    lambda piece, n: (piece * n)[:n],
    st.sampled_from(["x", "é", "😀", "a\x00", "\ud800z"]),
    st.sampled_from([499, 500, 501, 999, 1000, 1001, 1500]),
)
text = st.one_of(short_text, long_text)
OBJECTS = [
    Colour.RED,
    Colour.HUGE,
    Unprintable(),
    b"by\x00tes",
    Decimal("NaN"),
    Decimal("1e400"),
    Fraction(1, 3),
    uuid.UUID(int=1),
    dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC),
    dt.date(1, 1, 1),
    Point(1, float("nan")),
    object(),
    1 + 2j,
    10**400,
    {1, 2, 3},
    frozenset({"a"}),
]
numbers = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from(
        [0, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 1e308, -0.0, 5e-324, True, "12", "x"]
    ),
    st.sampled_from(OBJECTS),
)
# A field typed ``str`` may receive anything by mistake.
loose_text = st.one_of(text, text, numbers)

json_keys = st.one_of(
    text,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.none(),
    st.booleans(),
    st.sampled_from([Colour.RED, (1, "a"), uuid.UUID(int=7)]),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    text,
    st.sampled_from(OBJECTS),
)
json_values = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(json_keys, kids, max_size=4),
        st.tuples(kids, kids),
    ),
    max_leaves=16,
)


def cyclic(base: dict[Any, Any], how: str) -> dict[Any, Any]:
    value = dict(base)
    if how == "dict":
        value["self"] = value
    else:
        loop: list[Any] = [value]
        loop.append(loop)
        value["loop"] = loop
    return value


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "bottom"}
    for i in range(depth):
        value = {f"level{i}": value}
    return value


metadata = st.one_of(
    st.none(),
    st.dictionaries(json_keys, json_values, max_size=6),
    json_values,  # not a mapping at all
    st.builds(cyclic, st.dictionaries(st.text(max_size=4), leaves, max_size=3), st.just("dict")),
    st.builds(cyclic, st.dictionaries(st.text(max_size=4), leaves, max_size=3), st.just("list")),
    st.builds(nested, st.sampled_from([63, 64, 65, 254, 300])),
    st.builds(types.MappingProxyType, st.dictionaries(st.text(max_size=4), leaves, max_size=3)),
)

hex_ids = st.one_of(
    st.text("0123456789abcdef", min_size=16, max_size=16),
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.text("0123456789ABCDEF", min_size=16, max_size=32),
    st.sampled_from(["0" * 16, "0" * 32, "", None, 12345, "g" * 16]),
    short_text,
)
valid_header = st.builds(
    lambda v, t, p, f: f"{v}-{t}-{p}-{f}",
    st.sampled_from(["00", "01", "ff", "0g"]),
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.text("0123456789abcdef", min_size=16, max_size=16),
    st.sampled_from(["00", "01", "ff", "x1"]),
)
headers = st.one_of(
    st.none(),
    st.text(ALL_CHARS, max_size=70),
    valid_header,
    st.builds(lambda h, s: h + s, valid_header, st.sampled_from(["", "-", "-x", " ", "\t", "0"])),
    st.builds(str.upper, valid_header),
    st.sampled_from(OBJECTS),
)

identity = {"user_id": loose_text, "session_id": loose_text, "kb_id": loose_text}
contexts = st.one_of(
    st.fixed_dictionaries(
        {
            "kind": st.just("trace"),
            "name": loose_text,
            **identity,
            "metadata": metadata,
            "end": st.fixed_dictionaries(
                {
                    "status": loose_text,
                    "error_message": loose_text,
                    "duration_ms": numbers,
                    "metadata": metadata,
                }
            ),
        }
    ),
    st.fixed_dictionaries({"kind": st.just("traceparent"), "header": headers, **identity}),
    st.fixed_dictionaries(
        {
            "kind": st.just("forged"),
            "trace_id": hex_ids,
            "span_id": hex_ids,
            "parent_span_id": hex_ids,
            **identity,
        }
    ),
    st.just({"kind": "none"}),
)
operations = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("span"),
            "name": loose_text,
            "span_type": loose_text,
            "metadata": metadata,
            "raise": st.one_of(st.none(), text),
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("llm"),
            "model": loose_text,
            "provider": loose_text,
            "input_tokens": numbers,
            "output_tokens": numbers,
            "cached_input_tokens": numbers,
            "reasoning_tokens": numbers,
            "duration_ms": numbers,
            "status": loose_text,
            "error_message": loose_text,
            "name": loose_text,
            "metadata": metadata,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("chat"),
            "role": loose_text,
            "content": loose_text,
            "token_count": numbers,
            "metadata": metadata,
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("document"),
            "document_id": loose_text,
            "event_type": loose_text,
            "status": loose_text,
            "duration_ms": numbers,
            "chunk_count": numbers,
            "error_message": loose_text,
            "metadata": metadata,
        }
    ),
)
requests = st.fixed_dictionaries(
    {"ctx": contexts, "ops": st.lists(operations, min_size=1, max_size=4)}
)

# --- expected rows ----------------------------------------------------------------------------


class _Anything:
    """Equal to every value: for what the library measures itself (durations, random ids)."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Anything()


class _OwnTraceId:
    """Equal to any valid trace id: what a message or event recorded outside a trace gets (its
    row id in hex, which the test does not know in advance)."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return valid_hex(other, 32)

    def __repr__(self) -> str:
        return "OWN_TRACE_ID"


OWN_TRACE_ID: Any = _OwnTraceId()


def snapshot(value: Any) -> Any:
    """What the service keeps of a caller's metadata: a shallow copy of a plain dict."""
    return dict(value) if type(value) is dict else value


def meta(value: Any) -> str | None:
    return encode_metadata(snapshot(value))


def merged(start: str | None, end: str | None) -> str | None:
    """A trace's metadata after its end: the end's merged over the start's, as jsonb's ``||``."""
    if end is None or end == start:
        return start
    if start is None:
        return end
    a, b = json.loads(start), json.loads(end)
    if isinstance(a, dict) and isinstance(b, dict):
        return json.dumps({**a, **b})
    return json.dumps((a if isinstance(a, list) else [a]) + (b if isinstance(b, list) else [b]))


def as_json(text: str | None) -> Any:
    # Decimal on both sides: jsonb keeps the number's decimal value, not the float that
    # json.loads would make of it (1.5e300 comes back as 15 followed by 299 zeros).
    return None if text is None else json.loads(text, parse_float=Decimal, parse_int=Decimal)


def duration(value: Any) -> Any:
    """A caller-given duration as stored: finite and not negative; measured (ANY) if unusable."""
    number = clean_float(value)
    return ANY if number is None else max(number, 0.0)


def stored_duration(value: Any) -> float:
    """The duration of an event that ends as it starts (LLM call, document event): 0 if unusable."""
    number = clean_float(value)
    return 0.0 if number is None else max(number, 0.0)


def valid_hex(value: Any, length: int) -> bool:
    return (
        type(value) is str
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
        and value != "0" * length
    )


def identity_of(ctx: TraceContext | None) -> dict[str, Any]:
    if ctx is None:
        return {"user_id": None, "session_id": None, "kb_id": None}
    return {
        "user_id": clean_text(ctx.user_id),
        "session_id": clean_text(ctx.session_id),
        "kb_id": clean_text(ctx.kb_id),
    }


SPAN_NULLS = dict.fromkeys(
    (
        "error_type",
        "error_message",
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
    )
)


@dataclasses.dataclass
class Expected:
    """The rows one request must leave in each table, and how many events it must reject."""

    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    traces: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    chat_messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    document_events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejected: int = 0


def make_context(svc: ObservabilityService, spec: dict[str, Any]) -> TraceContext | None:
    kind = spec["kind"]
    ids = {k: spec[k] for k in ("user_id", "session_id", "kb_id")} if kind != "none" else {}
    if kind == "trace":
        return svc.start_trace(spec["name"], metadata=spec["metadata"], **ids)
    if kind == "traceparent":
        ctx = TraceContext.from_traceparent(spec["header"], **ids)
        assert ctx is None or ctx.is_valid()
        return ctx
    if kind == "forged":
        return TraceContext(
            trace_id=spec["trace_id"],
            span_id=spec["span_id"],
            parent_span_id=spec["parent_span_id"],
            **ids,
        )
    return None


def perform(
    svc: ObservabilityService, ctx: TraceContext | None, op: dict[str, Any], want: Expected
) -> None:
    """Make one recording call (it must not raise) and add the rows it must produce."""
    kind = op["op"]
    args = {k: v for k, v in op.items() if k not in ("op", "raise")}
    trace_ok = ctx is None or valid_hex(ctx.trace_id, 32)
    # Without a context the call starts a new root trace, whose random ids become the parents.
    parent = ANY if ctx is None else (ctx.span_id if valid_hex(ctx.span_id, 16) else None)
    trace_id = ANY if ctx is None else ctx.trace_id
    if kind == "span":
        message = op["raise"]
        try:
            with svc.span(ctx, args["name"], args["span_type"], args["metadata"]) as span_id:
                if message is not None:
                    raise AppError(message)
        except AppError as exc:
            assert exc.args == (message,)  # the application's exception, unchanged
        row = {
            **SPAN_NULLS,
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_span_id": parent,
            "name": clean_text(args["name"]),
            "span_type": clean_text(args["span_type"], 64),
            "status": "ok" if message is None else "error",
            "duration_ms": ANY,
            "error_type": None if message is None else "AppError",
            "error_message": None if message is None else clean_text(message, ERROR_MESSAGE_CHARS),
            **identity_of(ctx),
            "metadata": meta(args["metadata"]),
        }
        if trace_ok:
            want.spans.append(row)
        else:
            want.rejected += 2
    elif kind == "llm":
        span_id = svc.log_llm_call(ctx, **args)
        assert valid_hex(span_id, 16)
        row = {
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_span_id": parent,
            "name": clean_text(args["name"]),
            "span_type": "llm",
            "status": clean_text(args["status"], 32) or "ok",
            "duration_ms": stored_duration(args["duration_ms"]),
            "error_type": None,
            "error_message": clean_text(args["error_message"], ERROR_MESSAGE_CHARS),
            "model": clean_text(args["model"], 256),
            "provider": clean_text(args["provider"], 256),
            **{
                k: clean_int(args[k])
                for k in (
                    "input_tokens",
                    "output_tokens",
                    "cached_input_tokens",
                    "reasoning_tokens",
                )
            },
            **identity_of(ctx),
            "metadata": meta(args["metadata"]),
        }
        if trace_ok:
            want.spans.append(row)
        else:
            want.rejected += 1
    elif kind == "chat":
        assert svc.log_chat_message(ctx, **args) is None
        content = clean_text(args["content"], CONTENT_CHARS) or ""
        want.chat_messages.append(
            {
                "trace_id": ctx.trace_id if ctx and valid_hex(ctx.trace_id, 32) else OWN_TRACE_ID,
                "span_id": ctx.span_id if ctx and valid_hex(ctx.span_id, 16) else None,
                **identity_of(ctx),
                "role": clean_text(args["role"], 64) or "unknown",
                "content": content,
                "content_preview": content[:PREVIEW_CHARS],
                "token_count": clean_int(args["token_count"]),
                "metadata": meta(args["metadata"]),
            }
        )
    else:
        assert svc.log_document_event(ctx, **args) is None
        ident = identity_of(ctx)
        if ctx is None or not _truthy(ctx.kb_id):
            # Refused by the service, which logs and counts it (whatever event_type is).
            want.rejected += 1
            return
        if not ident["kb_id"]:
            want.rejected += 1  # refused when the row is built: kb_id empty once sanitised
            return
        want.document_events.append(
            {
                "trace_id": ctx.trace_id if valid_hex(ctx.trace_id, 32) else OWN_TRACE_ID,
                "kb_id": ident["kb_id"],
                "document_id": clean_text(args["document_id"]) or "",
                "event_type": clean_text(args["event_type"], 64) or "unknown",
                "status": clean_text(args["status"], 32) or "ok",
                "duration_ms": stored_duration(args["duration_ms"]),
                "chunk_count": clean_int(args["chunk_count"]),
                "error_type": None,
                "error_message": clean_text(args["error_message"], ERROR_MESSAGE_CHARS),
                "metadata": meta(args["metadata"]),
            }
        )


def _truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:
        return False


def record(svc: ObservabilityService, request: dict[str, Any]) -> Expected:
    """Make every call of ``request``; return what the database must then hold."""
    want = Expected()
    spec = request["ctx"]
    ctx = make_context(svc, spec)
    for op in request["ops"]:
        perform(svc, ctx, op, want)
    if spec["kind"] == "trace":
        assert ctx is not None
        end = spec["end"]
        svc.end_trace(ctx, **end)
        want.traces.append(
            {
                "trace_id": ctx.trace_id,
                "span_id": ctx.span_id,
                "name": clean_text(spec["name"]),
                **identity_of(ctx),
                "status": clean_text(end["status"], 32) or "ok",
                "duration_ms": duration(end["duration_ms"]),
                "error_type": None,
                "error_message": clean_text(end["error_message"], ERROR_MESSAGE_CHARS),
                "metadata": merged(meta(spec["metadata"]), meta(end["metadata"])),
            }
        )
    return want


# --- reading back -----------------------------------------------------------------------------

COLUMNS = {
    "spans": (
        "trace_id, span_id, parent_span_id, name, span_type, status, duration_ms, error_type, "
        "error_message, model, provider, input_tokens, output_tokens, cached_input_tokens, "
        "reasoning_tokens, user_id, session_id, kb_id"
    ),
    "traces": (
        "trace_id, span_id, name, user_id, session_id, kb_id, status, duration_ms, error_type, "
        "error_message"
    ),
    "chat_messages": (
        "trace_id, span_id, session_id, user_id, kb_id, role, content, content_preview, token_count"
    ),
    "document_events": (
        "trace_id, kb_id, document_id, event_type, status, duration_ms, chunk_count, "
        "error_type, error_message"
    ),
}


def stored(conn: psycopg.Connection[Any], table: str) -> list[dict[str, Any]]:
    cur = conn.execute(
        f"SELECT {COLUMNS[table]}, metadata::text AS metadata FROM observability.{table}"
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def assert_same_rows(table: str, expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    """The two lists hold equal rows (metadata compared as JSON values), in any order."""
    left = [{**r, "metadata": as_json(r["metadata"])} for r in got]
    for row in expected:
        want = {**row, "metadata": as_json(row["metadata"])}
        for i, candidate in enumerate(left):
            if want == candidate:
                del left[i]
                break
        else:
            pytest.fail(f"{table}: no stored row equals {want!r}\nstored: {left!r}")
    assert not left, f"{table}: unexpected rows {left!r}"


# --- fixtures and tests -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dsn(migrated_database: Any) -> Iterator[str]:
    """A migrated database of this module's own (its tests empty whole tables)."""
    with migrated_database("tw_fuzz") as dsn:
        yield dsn


def run_requests(fuzz_dsn: str, strategy: st.SearchStrategy[Any], max_examples: int) -> None:
    """Check every example of ``strategy`` (a list of requests) against the database."""
    svc = ObservabilityService(
        fuzz_dsn, thread_mode=True, flush_interval=3600.0, max_buffer_rows=10_000
    )
    svc.start_sync()
    try:
        with psycopg.connect(fuzz_dsn, autocommit=True) as conn:

            @settings(SETTINGS, max_examples=max_examples)
            @given(strategy)
            def check(batch: list[dict[str, Any]]) -> None:
                for table in (*COLUMNS, "dead_letters", "metrics_aggregates", "applied_batches"):
                    conn.execute(f"DELETE FROM observability.{table}")
                before = svc.stats()
                assert before is not None
                wants = [record(svc, request) for request in batch]
                assert svc.flush_sync(timeout=60)
                after = svc.stats()
                assert after is not None and after.balances()
                assert (after.buffered, after.in_flight) == (0, 0)
                assert after.dead_lettered == before.dead_lettered  # nothing was refused
                assert after.rejected_invalid - before.rejected_invalid == sum(
                    w.rejected for w in wants
                )
                for table in COLUMNS:
                    expected = [row for w in wants for row in getattr(w, table)]
                    assert_same_rows(table, expected, stored(conn, table))

            check()
    finally:
        svc.close_sync(timeout=10)


def test_arbitrary_arguments_never_raise_and_read_back_sanitised(fuzz_dsn: str) -> None:
    """Arbitrary arguments to start_trace, end_trace, span, log_llm_call, log_chat_message and
    log_document_event (any context: a trace, a traceparent header, forged ids, none) never
    raise, and each table then holds exactly the sanitised rows."""
    run_requests(fuzz_dsn, st.lists(requests, min_size=1, max_size=3), max_examples=300)


megabyte = st.builds(
    lambda piece, n: (piece * n)[:n],
    st.sampled_from(["x", "😀", "a\x00", "\ud800"]),
    st.sampled_from([1_000_000, 1_048_577]),
)


def test_megabyte_values_are_truncated_or_kept_as_documented(fuzz_dsn: str) -> None:
    """Megabyte strings as chat content, names, messages and metadata are written: truncated to
    their column's limit, or (metadata over 1 MiB) replaced by a marker with a preview."""
    big_request = st.fixed_dictionaries(
        {
            "ctx": st.fixed_dictionaries(
                {
                    "kind": st.just("trace"),
                    "name": megabyte,
                    "user_id": megabyte,
                    "session_id": st.none(),
                    "kb_id": st.just("kb"),
                    "metadata": st.fixed_dictionaries({"blob": megabyte}),
                    "end": st.fixed_dictionaries(
                        {
                            "status": megabyte,
                            "error_message": megabyte,
                            "duration_ms": st.just(1.0),
                            "metadata": st.none(),
                        }
                    ),
                }
            ),
            "ops": st.tuples(
                st.fixed_dictionaries(
                    {
                        "op": st.just("chat"),
                        "role": megabyte,
                        "content": megabyte,
                        "token_count": st.just(1),
                        "metadata": st.just({"k": "v"}),
                    }
                )
            ),
        }
    )
    run_requests(fuzz_dsn, st.lists(big_request, min_size=1, max_size=1), max_examples=6)


@SETTINGS
@given(st.lists(st.tuples(operations, contexts), min_size=1, max_size=60))
def test_the_buffer_stays_bounded_whatever_is_recorded(
    calls: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Recording arbitrary calls into a writer that cannot flush keeps at most max_buffer_rows
    events (each holds references, never copies); the excess is counted as dropped and close()
    accounts for the rest."""
    limit = 20
    svc = ObservabilityService(
        "postgresql://nobody@127.0.0.1:1/none", max_buffer_rows=limit, max_batch_rows=limit
    )
    writer = svc.postgres
    assert writer is not None
    for op, spec in calls:
        ctx = make_context(svc, spec)
        perform(svc, ctx, op, Expected())
        stats = writer.stats()
        assert stats.buffered + stats.in_flight <= limit
        assert stats.balances()
    stats = writer.stats()
    assert stats.dropped_overflow == stats.enqueued - stats.buffered - stats.rejected_invalid
    asyncio.run(svc.close(timeout=0))
    closed = writer.stats()
    assert closed.balances() and closed.buffered == 0
    assert closed.dropped_at_close == stats.buffered


@SETTINGS
@given(headers)
def test_traceparent_parsing_never_raises(header: Any) -> None:
    """from_traceparent returns None or a valid context for any input, and a valid context
    round-trips through to_traceparent."""
    ctx = TraceContext.from_traceparent(header)
    if ctx is not None:
        assert ctx.is_valid()
        again = TraceContext.from_traceparent(ctx.to_traceparent())
        assert again is not None and again.trace_id == ctx.trace_id
        assert again.parent_span_id == ctx.span_id


def test_trace_metadata_merges_exactly_whatever_its_shape(fuzz_dsn: str) -> None:
    """A trace whose start and end both carry metadata — integers past 64 bits or past a
    double's range, or a non-dict mapping — is written with the end's metadata merged over the
    start's, numbers exact, and the flush never crashes on it (pinned, not left to chance)."""
    shapes = [
        ({"big": 2**70, "keep": 1}, {"big": -(2**65), "end": 10**400}),
        (types.MappingProxyType({"a": 1}), {"b": 2}),
        ({"a": 1}, types.MappingProxyType({"b": 2})),
        ([1, 2], {"b": [3]}),
    ]
    requests = [
        {
            "ctx": {
                "kind": "trace",
                "name": "merge",
                "user_id": None,
                "session_id": None,
                "kb_id": None,
                "metadata": start,
                "end": {"status": "ok", "error_message": None, "duration_ms": 1.0, "metadata": end},
            },
            "ops": [],
        }
        for start, end in shapes
    ]
    with ObservabilityService(fuzz_dsn, thread_mode=True, flush_interval=3600.0) as svc:
        wants = [record(svc, request) for request in requests]
        assert svc.flush_sync(timeout=30)
        stats = svc.stats()
        with psycopg.connect(fuzz_dsn, autocommit=True) as conn:
            got = [r for r in stored(conn, "traces") if r["name"] == "merge"]
    assert stats is not None and stats.balances() and stats.internal_errors == 0
    assert (stats.buffered, stats.in_flight) == (0, 0)
    assert_same_rows("traces", [row for w in wants for row in w.traces], got)
