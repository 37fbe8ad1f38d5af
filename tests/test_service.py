"""The service API against a real PostgreSQL: a realistic request flow, fan-out, thread mode."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import asyncpg
import pytest
import structlog

import tracewriter._records as records_module
from tracewriter import ObservabilityService, Provider, TraceContext, current_context
from tracewriter._native import compiled_modules
from tracewriter._records import METADATA, Event

pytestmark = pytest.mark.timeout(120)


class Retriever(Exception):
    """An application error raised inside a span."""


class RecordingProvider(Provider):
    """A second provider that keeps what it receives."""

    name = "recording"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)


class BrokenProvider(Provider):
    """A provider that fails on every call."""

    name = "broken"

    def record(self, event: Event) -> None:
        raise RuntimeError("provider down")


def service(dsn: str, **kw: Any) -> ObservabilityService:
    options: dict[str, Any] = dict(flush_interval=0.05, open_row_grace=5.0)
    options.update(kw)
    return ObservabilityService(dsn, **options)


async def test_a_request_flow_reads_back_as_a_correct_tree(db_dsn: str, pool: asyncpg.Pool) -> None:
    """trace -> retrieval -> nested rerank -> LLM call -> chat -> end reads back as the right tree
    with positive, nested durations, and the failing span carries the error type and message."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace("chat.request", user_id="u-7", session_id="s-1", kb_id="kb-9")
        svc.log_chat_message(ctx, role="user", content="What is RAG?", token_count=4)
        async with svc.span(ctx, "retrieve", "retrieval", {"top_k": 5}) as retrieval_id:
            assert current_context() is not None
            assert current_context().span_id == retrieval_id  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
            with svc.span(None, "rerank", "rerank") as rerank_id:
                await asyncio.sleep(0.01)
        with pytest.raises(Retriever) as raised, svc.span(ctx, "tool.lookup", "tool"):
            raise Retriever("index offline")
        assert str(raised.value) == "index offline"
        llm_id = svc.log_llm_call(
            ctx, model="gpt-4o", provider="openai", input_tokens=812, output_tokens=95,
            cached_input_tokens=512, duration_ms=420.0,
        )  # fmt: skip
        svc.log_chat_message(ctx, role="assistant", content="RAG is " + "x" * 900, token_count=200)
        svc.end_trace(ctx)
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued

    trace = await pool.fetchrow(
        "SELECT * FROM observability.traces WHERE trace_id = $1", ctx.trace_id
    )
    assert trace["span_id"] == ctx.span_id and trace["status"] == "ok"
    assert trace["user_id"] == "u-7" and trace["kb_id"] == "kb-9" and trace["duration_ms"] > 0
    spans = {
        r["span_id"]: r
        for r in await pool.fetch(
            "SELECT * FROM observability.spans WHERE trace_id = $1", ctx.trace_id
        )
    }
    assert len(spans) == 4
    assert spans[retrieval_id]["parent_span_id"] == ctx.span_id
    assert spans[rerank_id]["parent_span_id"] == retrieval_id
    assert spans[llm_id]["parent_span_id"] == ctx.span_id
    assert json.loads(spans[retrieval_id]["metadata"]) == {"top_k": 5}
    outer, inner = spans[retrieval_id], spans[rerank_id]
    assert 0 < inner["duration_ms"] <= outer["duration_ms"] <= trace["duration_ms"]
    assert inner["timestamp"] >= outer["timestamp"]
    failed = next(r for r in spans.values() if r["name"] == "tool.lookup")
    assert (failed["status"], failed["error_type"], failed["error_message"]) == (
        "error",
        "Retriever",
        "index offline",
    )
    llm = spans[llm_id]
    assert (llm["model"], llm["provider"], llm["input_tokens"], llm["output_tokens"]) == (
        "gpt-4o",
        "openai",
        812,
        95,
    )
    assert llm["cached_input_tokens"] == 512 and llm["span_type"] == "llm"
    messages = await pool.fetch(
        "SELECT role, content, content_preview, span_id FROM observability.chat_messages "
        "WHERE trace_id = $1 ORDER BY timestamp",
        ctx.trace_id,
    )
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert len(messages[1]["content"]) == 907 and len(messages[1]["content_preview"]) == 500


async def test_a_failing_provider_affects_neither_the_rows_nor_the_caller(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """A provider that raises on every call is logged and counted; PostgreSQL and the next
    provider still get every event, and the caller sees no exception."""
    recording = RecordingProvider()
    svc = service(db_dsn, providers=[BrokenProvider(), recording])
    await svc.start()
    with structlog.testing.capture_logs() as logs:
        ctx = svc.start_trace("t")
        with svc.span(ctx, "s", "chain"):
            pass
        svc.log_llm_call(ctx, model="m")
        svc.end_trace(ctx)
    assert await svc.flush(timeout=30)
    await svc.close()
    assert svc.provider_failures["broken"] == 5
    assert len(recording.events) == 5
    assert any(e["event"] == "provider_failed" and e["provider"] == "broken" for e in logs)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM observability.spans WHERE trace_id = $1", ctx.trace_id
        )
        == 2
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM observability.traces WHERE trace_id = $1", ctx.trace_id
        )
        == 1
    )


def test_a_synchronous_program_in_thread_mode_writes_the_same_rows(db_dsn: str) -> None:
    """With no event loop at all, thread mode records a request and writes every row."""
    with service(db_dsn, thread_mode=True) as svc:
        ctx = svc.start_trace("sync.request", kb_id="kb-1")
        with svc.span(ctx, "retrieve", "retrieval"):
            svc.log_llm_call(None, model="small", input_tokens=3)
        svc.log_document_event(ctx, document_id="doc-1", event_type="upload", duration_ms=3.0)
        svc.log_chat_message(ctx, role="user", content="hi")
        svc.end_trace(ctx)
        assert svc.flush_sync(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.written == 7 and stats.balances()

    async def read() -> tuple[int, ...]:
        conn = await asyncpg.connect(db_dsn)
        try:
            return tuple(
                [
                    await conn.fetchval(
                        f"SELECT count(*) FROM observability.{table} WHERE trace_id = $1",
                        ctx.trace_id,
                    )
                    for table in ("traces", "spans", "document_events", "chat_messages")
                ]
            )
        finally:
            await conn.close()

    assert asyncio.run(read()) == (1, 2, 1, 1)


async def test_the_hot_path_encodes_metadata_once_and_never_touches_the_pool(
    db_dsn: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording calls use no connection and no thorough JSON encoding: a metadata dict costs
    one orjson call, and a call without metadata none."""
    svc = service(db_dsn, flush_interval=3600)
    await svc.start()
    calls: list[str] = []
    encoded: list[object] = []
    real_dumps = records_module._dumps
    # Compiled (make test NATIVE=1), _records binds its names at build time: patching them
    # there probes nothing, so the count below is taken on the interpreted module only, and
    # what the buffer holds is checked in both.
    interpreted = "tracewriter._records" not in compiled_modules()

    def forbidden(name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called on the hot path")

        return fail

    def counting_dumps(value: object, *args: Any) -> bytes:
        encoded.append(value)
        return real_dumps(value, *args)

    with monkeypatch.context() as patch:
        patch.setattr(records_module, "encode_metadata", forbidden("encode_metadata"))
        patch.setattr(records_module, "_dumps", counting_dumps)
        patch.setattr(json, "dumps", forbidden("json.dumps"))
        patch.setattr(asyncpg.pool.Pool, "acquire", forbidden("Pool.acquire"))
        patch.setattr(asyncpg.connection.Connection, "execute", forbidden("Connection.execute"))
        ctx = svc.start_trace("t", metadata={"k": [1, 2, 3]})
        with svc.span(ctx, "s", "chain", metadata={"nested": {"a": 1}}):
            svc.log_llm_call(ctx, model="m", metadata={"x": 1})
        svc.log_chat_message(ctx, role="user", content="hello", metadata={"y": 2})
        svc.end_trace(ctx, metadata={"z": 3})
    assert calls == []
    given = [{"k": [1, 2, 3]}, {"nested": {"a": 1}}, {"x": 1}, {"y": 2}, {"z": 3}]
    if interpreted:
        assert encoded == given
    # Every event holds its metadata as the JSON text of one encoding; the span's start
    # carried none of it (its metadata rides on the end).
    held = [e[METADATA] for e in svc.postgres._buffer._items if e[METADATA] is not None]
    assert [json.loads(text) for text in held] == given
    assert all(type(text) is str for text in held)
    assert await svc.flush(timeout=30)  # the rest of the encoding happens now, off the hot path
    await svc.close()
    assert (
        await pool.fetchval(
            "SELECT metadata->>'k' FROM observability.traces WHERE trace_id = $1", ctx.trace_id
        )
        == "[1, 2, 3]"
    )
    assert (
        await pool.fetchval(
            "SELECT metadata->>'z' FROM observability.traces WHERE trace_id = $1", ctx.trace_id
        )
        == "3"
    )


async def test_bad_arguments_never_raise_and_what_can_be_saved_is(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Wrong types, hostile objects and a missing kb_id neither raise nor take other rows down."""

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    svc = service(db_dsn)
    await svc.start()
    with structlog.testing.capture_logs() as logs:
        ctx = svc.start_trace(Hostile(), user_id=12345, metadata=cyclic)  # type: ignore[arg-type]
        span_id = svc.log_llm_call(
            ctx, model=Hostile(), input_tokens="many", output_tokens=2**70,  # type: ignore[arg-type]
            duration_ms=float("nan"), metadata={1: object(), None: float("inf")},
        )  # fmt: skip
        svc.log_llm_call("not a context", model="m")  # type: ignore[arg-type]
        svc.log_document_event(ctx, document_id="d", event_type="upload")  # no kb_id
        svc.log_chat_message(ctx, role="user", content="a\x00b\ud800c")
        svc.end_trace(ctx, duration_ms="slow")  # type: ignore[arg-type]
    assert await svc.flush(timeout=30)
    stats = svc.stats()
    await svc.close()
    assert stats is not None and stats.balances()
    assert stats.rejected_invalid >= 1  # the document event without kb_id
    assert any(e["event"] == "event_rejected" for e in logs)
    row = await pool.fetchrow("SELECT * FROM observability.spans WHERE span_id = $1", span_id)
    assert row["input_tokens"] is None and row["output_tokens"] == 2**31 - 1
    assert row["model"] == "<unprintable Hostile>"
    metadata = json.loads(row["metadata"])
    assert metadata["1"].startswith("<object object") and metadata["null"] is None
    content = await pool.fetchval(
        "SELECT content FROM observability.chat_messages WHERE trace_id = $1", ctx.trace_id
    )
    assert content == "ab?c"
    trace = await pool.fetchrow(
        "SELECT * FROM observability.traces WHERE trace_id = $1", ctx.trace_id
    )
    assert trace["user_id"] == "12345" and json.loads(trace["metadata"]) == {
        "self": {"self": "<cycle>"}
    }


def test_traceparent_contexts_continue_a_remote_trace() -> None:
    """A context from a traceparent header keeps the trace and parents new spans under it."""
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = TraceContext.from_traceparent(header, user_id="u")
    assert ctx is not None and ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx.parent_span_id == "00f067aa0ba902b7" and ctx.user_id == "u"
    assert TraceContext.from_traceparent("garbage") is None


def test_configuration_comes_from_the_environment_and_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TRACEWRITER_* variables configure the service, keywords win, no repr shows the password."""
    from tracewriter import ConfigurationError

    monkeypatch.setenv("TRACEWRITER_DSN", "postgresql://app:s3cret-pw@db.example/telemetry")
    monkeypatch.setenv("TRACEWRITER_FLUSH_INTERVAL", "0.25")
    monkeypatch.setenv("TRACEWRITER_MAX_BUFFER_ROWS", "20000")
    svc = ObservabilityService(max_buffer_rows=30_000)
    assert svc.config.flush_interval == 0.25 and svc.config.max_buffer_rows == 30_000
    for text in (repr(svc), repr(svc.config), repr(svc.postgres), str(svc.config)):
        assert "s3cret-pw" not in text
    monkeypatch.setenv("TRACEWRITER_FLUSH_INTERVAL", "soon")
    with pytest.raises(ConfigurationError) as raised:
        ObservabilityService()
    assert "TRACEWRITER_FLUSH_INTERVAL" in str(raised.value) and "s3cret-pw" not in str(
        raised.value
    )
    monkeypatch.delenv("TRACEWRITER_FLUSH_INTERVAL")
    with pytest.raises(ConfigurationError, match="max_batch_rows"):
        ObservabilityService("postgresql://x@h/db", max_batch_rows=0)


async def test_start_fails_loudly_on_a_database_without_the_schema(server_dsn: str) -> None:
    """start() against a database that was never migrated raises ConfigurationError naming it."""
    from tracewriter import ConfigurationError

    svc = ObservabilityService(server_dsn)
    with pytest.raises(ConfigurationError, match="not migrated"):
        await svc.start()
    await svc.close()
    assert svc.stats() is not None and not svc.stats().running  # type: ignore[union-attr]


async def test_start_leaves_what_it_built_in_the_oldest_generation(db_dsn: str) -> None:
    """start() ends with a full collection, so the pool it opened is not promoted by one
    during the application's first requests; a disabled collector is left alone."""
    svc = ObservabilityService(db_dsn)
    await svc.start()
    try:
        pool = svc.postgres._sink._pool  # type: ignore[union-attr]
        assert pool is not None
        assert any(o is pool for o in gc.get_objects(generation=2))
        full = gc.get_stats()[2]["collections"]
        await svc.start()  # already started: nothing new to promote, no second pause
        assert gc.get_stats()[2]["collections"] == full
    finally:
        await svc.close()

    gc.disable()
    try:
        full = gc.get_stats()[2]["collections"]
        svc = ObservabilityService(db_dsn)
        await svc.start()
        await svc.close()
        assert gc.get_stats()[2]["collections"] == full
    finally:
        gc.enable()


def test_get_instance_is_one_process_wide_service_until_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """get_instance() builds one service from the environment; reset_instance() forgets it."""
    from tracewriter import get_instance, reset_instance

    monkeypatch.setenv("TRACEWRITER_DSN", "postgresql://app@db.example/telemetry")
    reset_instance()
    first = get_instance()
    assert get_instance() is first
    assert reset_instance() is first
    second = get_instance()
    assert second is not first
    reset_instance()


async def test_a_span_recorded_with_no_context_is_a_root_the_trace_command_shows(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no context anywhere, span(), start_span() and log_llm_call() record root spans of
    traces of their own: no parent that was never written, and `tracewriter trace` finds them."""
    from tracewriter import cli

    async with service(db_dsn) as svc:
        assert current_context() is None
        with svc.span(None, "orphan.block", "chain") as block_id:
            pass
        handle = svc.start_span(None, "orphan.handle", "tool")
        handle.end()
        llm_id = svc.log_llm_call(None, model="m", duration_ms=3.0)
        assert await svc.flush(timeout=10)
    rows = await pool.fetch(
        "SELECT span_id, trace_id, parent_span_id FROM observability.spans WHERE span_id = ANY($1)",
        [block_id, handle.span_id, llm_id],
    )
    assert len(rows) == 3
    assert all(r["parent_span_id"] is None for r in rows), rows
    assert len({r["trace_id"] for r in rows}) == 3  # three traces, one each
    llm_trace = next(r["trace_id"] for r in rows if r["span_id"] == llm_id)
    argv = ["trace", llm_trace, "--dsn", db_dsn, "--format", "json"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr().out
    shown = json.loads(out[out.index("{\n") :])  # after the writer's own log lines
    assert shown["trace"]["span_id"] == llm_id
    assert [s["span_id"] for s in shown["spans"]] == [llm_id]


async def test_every_kind_recorded_through_the_api_fills_every_column_in_its_place(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Each recording call writes a distinct value into each column: a field misordered in the
    hand-written event tuples lands in the wrong column and fails here."""
    async with service(db_dsn) as svc:
        ctx = svc.start_trace(
            "t-name", user_id="u-1", session_id="s-1", kb_id="kb-1", metadata={"tm": 1}
        )
        with (
            pytest.raises(ValueError, match="sp-err"),
            svc.span(ctx, "sp-name", "retrieval", {"sm": 3}) as span_id,
        ):
            raise ValueError("sp-err")
        llm_id = svc.log_llm_call(
            ctx, model="mdl", provider="prv", input_tokens=11, output_tokens=22,
            cached_input_tokens=33, reasoning_tokens=44, duration_ms=55.5, status="error",
            error_message="llm-err", name="llm-name", metadata={"lm": 4},
        )  # fmt: skip
        svc.log_chat_message(
            ctx, role="assistant", content="hello", token_count=7, metadata={"cm": 5}
        )
        svc.log_document_event(
            ctx, document_id="doc-9", event_type="parse", status="error", duration_ms=66.0,
            chunk_count=8, error_message="doc-err", metadata={"dm": 6},
        )  # fmt: skip
        svc.end_trace(
            ctx, status="error", error_message="t-err", duration_ms=12.5, metadata={"te": 2}
        )
        assert await svc.flush(timeout=10)

    def row(record: asyncpg.Record) -> dict[str, Any]:
        values = dict(record)
        values.pop("id"), values.pop("timestamp")
        if values.get("metadata") is not None:
            values["metadata"] = json.loads(values["metadata"])
        return values

    trace = row(await pool.fetchrow(
        "SELECT * FROM observability.traces WHERE trace_id = $1", ctx.trace_id
    ))  # fmt: skip
    assert trace == {
        "trace_id": ctx.trace_id, "span_id": ctx.span_id, "name": "t-name", "user_id": "u-1",
        "session_id": "s-1", "kb_id": "kb-1", "status": "error", "duration_ms": 12.5,
        "error_type": None, "error_message": "t-err", "metadata": {"tm": 1, "te": 2},
    }  # fmt: skip
    found = await pool.fetch("SELECT * FROM observability.spans WHERE trace_id = $1", ctx.trace_id)
    spans = {r["span_id"]: row(r) for r in found}
    block = spans[span_id]
    assert block.pop("duration_ms") >= 0
    assert block == {
        "trace_id": ctx.trace_id, "span_id": span_id, "parent_span_id": ctx.span_id,
        "name": "sp-name", "span_type": "retrieval", "status": "error", "error_type": "ValueError",
        "error_message": "sp-err", "model": None, "provider": None, "input_tokens": None,
        "output_tokens": None, "cached_input_tokens": None, "reasoning_tokens": None,
        "user_id": "u-1", "session_id": "s-1", "kb_id": "kb-1", "metadata": {"sm": 3},
        # Not an LLM call: nothing to price.
        "cost_usd": None, "price_source": None, "price_version": None,
    }  # fmt: skip
    assert spans[llm_id] == {
        "trace_id": ctx.trace_id, "span_id": llm_id, "parent_span_id": ctx.span_id,
        "name": "llm-name", "span_type": "llm", "status": "error", "duration_ms": 55.5,
        "error_type": None, "error_message": "llm-err", "model": "mdl", "provider": "prv",
        "input_tokens": 11, "output_tokens": 22, "cached_input_tokens": 33,
        "reasoning_tokens": 44, "user_id": "u-1", "session_id": "s-1", "kb_id": "kb-1",
        "metadata": {"lm": 4},
        # A model no price list knows: no cost, and counted as unpriced.
        "cost_usd": None, "price_source": None, "price_version": None,
    }  # fmt: skip
    chat = row(await pool.fetchrow(
        "SELECT * FROM observability.chat_messages WHERE trace_id = $1", ctx.trace_id
    ))  # fmt: skip
    assert chat == {
        "trace_id": ctx.trace_id, "span_id": ctx.span_id, "session_id": "s-1", "user_id": "u-1",
        "kb_id": "kb-1", "role": "assistant", "content": "hello", "content_preview": "hello",
        "token_count": 7, "metadata": {"cm": 5},
    }  # fmt: skip
    document = row(await pool.fetchrow(
        "SELECT * FROM observability.document_events WHERE trace_id = $1", ctx.trace_id
    ))  # fmt: skip
    assert document == {
        "trace_id": ctx.trace_id, "kb_id": "kb-1", "document_id": "doc-9", "event_type": "parse",
        "status": "error", "duration_ms": 66.0, "chunk_count": 8, "error_type": None,
        "error_message": "doc-err", "metadata": {"dm": 6},
    }  # fmt: skip
