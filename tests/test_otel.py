"""OpenTelemetry spans in: the real SDK (and a real instrumentation) into our tables."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from tracewriter import ObservabilityService
from tracewriter.otel import TracewriterSpanProcessor

pytestmark = pytest.mark.timeout(120)


def _provider(svc: ObservabilityService) -> tuple[TracerProvider, TracewriterSpanProcessor]:
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api"}))
    processor = TracewriterSpanProcessor(svc)
    provider.add_span_processor(processor)
    return provider, processor


def _ts(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1000 / 1e6, dt.UTC)


async def _spans(pool: asyncpg.Pool, trace_id: str) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch("SELECT * FROM observability.spans WHERE trace_id = $1", trace_id)
    return {r["name"]: r for r in rows}


async def test_sdk_spans_read_back_with_ids_times_columns_and_metadata(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Nested SDK spans become rows with their W3C ids, parent links, start and duration, the
    GenAI attributes in typed columns, the rest (attributes, resource, events) in metadata, and
    the root also becomes the trace row."""
    async with ObservabilityService(db_dsn, flush_interval=0.05) as svc:
        provider, processor = _provider(svc)
        tracer = provider.get_tracer("app", "1.0")
        with tracer.start_as_current_span(
            "POST /ask", kind=SpanKind.SERVER, attributes={"user.id": "u-1", "session.id": "s-1"}
        ) as root:
            with tracer.start_as_current_span(
                "chat gpt-4o",
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.response.model": "gpt-4o-2024-08-06",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.usage.input_tokens": 812,
                    "gen_ai.usage.output_tokens": 95,
                    "gen_ai.usage.cache_read.input_tokens": 512,
                    "gen_ai.usage.reasoning.output_tokens": 40,
                    "gen_ai.request.temperature": 0.2,
                    "gen_ai.response.finish_reasons": ("stop",),
                },
            ) as llm:
                llm.add_event("gen_ai.choice", {"index": 0})
            with tracer.start_as_current_span(
                "embed", attributes={"gen_ai.operation.name": "embeddings"}
            ):
                pass
            with tracer.start_as_current_span("lookup") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("error.type", "TimeoutError")
                tool.set_status(Status(StatusCode.ERROR, "index offline"))
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == stats.enqueued == 6
    assert processor.recorded == 4 and processor.failed == 0

    trace_id = f"{root.get_span_context().trace_id:032x}"
    rows = await _spans(pool, trace_id)
    assert set(rows) == {"POST /ask", "chat gpt-4o", "embed", "lookup"}
    root_row, llm_row = rows["POST /ask"], rows["chat gpt-4o"]
    assert isinstance(root, ReadableSpan) and isinstance(llm, ReadableSpan)
    assert root_row["span_id"] == f"{root.get_span_context().span_id:016x}"
    assert root_row["parent_span_id"] is None and root_row["span_type"] == "server"
    assert root_row["user_id"] == "u-1" and root_row["session_id"] == "s-1"
    assert llm_row["span_id"] == f"{llm.get_span_context().span_id:016x}"
    assert llm_row["parent_span_id"] == root_row["span_id"]
    assert llm.start_time is not None and llm.end_time is not None
    # Stored to the microsecond (timestamptz), rounded: within one of the span's start.
    assert abs(llm_row["timestamp"] - _ts(llm.start_time)) <= dt.timedelta(microseconds=1)
    assert llm_row["duration_ms"] == pytest.approx((llm.end_time - llm.start_time) / 1e6)
    assert (llm_row["span_type"], llm_row["status"]) == ("llm", "ok")
    assert (llm_row["model"], llm_row["provider"]) == ("gpt-4o", "openai")
    assert (llm_row["input_tokens"], llm_row["output_tokens"]) == (812, 95)
    assert (llm_row["cached_input_tokens"], llm_row["reasoning_tokens"]) == (512, 40)
    meta = json.loads(llm_row["metadata"])
    assert "gen_ai.request.model" not in meta and "gen_ai.usage.input_tokens" not in meta
    assert meta["gen_ai.response.model"] == "gpt-4o-2024-08-06"  # not the one in the column
    assert meta["gen_ai.request.temperature"] == 0.2
    assert meta["gen_ai.response.finish_reasons"] == ["stop"]
    assert meta["otel.kind"] == "client" and meta["otel.scope"] == "app"
    assert meta["otel.resource"]["service.name"] == "rag-api"
    assert meta["otel.events"][0]["name"] == "gen_ai.choice"
    assert meta["otel.events"][0]["attributes"] == {"index": 0}
    assert rows["embed"]["span_type"] == "embedding" and rows["embed"]["model"] is None
    tool_row = rows["lookup"]
    assert (tool_row["span_type"], tool_row["status"]) == ("tool", "error")
    assert (tool_row["error_type"], tool_row["error_message"]) == ("TimeoutError", "index offline")

    trace = await pool.fetchrow("SELECT * FROM observability.traces WHERE trace_id = $1", trace_id)
    assert trace["span_id"] == root_row["span_id"] and trace["name"] == "POST /ask"
    assert trace["status"] == "ok" and trace["user_id"] == "u-1"
    assert trace["duration_ms"] == pytest.approx(root_row["duration_ms"])
    assert json.loads(trace["metadata"])["service.name"] == "rag-api"


async def test_a_span_continuing_a_remote_trace_gives_the_trace_row(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """The first span of this process in a trace that arrived with a traceparent keeps the
    remote parent as its parent and, being the local root, also gives the trace row."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    trace_id, remote_parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    carrier = {"traceparent": f"00-{trace_id}-{remote_parent}-01"}
    async with ObservabilityService(db_dsn, flush_interval=0.05) as svc:
        provider, _ = _provider(svc)
        tracer = provider.get_tracer("app")
        incoming = TraceContextTextMapPropagator().extract(carrier)
        with (
            tracer.start_as_current_span("GET /", context=incoming, kind=SpanKind.SERVER),
            tracer.start_as_current_span("inner"),
        ):
            pass
        assert await svc.flush(timeout=30)
    rows = await _spans(pool, trace_id)
    assert rows["GET /"]["parent_span_id"] == remote_parent
    assert rows["inner"]["parent_span_id"] == rows["GET /"]["span_id"]
    traces = await pool.fetch("SELECT * FROM observability.traces WHERE trace_id = $1", trace_id)
    assert [(t["span_id"], t["name"]) for t in traces] == [(rows["GET /"]["span_id"], "GET /")]


async def test_an_exception_event_fills_the_error_columns(db_dsn: str, pool: asyncpg.Pool) -> None:
    """A span ended by an exception carries its type and message from the exception event, and
    its stack trace stays in the metadata's events."""
    async with ObservabilityService(db_dsn, flush_interval=0.05) as svc:
        provider, _ = _provider(svc)
        tracer = provider.get_tracer("app")
        with pytest.raises(KeyError), tracer.start_as_current_span("retrieve") as span:
            raise KeyError("kb-9")
        assert await svc.flush(timeout=30)
    rows = await _spans(pool, f"{span.get_span_context().trace_id:032x}")
    row = rows["retrieve"]
    assert row["status"] == "error" and row["error_type"] == "KeyError"
    assert "kb-9" in row["error_message"]
    events = json.loads(row["metadata"])["otel.events"]
    assert events[0]["name"] == "exception"
    assert "Traceback" in events[0]["attributes"]["exception.stacktrace"]


async def test_openinference_and_older_genai_names_map_to_the_same_columns(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """OpenInference's names and the older gen_ai.system / prompt_tokens spellings fill the same
    typed columns, and openinference.span.kind gives the span type."""
    async with ObservabilityService(db_dsn, flush_interval=0.05) as svc:
        provider, _ = _provider(svc)
        tracer = provider.get_tracer("app")
        with tracer.start_as_current_span("root") as root:
            with tracer.start_as_current_span(
                "oi.llm",
                attributes={
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "claude-sonnet-4",
                    "llm.provider": "anthropic",
                    "llm.token_count.prompt": 100,
                    "llm.token_count.completion": 20,
                    "llm.token_count.prompt_details.cache_read": 64,
                },
            ):
                pass
            with tracer.start_as_current_span(
                "oi.retriever", attributes={"openinference.span.kind": "RETRIEVER"}
            ):
                pass
            with tracer.start_as_current_span(
                "old.genai",
                attributes={
                    "llm.request.type": "chat",
                    "gen_ai.system": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.prompt_tokens": 7,
                    "gen_ai.usage.completion_tokens": 3,
                },
            ):
                pass
        assert await svc.flush(timeout=30)
    rows = await _spans(pool, f"{root.get_span_context().trace_id:032x}")
    oi = rows["oi.llm"]
    assert (oi["span_type"], oi["model"], oi["provider"]) == ("llm", "claude-sonnet-4", "anthropic")
    assert (oi["input_tokens"], oi["output_tokens"], oi["cached_input_tokens"]) == (100, 20, 64)
    assert rows["oi.retriever"]["span_type"] == "retrieval"
    old = rows["old.genai"]
    assert (old["span_type"], old["model"], old["provider"]) == ("llm", "gpt-4o-mini", "openai")
    assert (old["input_tokens"], old["output_tokens"]) == (7, 3)


async def test_hostile_spans_never_raise_into_the_sdk_and_the_ledger_balances(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """Wrongly typed GenAI values, a 2 MB attribute, NUL characters, a span with invalid ids and
    a span object that is not a span are handled as our own calls handle bad input: saved where
    they can be, refused and counted where they cannot, never raised."""
    async with ObservabilityService(db_dsn, flush_interval=0.05) as svc:
        provider, processor = _provider(svc)
        tracer = provider.get_tracer("app")
        with tracer.start_as_current_span(
            "odd",
            attributes={
                "gen_ai.request.model": 123,
                "gen_ai.usage.input_tokens": "12",
                "gen_ai.usage.output_tokens": 2**40,
                "gen_ai.provider.name": "open\x00ai",
                "prompt": "x" * 2_000_000,
                "flags": (True, False),
            },
        ) as odd:
            pass
        context = odd.get_span_context()
        bad_ids = ReadableSpan(
            name="bad ids",
            context=otel_trace.SpanContext(
                trace_id=2**130, span_id=5, is_remote=False,
                trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
            ),
            parent=context,
            start_time=1,
            end_time=2,
        )  # fmt: skip
        processor.on_end(bad_ids)
        processor.on_end(object())  # type: ignore[arg-type]
        assert await svc.flush(timeout=30)
        stats = svc.stats()
    assert processor.failed == 1  # the object that is not a span
    assert stats is not None and stats.balances()
    assert stats.rejected_invalid == 1  # the 33-digit trace id, refused like our own bad ids
    row = (await _spans(pool, f"{context.trace_id:032x}"))["odd"]
    assert (row["model"], row["provider"]) == ("123", "openai")
    assert (row["input_tokens"], row["output_tokens"]) == (12, 2**31 - 1)
    meta = json.loads(row["metadata"])
    assert meta.get("_truncated") is True  # over 1 MiB: a marker, as for our own calls


def test_the_processor_never_touches_the_global_tracer_provider(db_dsn: str) -> None:
    """Using the processor leaves OpenTelemetry's global provider as it was (a proxy)."""
    before = otel_trace.get_tracer_provider()
    svc = ObservabilityService(db_dsn)
    provider, processor = _provider(svc)
    with provider.get_tracer("app").start_as_current_span("x"):
        pass
    assert otel_trace.get_tracer_provider() is before
    assert isinstance(before, otel_trace.ProxyTracerProvider)
    assert processor.recorded == 1 and processor.force_flush() is True
    provider.shutdown()  # shutting the SDK down does not close the application's service
    assert svc.stats() is not None and svc.stats().enqueued == 3  # type: ignore[union-attr]
    asyncio.run(svc.close())


# --- a real instrumentation against a local fake of the chat completions API ----------------

_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "RAG retrieves, then generates."},
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 21,
        "completion_tokens": 7,
        "total_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 16},
        "completion_tokens_details": {"reasoning_tokens": 3},
    },
}


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.dumps(_COMPLETION).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_openai() -> Iterator[str]:
    """A local server answering /v1/chat/completions with a fixed completion; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# OpenLLMetry's openai module declares a pydantic model with a class-based config, which
# pydantic 2 deprecates on import; that is theirs to fix, not a leak of ours.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Support for class-based:DeprecationWarning")
async def test_openai_instrumentation_rows_carry_model_provider_and_tokens(
    db_dsn: str, pool: asyncpg.Pool, fake_openai: str
) -> None:
    """OpenLLMetry's openai instrumentation, calling a local fake of the API through the real
    openai client, gives a row with the model, provider and token counts in their columns."""
    import openai
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    async with ObservabilityService(db_dsn, flush_interval=0.05) as svc:
        provider, processor = _provider(svc)
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        try:
            client = openai.OpenAI(api_key="test-key", base_url=fake_openai, max_retries=0)
            answer = await asyncio.to_thread(
                client.chat.completions.create,
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "What is RAG?"}],
            )
            client.close()
        finally:
            instrumentor.uninstrument()
        assert answer.choices[0].message.content == "RAG retrieves, then generates."
        assert await svc.flush(timeout=30)
    assert processor.recorded == 1 and processor.failed == 0
    row = await pool.fetchrow("SELECT * FROM observability.spans")
    assert row["span_type"] == "llm" and row["status"] == "ok"
    assert row["model"] == "gpt-4o-mini" and row["provider"] == "openai"
    assert (row["input_tokens"], row["output_tokens"]) == (21, 7)
    assert row["cached_input_tokens"] == 16
    trace = await pool.fetchrow("SELECT * FROM observability.traces")
    assert trace["trace_id"] == row["trace_id"] and trace["span_id"] == row["span_id"]


# --- anything an SDK span may carry -----------------------------------------------------------

_MAPPED_NAMES = [
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.operation.name",
    "openinference.span.kind",
    "llm.token_count.prompt",
    "error.type",
    "user.id",
    "session.id",
    "tracewriter.kb_id",
]
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.tuples(st.integers(), st.text(max_size=3)),
    st.builds(object),
)
_attributes = st.dictionaries(
    st.one_of(st.sampled_from(_MAPPED_NAMES), st.text(max_size=10)), _values, max_size=8
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    spans=st.lists(
        st.tuples(
            _attributes,
            st.integers(0, 2**129),
            st.integers(0, 2**65),
            st.one_of(st.none(), st.integers(0, 2**65)),
            st.sampled_from(list(StatusCode)),
            st.one_of(st.none(), st.text(max_size=10)),
            st.lists(st.tuples(st.text(max_size=8), _attributes), max_size=2),
            st.one_of(st.none(), st.integers(-(2**64), 2**64)),
        ),
        max_size=12,
    )
)
def test_any_span_content_is_recorded_or_refused_never_raised(
    spans: list[tuple[Any, ...]],
) -> None:
    """Spans built with any attribute values, ids, times, statuses and events are mapped
    without ever raising into the SDK, and every event they give is written or refused and
    counted by the writer's ledger."""
    from opentelemetry.sdk.trace import Event as OtelEvent

    from tracewriter import PostgresProvider, WriterConfig
    from tracewriter.testing import InMemorySink

    async def scenario() -> None:
        writer = PostgresProvider(WriterConfig(flush_interval=0.01), sink=InMemorySink())
        svc = ObservabilityService(providers=[writer])
        processor = TracewriterSpanProcessor(svc)
        await svc.start()
        for attrs, trace_id, span_id, parent_id, code, description, events, start in spans:
            flags = otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
            parent = (
                None
                if parent_id is None
                else otel_trace.SpanContext(trace_id, parent_id, is_remote=False)
            )
            span = ReadableSpan(
                name="s",
                context=otel_trace.SpanContext(trace_id, span_id, False, trace_flags=flags),
                parent=parent,
                attributes=attrs,
                events=[OtelEvent(name, a, timestamp=1) for name, a in events],
                status=Status(code, description),
                start_time=start,
                end_time=None if start is None else start + 1000,
            )
            processor.on_end(span)
        assert processor.failed == 0
        assert await svc.flush(timeout=10)
        stats = writer.stats()
        assert stats.balances() and stats.buffered == stats.in_flight == 0
        assert stats.written + stats.rejected_invalid + stats.dead_lettered == stats.enqueued
        await svc.close()

    asyncio.run(scenario())
