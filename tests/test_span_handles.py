"""Spans that outlive a block (start_span / SpanHandle.end) and end-time facts on span() scopes,
through the public API against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewriter import EventKind, ObservabilityService, SpanHandle, TraceContext, current_context
from tracewriter._records import build, coalesce
from tracewriter._schema import SPAN_COLUMNS, SPANS
from tracewriter._sql import Statements

pytestmark = pytest.mark.timeout(120)

NEVER = "postgresql://nobody@localhost/never_connected"  # an unstarted writer only buffers
_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


def service(dsn: str, **kw: Any) -> ObservabilityService:
    options: dict[str, Any] = dict(flush_interval=0.05, open_row_grace=5.0)
    options.update(kw)
    return ObservabilityService(dsn, **options)


async def span_row(pool: asyncpg.Pool, span_id: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM observability.spans WHERE span_id = $1", span_id)
    assert row is not None, f"no row for span {span_id}"
    return row


async def fake_stream(chunks: int) -> Any:
    """A streamed completion: text first, usage only with the last chunk."""
    for i in range(chunks):
        await asyncio.sleep(0)
        yield {"text": f"tok{i} ", "usage": None}
    yield {"text": "", "usage": {"model": "gpt-4o-2024-08-06", "in": 812, "out": 95, "cached": 512}}


async def test_a_streamed_call_records_model_and_tokens_known_only_at_the_end(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """A handle started before a stream and ended with its usage writes one complete row whose
    typed columns hold the end's model, provider and tokens, coalesced with no end-upsert."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace("chat.request", user_id="u-1", kb_id="kb-1")
        handle = svc.start_span(ctx, "llm.stream", "llm", {"temperature": 0.2})
        assert isinstance(handle, SpanHandle) and handle.span_id == handle.context.span_id
        assert current_context() is None  # a handle does not become the current context
        text = []
        async for chunk in fake_stream(5):
            text.append(chunk["text"])
            usage = chunk["usage"]
        handle.end(
            model=usage["model"], provider="openai", input_tokens=usage["in"],
            output_tokens=usage["out"], cached_input_tokens=usage["cached"],
            reasoning_tokens=7, metadata={"finish_reason": "stop"},
        )  # fmt: skip
        svc.end_trace(ctx)
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued
    assert stats.end_upserts == 0  # start and end coalesced into one COPYed row
    row = await span_row(pool, handle.span_id)
    assert row["trace_id"] == ctx.trace_id and row["parent_span_id"] == ctx.span_id
    assert (row["name"], row["span_type"], row["status"]) == ("llm.stream", "llm", "ok")
    assert (row["model"], row["provider"]) == ("gpt-4o-2024-08-06", "openai")
    assert (row["input_tokens"], row["output_tokens"]) == (812, 95)
    assert (row["cached_input_tokens"], row["reasoning_tokens"]) == (512, 7)
    assert row["duration_ms"] is not None and row["duration_ms"] >= 0
    assert row["user_id"] == "u-1" and row["kb_id"] == "kb-1"
    assert json.loads(row["metadata"]) == {"temperature": 0.2, "finish_reason": "stop"}
    count = await pool.fetchval(
        "SELECT count(*) FROM observability.spans WHERE span_id = $1", handle.span_id
    )
    assert count == 1
    rolled = await pool.fetchval(
        "SELECT sum(sum) FROM observability.metrics_aggregates "
        "WHERE metric = 'llm.input_tokens' AND model = 'gpt-4o-2024-08-06'"
    )
    assert rolled == 812  # the end-time tokens roll up like log_llm_call's


def test_handle_and_scope_events_are_invisible_to_the_cycle_collector() -> None:
    """The events start_span, end and a scope with set() buffer hold only atomic values, so
    after a collection the cycle collector tracks none of them."""
    svc = ObservabilityService(NEVER)
    ctx = svc.start_trace("gc")
    handle = svc.start_span(ctx, "llm.stream", "llm", {"a": [1, 2]})
    handle.end(model="m", provider="p", input_tokens=1, output_tokens=2, metadata={"b": {"c": 1}})
    failed = svc.start_span(ctx, "llm.fails", "llm")
    failed.end(error=ValueError("bad"), status=object())
    scope = svc.span(ctx, "llm.scoped", "llm")
    with scope:
        scope.set(model="m", cached_input_tokens=3, metadata={"d": 1}, error=ValueError("x"))
    assert svc.postgres is not None
    events = list(svc.postgres._buffer._items)
    assert len(events) == 7
    gc.collect()
    gc.collect()
    assert [e for e in events if gc.is_tracked(e)] == []


async def test_a_child_made_between_start_and_end_links_to_the_handle(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """A tool span recorded under handle.context while the handle is open has the handle's span
    as its parent, and the handle's own parent is the trace root."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace("agent")
        handle = svc.start_span(ctx, "llm.stream", "llm")
        with svc.span(handle.context, "tool.search", "tool") as tool_id:
            pass
        nested = svc.start_span(handle.context, "llm.inner", "llm")
        nested.end(model="m-small")
        llm_id = svc.log_llm_call(handle.context, model="m-judge", input_tokens=3)
        handle.end(model="m-big", output_tokens=10)
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances()
    parent = await span_row(pool, handle.span_id)
    assert parent["parent_span_id"] == ctx.span_id
    for child_id in (tool_id, nested.span_id, llm_id):
        child = await span_row(pool, child_id)
        assert child["parent_span_id"] == handle.span_id
        assert child["trace_id"] == ctx.trace_id
    assert (await span_row(pool, nested.span_id))["model"] == "m-small"


async def test_start_and_end_on_different_threads(db_dsn: str, pool: asyncpg.Pool) -> None:
    """Handles started on worker threads and ended on other threads (callback style, by run id)
    are all written complete with their end facts, and the ledger balances."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace("callbacks")
        runs: dict[int, SpanHandle] = {}
        lock = threading.Lock()

        def on_llm_start(run_id: int) -> None:
            handle = svc.start_span(ctx, f"llm.run.{run_id}", "llm")
            with lock:
                runs[run_id] = handle

        def on_llm_end(run_id: int) -> None:
            with lock:
                handle = runs.pop(run_id)
            handle.end(model="gpt-4o", provider="openai", output_tokens=run_id)

        ids = range(40)
        starters = [threading.Thread(target=on_llm_start, args=(i,)) for i in ids]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        handles = dict(runs)
        enders = [threading.Thread(target=on_llm_end, args=(i,)) for i in ids]
        for t in enders:
            t.start()
        for t in enders:
            t.join()
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued
    rows = await pool.fetch(
        "SELECT span_id, status, model, output_tokens FROM observability.spans WHERE trace_id = $1",
        ctx.trace_id,
    )
    got = {r["span_id"]: (r["status"], r["model"], r["output_tokens"]) for r in rows}
    assert got == {h.span_id: ("ok", "gpt-4o", i) for i, h in handles.items()}


async def test_a_second_end_is_ignored_and_counted(db_dsn: str, pool: asyncpg.Pool) -> None:
    """Ending a handle twice records only the first end (its facts stay), counts the second in
    duplicate_span_ends, enqueues nothing for it, and the ledger balances."""
    async with service(db_dsn) as svc:
        handle = svc.start_span(None, "llm.once", "llm")
        handle.end(model="first", input_tokens=1)
        enqueued = svc.stats().enqueued  # type: ignore[union-attr]
        handle.end(model="second", input_tokens=2, status="error")
        handle.end()
        assert handle.ended
        assert svc.duplicate_span_ends == 2
        assert svc.stats().enqueued == enqueued  # type: ignore[union-attr]
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued
    row = await span_row(pool, handle.span_id)
    assert (row["status"], row["model"], row["input_tokens"]) == ("ok", "first", 1)


async def test_an_end_after_close_does_not_raise_and_is_counted(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """An end arriving after close() returns quietly and is counted as dropped, the ledger
    still balancing; the start, flushed at close, is the open row that stays."""
    svc = service(db_dsn)
    await svc.start()
    handle = svc.start_span(None, "llm.late", "llm")
    await svc.close(timeout=30)
    before = svc.stats()
    assert before is not None
    handle.end(model="too-late", output_tokens=5)
    after = svc.stats()
    assert after is not None and after.balances()
    assert after.enqueued == before.enqueued + 1
    assert after.dropped_overflow == before.dropped_overflow + 1
    assert svc.internal_errors == 0
    row = await span_row(pool, handle.span_id)
    assert row["status"] == "open" and row["model"] is None


async def test_a_late_end_fills_the_open_row(db_dsn: str, pool: asyncpg.Pool) -> None:
    """A handle whose start was already written open is completed by the end-upsert: status,
    duration and the end-time model and tokens land, and the start's name and metadata stay."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace("slow")
        handle = svc.start_span(ctx, "llm.slow", "llm", {"prompt_version": 3})
        assert await svc.flush(timeout=30)  # a forced flush writes the held start open
        opened = await span_row(pool, handle.span_id)
        assert opened["status"] == "open" and opened["model"] is None
        handle.end(
            status="error", error=TimeoutError("stream stalled"), model="claude-x",
            provider="anthropic", input_tokens=2_000, output_tokens=2**40,
            cached_input_tokens=-1, reasoning_tokens="many", metadata={"chunks": 17},
        )  # fmt: skip
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued
    assert stats.end_upserts >= 1
    row = await span_row(pool, handle.span_id)
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "error",
        "TimeoutError",
        "stream stalled",
    )
    assert (row["model"], row["provider"], row["input_tokens"]) == ("claude-x", "anthropic", 2000)
    assert row["output_tokens"] == 2**31 - 1  # clamped to the column's range
    assert row["cached_input_tokens"] == -1 and row["reasoning_tokens"] is None
    assert row["name"] == "llm.slow" and row["duration_ms"] is not None
    assert json.loads(row["metadata"]) == {"prompt_version": 3, "chunks": 17}


async def test_the_end_upsert_never_erases_known_facts_with_null(pool: asyncpg.Pool) -> None:
    """The spans end-upsert fills model and token columns only where the end knows them: an
    end without facts after one with them keeps them (COALESCE, not overwrite)."""
    statement = Statements.build().end_upsert[SPANS]
    start = TraceContext.new_root()
    ctx = start.child_context()

    def end_row(detail: tuple[Any, ...] | None, status: str) -> tuple[Any, ...]:
        event = (
            EventKind.SPAN_END, 1_700_000_000_000_000_000, 1_700_000_000_500_000_000,
            ctx.trace_id, ctx.span_id, ctx.parent_span_id, "llm.x", "llm", status, 500.0,
            None, None, None, None, None, None, *(detail or ()),
        )  # fmt: skip
        table, row = build(event)
        assert table == SPANS
        return row

    async def upsert(row: tuple[Any, ...]) -> None:
        await pool.execute(statement, *([value] for value in row))

    await upsert(end_row(("m-1", "p-1", 10, 20, 5, 2), "ok"))
    await upsert(end_row(None, "error"))
    await upsert(end_row((None, None, None, 99, None, None), "error"))
    row = await span_row(pool, ctx.span_id)
    assert row["status"] == "error"
    assert (row["model"], row["provider"], row["input_tokens"]) == ("m-1", "p-1", 10)
    assert (row["output_tokens"], row["cached_input_tokens"], row["reasoning_tokens"]) == (
        99,
        5,
        2,
    )


async def test_a_handle_never_ended_is_written_open_after_the_grace(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """With no end, the start is written as an open row once open_row_grace has passed, by the
    periodic flush, without any forced flush."""
    async with service(db_dsn, open_row_grace=0.1) as svc:
        handle = svc.start_span(None, "llm.abandoned", "llm")
        row = None
        for _ in range(400):  # wait for the background flush, however slow the machine is
            row = await pool.fetchrow(
                "SELECT status, duration_ms FROM observability.spans WHERE span_id = $1",
                handle.span_id,
            )
            if row is not None:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row["status"] == "open" and row["duration_ms"] is None
        assert not handle.ended
        stats = svc.stats()
        assert stats is not None and stats.balances()


async def test_bad_arguments_are_sanitised_and_nothing_raises(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Hostile end arguments (NUL text, an object as status, an unprintable error, floats and
    text for tokens) neither raise nor lose the row; they are cleaned into the columns."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    async with service(db_dsn) as svc:
        handle = svc.start_span(None, "llm\x00.bad", "llm", metadata={"k": "v\x00"})
        handle.end(
            status=object(), error=Unprintable(), model="m\x00odel" + "x" * 5000,
            provider=12, input_tokens=3.9, output_tokens=float("nan"),
            metadata={1: {2, 3}},
        )  # fmt: skip
        other = svc.start_span(None, "llm.message", "llm")
        other.end(error="plain message\x00", input_tokens="12")
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert svc.internal_errors == 0
    assert stats is not None and stats.balances() and stats.written == stats.enqueued
    row = await span_row(pool, handle.span_id)
    assert row["name"] == "llm.bad" and row["error_type"].endswith(".Unprintable")
    assert row["error_message"] == "<unprintable Unprintable>"
    assert row["model"].startswith("model") and len(row["model"]) <= 256
    assert row["provider"] == "12" and row["input_tokens"] == 3 and row["output_tokens"] is None
    assert row["status"].startswith("<object")
    row = await span_row(pool, other.span_id)
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "error",
        None,
        "plain message",
    )
    assert row["input_tokens"] == 12


async def test_a_span_scope_accepts_end_time_facts(db_dsn: str, pool: asyncpg.Pool) -> None:
    """span() still yields the span id; facts given to its scope with set() land in the typed
    columns, a later set() adds to an earlier one, and a raising block keeps them but ends
    with the exception's status and error."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace("scoped")
        scope = svc.span(ctx, "llm.stream", "llm")
        async with scope as span_id:
            assert isinstance(span_id, str) and len(span_id) == 16
            assert current_context().span_id == span_id  # type: ignore[union-attr]
            async for chunk in fake_stream(3):
                usage = chunk["usage"]
            scope.set(model=usage["model"], provider="openai")
            scope.set(input_tokens=usage["in"], output_tokens=usage["out"], metadata={"n": 3})
        failing = svc.span(ctx, "llm.fails", "llm")
        with pytest.raises(KeyError), failing as failing_id:
            failing.set(model="m-1", status="ok", input_tokens=5)
            raise KeyError("choices")
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued
    row = await span_row(pool, span_id)
    assert (row["status"], row["model"], row["provider"]) == ("ok", "gpt-4o-2024-08-06", "openai")
    assert (row["input_tokens"], row["output_tokens"]) == (812, 95)
    assert json.loads(row["metadata"]) == {"n": 3}
    row = await span_row(pool, failing_id)
    assert (row["status"], row["error_type"]) == ("error", "KeyError")
    assert (row["model"], row["input_tokens"]) == ("m-1", 5)


class _Hostile:
    """An object whose str() fails, as a caller's value might."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


_anything = st.one_of(
    st.none(),
    st.text(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.just(_Hostile()),
    st.builds(ValueError, st.text(max_size=20)),
)
_end_keywords = (
    "status", "error", "model", "provider", "input_tokens", "output_tokens",
    "cached_input_tokens", "reasoning_tokens", "metadata",
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(_end_keywords, _anything)))
def test_any_end_arguments_never_raise_and_always_build_a_row(kwargs: dict[str, Any]) -> None:
    """Whatever handle.end() and scope.set() are given, neither raises nor counts an internal
    error, and the coalesced event, and the end alone (the late-end path), build into span
    rows whose typed columns hold text and in-range integers only."""
    svc = ObservabilityService(NEVER)
    handle = svc.start_span(None, "llm.fuzz", "llm")
    handle.end(**kwargs)
    scope = svc.span(None, "llm.fuzz.scoped", "llm")
    with scope:
        scope.set(**kwargs)
    assert svc.internal_errors == 0
    assert svc.postgres is not None
    events = list(svc.postgres._buffer._items)
    assert len(events) == 4
    for start, end in (events[:2], events[2:]):
        for event in (coalesce(start, end), end):
            table, row = build(event)
            assert table == SPANS
            values = dict(zip(SPAN_COLUMNS, row, strict=True))
            for column in ("status", "model", "provider", "error_type", "error_message"):
                assert values[column] is None or (
                    type(values[column]) is str and "\x00" not in values[column]
                )
            for column in _TOKEN_COLUMNS:
                value = values[column]
                assert value is None or (type(value) is int and -(2**31) <= value < 2**31)


def test_racing_ends_record_exactly_one() -> None:
    """Many threads ending the same handles at once: each handle enqueues exactly one end and
    every other call is counted as a duplicate."""
    svc = ObservabilityService(NEVER)
    handles = [svc.start_span(None, f"llm.{i}", "llm") for i in range(200)]
    enqueued = svc.stats().enqueued  # type: ignore[union-attr]
    barrier = threading.Barrier(8)

    def end_all(worker: int) -> None:
        barrier.wait()
        for handle in handles:
            handle.end(output_tokens=worker)

    threads = [threading.Thread(target=end_all, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = svc.stats()
    assert stats is not None and stats.balances()
    assert stats.enqueued == enqueued + len(handles)
    assert svc.duplicate_span_ends == 7 * len(handles)
    assert all(h.ended for h in handles)
