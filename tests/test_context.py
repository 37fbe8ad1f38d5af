"""Unit tests of tracewriter._context: TraceContext, the traceparent header, the ContextVar."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracewriter._context import (
    TraceContext,
    current_context,
    is_valid_span_id,
    is_valid_trace_id,
    reset_context,
    tracewriter_current_context,
    use_context,
)
from tracewriter._ids import new_span_id, new_trace_id

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"

trace_ids = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
span_ids = st.text("0123456789abcdef", min_size=16, max_size=16).filter(lambda s: s != "0" * 16)


# --- hierarchy ---------------------------------------------------------------------------------


def test_new_root_has_fresh_valid_ids_and_start_time() -> None:
    """A root context has new valid ids, no parent, the identity given and a UTC start time."""
    before = datetime.now(UTC)
    root = TraceContext.new_root(user_id="u1", session_id="s1", kb_id="kb1")
    assert root.is_valid()
    assert root.parent_span_id is None
    assert (root.user_id, root.session_id, root.kb_id) == ("u1", "s1", "kb1")
    assert root.timestamp is not None
    assert root.timestamp.tzinfo is UTC
    assert before <= root.timestamp <= datetime.now(UTC)
    assert root.start_monotonic is not None
    assert root.start_monotonic <= time.monotonic()
    assert TraceContext.new_root().trace_id != root.trace_id


def test_child_keeps_trace_and_identity_and_links_parent() -> None:
    """A child has the same trace id and identity, a new span id, and its parent's span id."""
    root = TraceContext.new_root(user_id="u1", session_id="s1", kb_id="kb1")
    child = root.child_context()
    grandchild = child.child_context()
    assert child.trace_id == root.trace_id == grandchild.trace_id
    assert (child.user_id, child.session_id, child.kb_id) == ("u1", "s1", "kb1")
    assert (grandchild.user_id, grandchild.session_id, grandchild.kb_id) == ("u1", "s1", "kb1")
    assert child.parent_span_id == root.span_id
    assert grandchild.parent_span_id == child.span_id
    assert len({root.span_id, child.span_id, grandchild.span_id}) == 3
    assert child.is_valid()
    assert grandchild.is_valid()


def test_child_starts_when_created() -> None:
    """A child's wall-clock and monotonic start are taken at creation, not copied."""
    root = TraceContext(TRACE_ID, PARENT_ID, timestamp=datetime(2020, 1, 1, tzinfo=UTC))
    child = root.child_context()
    assert child.timestamp is not None
    assert child.timestamp > datetime(2024, 1, 1, tzinfo=UTC)
    assert child.start_monotonic is not None


def test_context_is_frozen_and_hashable() -> None:
    """A context cannot be mutated and can be used as a dict key."""
    root = TraceContext.new_root()
    with pytest.raises(dataclasses.FrozenInstanceError):
        root.span_id = "0" * 16  # type: ignore[misc]
    assert {root: 1}[root] == 1


def test_fast_construction_equals_init() -> None:
    """The hot-path builder makes the same object as the dataclass __init__."""
    child = TraceContext.new_root(user_id="u").child_context()
    rebuilt = TraceContext(
        **{f.name: getattr(child, f.name) for f in dataclasses.fields(TraceContext)}
    )
    assert rebuilt == child
    assert repr(rebuilt) == repr(child)
    assert rebuilt.start_monotonic == child.start_monotonic
    assert hash(rebuilt) == hash(child)


def test_subclass_children_keep_the_subclass() -> None:
    """child_context and new_root build instances of the class they are called on."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Sub(TraceContext):
        pass

    root = Sub.new_root()
    assert type(root) is Sub
    assert type(root.child_context()) is Sub
    assert type(Sub.from_traceparent(VALID)) is Sub


def test_repr_hides_start_monotonic_and_equality_ignores_it() -> None:
    """start_monotonic is internal: not in the repr and not part of equality."""
    a = TraceContext(TRACE_ID, PARENT_ID, start_monotonic=1.0)
    b = TraceContext(TRACE_ID, PARENT_ID, start_monotonic=2.0)
    assert a == b
    assert "start_monotonic" not in repr(a)


def test_direct_construction_with_invalid_ids_does_not_raise() -> None:
    """Building a context from bad ids works, and is_valid reports them."""
    bad = TraceContext("nope", "NOPE")
    assert not bad.is_valid()
    assert not TraceContext(TRACE_ID, PARENT_ID, parent_span_id="0" * 16).is_valid()
    assert not TraceContext(TRACE_ID, "0" * 16).is_valid()
    assert not TraceContext("0" * 32, PARENT_ID).is_valid()
    assert TraceContext(TRACE_ID, PARENT_ID, parent_span_id=new_span_id()).is_valid()


@pytest.mark.parametrize(
    ("value", "trace_ok", "span_ok"),
    [
        (TRACE_ID, True, False),
        (PARENT_ID, False, True),
        ("0" * 32, False, False),
        ("0" * 16, False, False),
        (TRACE_ID.upper(), False, False),
        (PARENT_ID.upper(), False, False),
        (TRACE_ID[:-1] + "g", False, False),
        (TRACE_ID + "\n", False, False),
        (PARENT_ID + "\n", False, False),
        ("٠" * 16, False, False),  # Arabic-Indic digits: \d would accept them
        (None, False, False),
        (int(TRACE_ID, 16), False, False),
        (TRACE_ID.encode(), False, False),
    ],
)
def test_id_validators(value: object, trace_ok: bool, span_ok: bool) -> None:
    """is_valid_trace_id / is_valid_span_id accept only lowercase hex of the right length."""
    assert is_valid_trace_id(value) is trace_ok
    assert is_valid_span_id(value) is span_ok


# --- traceparent -------------------------------------------------------------------------------


def test_to_traceparent_format() -> None:
    """to_traceparent writes version 00, the ids and the sampled flag."""
    ctx = TraceContext(TRACE_ID, PARENT_ID)
    assert ctx.to_traceparent() == VALID
    assert ctx.to_traceparent(sampled=False) == f"00-{TRACE_ID}-{PARENT_ID}-00"


def test_from_traceparent_continues_the_remote_trace() -> None:
    """A valid header gives the remote trace id, the remote span as parent, and a new span id."""
    ctx = TraceContext.from_traceparent(VALID, user_id="u", session_id="s", kb_id="kb")
    assert ctx is not None
    assert ctx.trace_id == TRACE_ID
    assert ctx.parent_span_id == PARENT_ID
    assert ctx.span_id != PARENT_ID
    assert is_valid_span_id(ctx.span_id)
    assert (ctx.user_id, ctx.session_id, ctx.kb_id) == ("u", "s", "kb")
    assert ctx.timestamp is not None
    assert ctx.start_monotonic is not None


@given(trace_id=trace_ids, span_id=span_ids, sampled=st.booleans())
def test_traceparent_round_trip(trace_id: str, span_id: str, sampled: bool) -> None:
    """Any valid ids survive to_traceparent then from_traceparent, the span becoming the parent."""
    header = TraceContext(trace_id, span_id).to_traceparent(sampled=sampled)
    assert len(header) == 55
    parsed = TraceContext.from_traceparent(header)
    assert parsed is not None
    assert parsed.trace_id == trace_id
    assert parsed.parent_span_id == span_id
    assert parsed.to_traceparent(sampled=sampled)[:36] == header[:36]


@pytest.mark.parametrize(
    "flags", ["00", "01", "02", "03", "09", "ff", "7f", "a0"], ids=lambda f: f"flags-{f}"
)
def test_any_lowercase_hex_flags_accepted(flags: str) -> None:
    """Unknown trace-flags bits are ignored, not refused."""
    assert TraceContext.from_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-{flags}") is not None


INVALID_HEADERS = {
    "version ff": f"ff-{TRACE_ID}-{PARENT_ID}-01",
    "version upper-case hex": f"0A-{TRACE_ID}-{PARENT_ID}-01",
    "version not hex": f"0g-{TRACE_ID}-{PARENT_ID}-01",
    "version one digit": f"0-{TRACE_ID}-{PARENT_ID}-01",
    "version three digits": f"000-{TRACE_ID}-{PARENT_ID}-01",
    "trace id all zeros": f"00-{'0' * 32}-{PARENT_ID}-01",
    "trace id upper-case": f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
    "trace id one upper-case char": f"00-{TRACE_ID[:-1]}A-{PARENT_ID}-01",
    "trace id not hex": f"00-{TRACE_ID[:-1]}g-{PARENT_ID}-01",
    "trace id too short": f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
    "trace id too long": f"00-{TRACE_ID}0-{PARENT_ID}-01",
    "parent id all zeros": f"00-{TRACE_ID}-{'0' * 16}-01",
    "parent id upper-case": f"00-{TRACE_ID}-{PARENT_ID.upper()}-01",
    "parent id not hex": f"00-{TRACE_ID}-{PARENT_ID[:-1]}x-01",
    "parent id too short": f"00-{TRACE_ID}-{PARENT_ID[:-1]}-01",
    "parent id too long": f"00-{TRACE_ID}-{PARENT_ID}0-01",
    "flags upper-case": f"00-{TRACE_ID}-{PARENT_ID}-0A",
    "flags not hex": f"00-{TRACE_ID}-{PARENT_ID}-0g",
    "flags one digit": f"00-{TRACE_ID}-{PARENT_ID}-1",
    "flags three digits": f"00-{TRACE_ID}-{PARENT_ID}-001",
    "separator underscore": f"00_{TRACE_ID}_{PARENT_ID}_01",
    "separator dot after version": f"00.{TRACE_ID}-{PARENT_ID}-01",
    "separator space": f"00 {TRACE_ID} {PARENT_ID} 01",
    "missing flags": f"00-{TRACE_ID}-{PARENT_ID}",
    "missing flags, trailing dash": f"00-{TRACE_ID}-{PARENT_ID}-",
    "missing parent id": f"00-{TRACE_ID}-01",
    "missing version": f"{TRACE_ID}-{PARENT_ID}-01",
    "version 00 with extra field": f"00-{TRACE_ID}-{PARENT_ID}-01-what-the-future-will-not-be",
    "version 00 with trailing dash": f"00-{TRACE_ID}-{PARENT_ID}-01-",
    "version 00 with extra char": f"00-{TRACE_ID}-{PARENT_ID}-010",
    "future version, no dash after flags": f"cc-{TRACE_ID}-{PARENT_ID}-01.what-the-future",
    "future version, too short": f"cc-{TRACE_ID}-{PARENT_ID}-1",
    "future version, all-zero trace id": f"cc-{'0' * 32}-{PARENT_ID}-01-x",
    "empty": "",
    "only whitespace": " \t ",
    "trailing newline": VALID + "\n",
    "leading newline": "\n" + VALID,
    "non-breaking space around": "\u00a0" + VALID,
    "full-width digits": VALID.replace("00-", "\uff10\uff10-", 1),
    "inner whitespace": f"00 -{TRACE_ID}-{PARENT_ID}-01",
    "garbage": "not a traceparent at all, but long enough to be 55 characters or more",
}


@pytest.mark.parametrize("header", INVALID_HEADERS.values(), ids=INVALID_HEADERS.keys())
def test_invalid_traceparent_gives_none(header: str) -> None:
    """Every invalid header class from the W3C spec gives None, without raising."""
    assert TraceContext.from_traceparent(header) is None


@pytest.mark.parametrize(
    "header",
    [None, VALID.encode(), 0, 1.5, [VALID], {"traceparent": VALID}, object()],
    ids=["None", "bytes", "int", "float", "list", "dict", "object"],
)
def test_non_string_traceparent_gives_none(header: object) -> None:
    """A header that is not a str gives None, without raising."""
    assert TraceContext.from_traceparent(header) is None


@pytest.mark.parametrize(
    "header",
    [
        f"cc-{TRACE_ID}-{PARENT_ID}-01",
        f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-will-be-like",
        f"01-{TRACE_ID}-{PARENT_ID}-09-",
        f"fe-{TRACE_ID}-{PARENT_ID}-00-ab-cd",
    ],
)
def test_future_version_reads_first_four_fields(header: str) -> None:
    """A higher version is accepted when its first four fields are valid and a dash follows."""
    ctx = TraceContext.from_traceparent(header)
    assert ctx is not None
    assert ctx.trace_id == TRACE_ID
    assert ctx.parent_span_id == PARENT_ID


@pytest.mark.parametrize(
    "header", [" " + VALID, "\t" + VALID, VALID + " ", VALID + "\t", " \t " + VALID + " \t"]
)
def test_surrounding_optional_whitespace_is_ignored(header: str) -> None:
    """Leading or trailing spaces and tabs (HTTP OWS) around a valid header are tolerated."""
    ctx = TraceContext.from_traceparent(header)
    assert ctx is not None
    assert ctx.trace_id == TRACE_ID


@given(st.text(max_size=80))
def test_from_traceparent_never_raises(header: str) -> None:
    """Arbitrary text never raises, and whatever it accepts has valid ids."""
    ctx = TraceContext.from_traceparent(header)
    assert ctx is None or ctx.is_valid()


@given(trace_id=trace_ids, span_id=span_ids, position=st.integers(0, 54), char=st.characters())
def test_single_character_corruption_never_raises(
    trace_id: str, span_id: str, position: int, char: str
) -> None:
    """Replacing one character of a valid header gives None or a valid context, never an error."""
    header = f"00-{trace_id}-{span_id}-01"
    corrupted = header[:position] + char + header[position + 1 :]
    ctx = TraceContext.from_traceparent(corrupted)
    assert ctx is None or ctx.is_valid()


# --- the current context -----------------------------------------------------------------------


def test_current_context_defaults_to_none() -> None:
    """Outside any span there is no current context."""
    assert contextvars.Context().run(current_context) is None
    assert tracewriter_current_context.name == "tracewriter_current_context"


def test_use_and_reset_context_nest() -> None:
    """use_context sets the current context and reset_context restores the previous one."""

    def body() -> None:
        outer = TraceContext.new_root()
        inner = outer.child_context()
        t1 = use_context(outer)
        assert current_context() is outer
        t2 = use_context(inner)
        assert current_context() is inner
        reset_context(t2)
        assert current_context() is outer
        reset_context(t1)
        assert current_context() is None

    contextvars.Context().run(body)


def test_reset_context_twice_is_harmless() -> None:
    """Resetting with an already-used token neither raises nor changes the current context."""

    def body() -> None:
        root = TraceContext.new_root()
        token = use_context(root)
        reset_context(token)
        other = use_context(root.child_context())
        reset_context(token)
        assert current_context() is not None
        reset_context(other)
        assert current_context() is None

    contextvars.Context().run(body)


def test_reset_context_from_another_context_restores_previous_value() -> None:
    """A token made in another Context cannot be reset there, so the old value is set instead."""
    root = TraceContext.new_root()
    first = contextvars.Context()
    token = first.run(use_context, root)
    second = contextvars.Context()
    second.run(use_context, root.child_context())
    second.run(reset_context, token)
    assert second.run(current_context) is None


async def test_context_not_visible_in_sibling_task() -> None:
    """A context set in one task is seen by its own awaits but not by a sibling task."""
    root = TraceContext.new_root()
    set_event = asyncio.Event()
    checked = asyncio.Event()
    seen: dict[str, TraceContext | None] = {}

    async def setter() -> None:
        use_context(root)
        set_event.set()
        await checked.wait()
        seen["setter"] = current_context()

    async def sibling() -> None:
        await set_event.wait()
        seen["sibling"] = current_context()
        checked.set()

    async with asyncio.timeout(5):
        await asyncio.gather(setter(), sibling())
    assert seen == {"setter": root, "sibling": None}
    assert current_context() is None


async def test_child_task_inherits_current_context() -> None:
    """A task created inside an active context starts with that context as current."""
    root = TraceContext.new_root()

    async def child() -> TraceContext | None:
        return current_context()

    token = use_context(root)
    try:
        task = asyncio.create_task(child())
    finally:
        reset_context(token)
    async with asyncio.timeout(5):
        assert await task is root
    assert current_context() is None


def test_ids_from_helpers_are_valid() -> None:
    """The id generators produce what the validators accept."""
    assert is_valid_trace_id(new_trace_id())
    assert is_valid_span_id(new_span_id())
