"""OpenTelemetry out: OtlpProvider against a real OTLP/HTTP receiver, and its failure modes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import TracerProvider

from tracewriter import Event, EventKind, ObservabilityService, TraceContext
from tracewriter._policy import is_sampled
from tracewriter.errors import ConfigurationError
from tracewriter.otel import TracewriterSpanProcessor
from tracewriter.otlp import OtlpProvider, event_metadata

pytestmark = pytest.mark.timeout(60)


class Receiver:
    """A local OTLP/HTTP receiver decoding requests with the official protobuf messages.

    ``statuses`` are answered in order (then 200); while ``hold`` is set to an unset event,
    every request waits for it before being answered (a stalled collector).
    """

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, AnyValue], Span]] = []
        self.resources: list[dict[str, Any]] = []
        self.logs: list[LogRecord] = []
        self.requests = 0
        self.statuses: deque[int] = deque()
        self.always: int | None = None
        self.hold: asyncio.Event | None = None
        self.content_types: set[str] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            _, path, _ = request_line.decode().split()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
            self.requests += 1
            self.content_types.add(headers.get("content-type", ""))
            if self.hold is not None:
                await self.hold.wait()
            status = self.statuses.popleft() if self.statuses else (self.always or 200)
            answer = b""
            if status == 200 and path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    self.resources.append(
                        {kv.key: kv.value for kv in resource_spans.resource.attributes}
                    )
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            self.spans.append(({kv.key: kv.value for kv in span.attributes}, span))
                answer = ExportTraceServiceResponse().SerializeToString()
            elif status == 200 and path == "/v1/logs":
                logs = ExportLogsServiceRequest.FromString(body)
                for resource_logs in logs.resource_logs:
                    for scope_logs in resource_logs.scope_logs:
                        self.logs.extend(scope_logs.log_records)
                answer = ExportLogsServiceResponse().SerializeToString()
            elif status == 200:
                status = 404
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\n"
                f"Content-Length: {len(answer)}\r\nRetry-After: 0\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def span(self, name: str) -> tuple[dict[str, AnyValue], Span]:
        matches = [(a, s) for a, s in self.spans if s.name == name]
        assert len(matches) == 1, f"{name}: {len(matches)} spans"
        return matches[0]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A started receiver, stopped after the test."""
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def _otlp(url: str, **kw: Any) -> OtlpProvider:
    options: dict[str, Any] = dict(
        flush_interval=0.05, timeout=2.0, retry_initial_backoff=0.01, retry_max_backoff=0.05
    )
    options.update(kw)
    return OtlpProvider(url, **options)


async def _until(condition: Any, timeout: float = 10.0) -> None:
    """Wait (polling every 10 ms) until ``condition()`` holds; fail after ``timeout``."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def _hex(raw: bytes) -> str:
    return raw.hex()


async def test_a_request_flow_reaches_the_receiver_with_ids_parents_times_and_attributes(
    db_dsn: str, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    """A trace with a nested span, an LLM call, a chat message and a document event arrives as
    spans (ids, parent links, names, times, GenAI attributes) and log records (content, ids),
    and the same events are in PostgreSQL."""
    otlp = _otlp(receiver.url, service_name="rag-api", headers={"x-tenant": "t1"})
    async with ObservabilityService(db_dsn, providers=[otlp], flush_interval=0.05) as svc:
        ctx = svc.start_trace("chat.request", user_id="u-7", session_id="s-1", kb_id="kb-9")
        async with svc.span(ctx, "retrieve", "retrieval", {"top_k": 5}) as retrieve_id:
            await asyncio.sleep(0.01)
        llm_id = svc.log_llm_call(
            ctx, model="gpt-4o", provider="openai", input_tokens=812, output_tokens=95,
            cached_input_tokens=512, reasoning_tokens=7, duration_ms=420.0,
            metadata={"temperature": 0.2, "tags": ["a", "b"], "nested": {"k": 1}},
        )  # fmt: skip
        svc.log_chat_message(ctx, role="user", content="What is RAG?", token_count=4)
        svc.log_document_event(
            ctx, document_id="doc-1", event_type="embed", chunk_count=12, duration_ms=30.0
        )
        svc.end_trace(ctx)
        assert await svc.flush(timeout=10)
    stats = otlp.stats()
    assert stats.balances() and stats.sent == stats.received == 7
    assert stats.dropped == stats.failed == stats.held == 0 and not stats.running
    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.resources[0]["service.name"].string_value == "rag-api"

    root_attrs, root = receiver.span("chat.request")
    assert _hex(root.trace_id) == ctx.trace_id and _hex(root.span_id) == ctx.span_id
    assert root.parent_span_id == b"" and root_attrs["tracewriter.trace"].bool_value
    assert root_attrs["user.id"].string_value == "u-7"
    assert root_attrs["tracewriter.kb_id"].string_value == "kb-9"
    assert root.status.code == Status.StatusCode.STATUS_CODE_OK
    retrieve_attrs, retrieve = receiver.span("retrieve")
    assert _hex(retrieve.span_id) == retrieve_id and _hex(retrieve.parent_span_id) == ctx.span_id
    assert retrieve_attrs["tracewriter.span_type"].string_value == "retrieval"
    assert retrieve_attrs["top_k"].int_value == 5
    assert root.start_time_unix_nano <= retrieve.start_time_unix_nano
    assert retrieve.end_time_unix_nano - retrieve.start_time_unix_nano >= 10_000_000
    assert retrieve.end_time_unix_nano <= root.end_time_unix_nano
    llm_attrs, llm = receiver.span("llm.call")
    assert _hex(llm.span_id) == llm_id and _hex(llm.parent_span_id) == ctx.span_id
    assert llm.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert llm.end_time_unix_nano - llm.start_time_unix_nano == 420_000_000
    assert llm_attrs["gen_ai.operation.name"].string_value == "chat"
    assert llm_attrs["gen_ai.request.model"].string_value == "gpt-4o"
    assert llm_attrs["gen_ai.provider.name"].string_value == "openai"
    assert llm_attrs["gen_ai.usage.input_tokens"].int_value == 812
    assert llm_attrs["gen_ai.usage.output_tokens"].int_value == 95
    assert llm_attrs["gen_ai.usage.cache_read.input_tokens"].int_value == 512
    assert llm_attrs["gen_ai.usage.reasoning.output_tokens"].int_value == 7
    assert llm_attrs["temperature"].double_value == 0.2
    assert [v.string_value for v in llm_attrs["tags"].array_value.values] == ["a", "b"]
    assert llm_attrs["nested"].kvlist_value.values[0].key == "k"

    rows = await pool.fetch("SELECT span_id, timestamp FROM observability.spans")
    by_id = {r["span_id"]: r["timestamp"] for r in rows}
    assert set(by_id) == {retrieve_id, llm_id}
    # The same start time on both paths (PostgreSQL keeps microseconds).
    assert by_id[llm_id].timestamp() * 1e6 == pytest.approx(llm.start_time_unix_nano / 1e3, abs=1)

    chat, document = sorted(receiver.logs, key=lambda r: r.event_name)
    assert chat.event_name == "gen_ai.user.message" and chat.body.string_value == "What is RAG?"
    assert _hex(chat.trace_id) == ctx.trace_id and _hex(chat.span_id) == ctx.span_id
    chat_attrs = {kv.key: kv.value for kv in chat.attributes}
    assert chat_attrs["tracewriter.token_count"].int_value == 4
    assert document.event_name == "tracewriter.document_event"
    doc_attrs = {kv.key: kv.value for kv in document.attributes}
    assert doc_attrs["tracewriter.document_id"].string_value == "doc-1"
    assert doc_attrs["tracewriter.chunk_count"].int_value == 12
    assert _hex(document.trace_id) == ctx.trace_id


async def test_an_otel_root_span_is_exported_once(db_dsn: str, receiver: Receiver) -> None:
    """A root SDK span recorded through the span processor (a span plus its trace's start and
    end) reaches the collector as one span, and all three events count as sent."""
    otlp = _otlp(receiver.url)
    async with ObservabilityService(db_dsn, providers=[otlp], flush_interval=0.05) as svc:
        provider = TracerProvider()
        provider.add_span_processor(TracewriterSpanProcessor(svc))
        with provider.get_tracer("app").start_as_current_span("root", attributes={"k": "v"}):
            pass
        assert await svc.flush(timeout=10)
        stats = otlp.stats()
    assert [s.name for _, s in receiver.spans] == ["root"]
    attrs, _ = receiver.span("root")
    assert attrs["k"].string_value == "v"
    assert stats.balances() and stats.sent == stats.received == 3


async def test_a_collector_that_is_down_is_retried_then_counted_as_failed(db_dsn: str) -> None:
    """With nothing listening, every batch is retried up to max_retries and then counted as
    failed; flush says so, PostgreSQL still gets every row, and the ledger balances."""
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    otlp = _otlp(f"http://127.0.0.1:{port}", max_retries=2)
    async with ObservabilityService(db_dsn, providers=[otlp], flush_interval=0.05) as svc:
        ctx = svc.start_trace("t")
        svc.log_llm_call(ctx, model="m")
        svc.end_trace(ctx)
        assert not await svc.flush(timeout=10)
        pg = svc.stats()
        stats = otlp.stats()
    assert pg is not None and pg.written == pg.enqueued == 3
    assert stats.balances() and stats.failed == stats.received == 3
    assert stats.retries == 2 and stats.sent == 0
    assert stats.last_error is not None and "Error" in stats.last_error


async def test_503_is_retried_until_the_collector_accepts(receiver: Receiver) -> None:
    """Two 503 answers are retried with backoff and the batch is then delivered once."""
    receiver.statuses.extend([503, 503])
    otlp = _otlp(receiver.url, max_retries=3)
    async with ObservabilityService(None, providers=[otlp]) as svc:
        svc.log_llm_call(TraceContext.new_root(), model="m")
        assert await svc.flush(timeout=10)
        stats = otlp.stats()
    assert stats.retries == 2 and stats.requests == 3 and stats.sent == 1
    assert len(receiver.spans) == 1 and stats.balances()


async def test_a_refusal_is_not_retried_and_a_lasting_503_gives_up(receiver: Receiver) -> None:
    """A 400 fails its batch at once; a 503 that lasts fails it after max_retries; both are
    counted as failed and the ledger balances."""
    receiver.statuses.append(400)
    otlp = _otlp(receiver.url, max_retries=2)
    async with ObservabilityService(None, providers=[otlp]) as svc:
        svc.log_llm_call(TraceContext.new_root(), model="m")
        assert not await svc.flush(timeout=10)
        assert otlp.stats().retries == 0 and otlp.stats().failed == 1
        receiver.always = 503
        svc.log_llm_call(TraceContext.new_root(), model="m")
        assert not await svc.flush(timeout=10)
        stats = otlp.stats()
    assert stats.failed == 2 and stats.retries == 2 and stats.sent == 0 and stats.balances()


@pytest.mark.slow
async def test_a_stalled_collector_never_slows_postgres_and_close_is_bounded(
    db_dsn: str, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    """While the collector accepts connections but never answers, recording goes on, PostgreSQL
    writes every row, the bounded queue drops and counts the excess, and close(timeout)
    returns by its deadline with the unsent events counted as dropped."""
    receiver.hold = asyncio.Event()
    otlp = _otlp(receiver.url, timeout=30.0, max_queue=10, max_batch=4)
    svc = ObservabilityService(db_dsn, providers=[otlp], flush_interval=0.05)
    await svc.start()
    ctx = svc.start_trace("t")
    for i in range(40):
        svc.log_llm_call(ctx, model="m", name=f"call-{i}")
    svc.end_trace(ctx)
    assert svc.postgres is not None and await svc.postgres.flush(timeout=30)
    assert await pool.fetchval("SELECT count(*) FROM observability.spans") == 40
    assert receiver.requests >= 1  # the exporter is stuck in a request
    assert not await otlp.flush(timeout=0.2)
    during = otlp.stats()
    assert during.dropped > 0 and during.in_flight > 0 and during.balances()
    await asyncio.wait_for(svc.close(timeout=0.5), timeout=10)
    after = otlp.stats()
    assert after.sent == 0 and after.queued == after.in_flight == after.held == 0
    assert after.dropped == after.received == 42 and after.balances() and not after.running
    svc.log_llm_call(ctx, model="m")  # after close: dropped and counted, never raised
    assert otlp.stats().dropped == 43


async def test_a_program_without_an_event_loop_exports_from_a_thread(
    receiver: Receiver,
) -> None:
    """start_sync runs the exporter on its own thread and loop; a synchronous program records,
    flushes and closes it without ever having an event loop."""
    otlp = _otlp(receiver.url)
    svc = ObservabilityService(None, providers=[otlp])

    def program() -> bool:
        otlp.start_sync()
        svc.log_llm_call(TraceContext.new_root(), model="m")
        delivered = otlp.flush_sync(10)
        otlp.close_sync(5)
        return delivered

    assert await asyncio.to_thread(program)
    stats = otlp.stats()
    assert len(receiver.spans) == 1 and stats.sent == 1 and stats.balances()
    assert not stats.running


async def test_bad_ids_open_spans_and_a_full_table_of_starts_are_counted() -> None:
    """Spans with ids that are not W3C ids, and events the service refuses, are rejected and
    counted; span starts beyond
    max_open_spans are evicted and counted as dropped, as are starts still open at close."""
    otlp = _otlp("http://127.0.0.1:9", max_open_spans=2)  # nothing is ever sent
    async with ObservabilityService(None, providers=[otlp]) as svc:
        bad = TraceContext(trace_id="not-hex", span_id="zz")
        svc.log_llm_call(bad, model="m")
        # Refused by the service itself (no kb_id): counted the same way.
        svc.log_document_event(TraceContext.new_root(), document_id="d", event_type="embed")
        ctx = svc.start_trace("t")
        scopes = [svc.span(ctx, f"s{i}") for i in range(2)]
        for scope in scopes:
            scope.__enter__()
        await _until(lambda: otlp.stats().held == 2)
        stats = otlp.stats()
        assert stats.rejected_invalid == 2 and stats.held == 2 and stats.dropped == 1
        assert stats.balances()
    stats = otlp.stats()
    assert stats.dropped == 3 and stats.held == 0 and stats.balances()


def test_metadata_is_read_from_a_dict_json_bytes_or_json_text() -> None:
    """event_metadata gives the same dict for a dict, JSON bytes and JSON text, and wraps what
    is not an object."""
    expected = {"a": 1, "b": [1, 2]}
    assert event_metadata(expected) == expected
    assert event_metadata(json.dumps(expected).encode()) == expected
    assert event_metadata(json.dumps(expected)) == expected
    assert event_metadata("plain words") == {"value": "plain words"}
    assert event_metadata(b"[1, 2]") == {"value": [1, 2]}
    assert event_metadata(None) is None


def test_misconfiguration_raises_naming_the_setting() -> None:
    """A bad endpoint, a header with a newline, or a non-positive bound raises at once."""
    with pytest.raises(ConfigurationError, match="endpoint"):
        OtlpProvider("collector:4318")
    with pytest.raises(ConfigurationError, match="headers"):
        OtlpProvider("http://c:4318", headers={"x": "a\r\nInjected: 1"})
    with pytest.raises(ConfigurationError, match="max_queue"):
        OtlpProvider("http://c:4318", max_queue=0)
    assert "secret" not in repr(OtlpProvider("http://user:secret@c:4318"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_metadata = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.just('{"a": 1}'),
    st.just(b'{"b": [1, 2]}'),
    st.just(b"\xff not json"),
    st.text(max_size=5),
    st.integers(),
    st.builds(object),
)
_events = st.builds(
    Event,
    kind=st.sampled_from(
        [
            EventKind.SPAN_START,
            EventKind.SPAN_END,
            EventKind.TRACE_START,
            EventKind.TRACE_END,
            EventKind.SPAN,
            EventKind.CHAT,
            EventKind.DOCUMENT,
            "unknown",
        ]
    ),
    start_ns=st.one_of(st.integers(-(2**70), 2**70), st.none(), st.floats()),
    end_ns=st.one_of(st.none(), st.integers(0, 2**64)),
    trace_id=st.sampled_from(["a" * 32, "b" * 32, "0" * 32, "bad", None]),
    span_id=st.sampled_from(["1" * 16, "2" * 16, "3" * 16, "zz", None]),
    parent_span_id=st.sampled_from(["1" * 16, "9" * 16, None, 7]),
    name=st.one_of(st.none(), st.text(max_size=5)),
    span_type=st.sampled_from(["llm", "tool", None]),
    status=st.sampled_from(["ok", "error", "timeout", None, 3]),
    duration_ms=st.one_of(st.none(), st.floats(), st.integers()),
    error_type=st.sampled_from([None, "ValueError"]),
    error_message=st.one_of(st.none(), st.text(max_size=5)),
    user_id=st.sampled_from([None, "u"]),
    session_id=st.sampled_from([None, "s"]),
    kb_id=st.sampled_from([None, "kb"]),
    metadata=_metadata,
    detail=st.one_of(
        st.none(),
        st.tuples(st.text(max_size=3), st.none(), st.integers(-(2**70), 2**70)),
        st.tuples(*[st.one_of(st.none(), st.integers(0, 10**6)) for _ in range(6)]),
    ),
).map(Event.flat)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(_events, max_size=40), max_open=st.integers(1, 4))
@example(  # found by hand: an infinite duration with no end time overflowed int()
    events=[
        Event(EventKind.SPAN, 10, None, "a" * 32, "1" * 16, None, "n", "llm", "ok",
              float("inf"), None, None, None, None, None, None, None).flat(),
    ],
    max_open=1,
)  # fmt: skip
def test_any_event_sequence_keeps_the_ledger_balanced(
    events: list[tuple[Any, ...]], max_open: int
) -> None:
    """Whatever events arrive (orphan ends, repeated starts, invalid ids, odd metadata, more
    open spans than allowed), conversion never raises out of the exporter and the ledger
    balances before and after close, with nothing left queued, held or in flight."""

    async def scenario() -> None:
        otlp = OtlpProvider(
            f"http://127.0.0.1:{_closed_port()}",
            max_retries=0,
            flush_interval=0.01,
            timeout=1.0,
            max_batch=7,
            max_open_spans=max_open,
        )
        await otlp.start()
        for event in events:
            otlp.record(event)
        await otlp.flush(timeout=10)
        during = otlp.stats()
        assert during.balances() and during.queued == during.in_flight == 0 and during.running
        await otlp.close(timeout=2)
        after = otlp.stats()
        assert after.balances() and after.received == len(events)
        assert after.queued == after.held == after.in_flight == after.sent == 0
        assert after.internal_errors == 0, after.last_error

    asyncio.run(scenario())


async def test_the_export_is_redacted_and_sampled_as_postgresql_is(receiver: Receiver) -> None:
    """With the service's redaction and sampling, no secret reaches the collector, a sampled-out
    trace is not exported but counted as sampled_out, and an error in it still is."""
    email, key = "jo.doe@example.com", "sk-proj-" + "A1b2C3d4" * 5
    otlp = _otlp(receiver.url)
    svc = ObservabilityService(providers=[otlp], redact="all", sample_rate=0.5)
    async with svc:
        kept = dropped = None
        while kept is None or dropped is None:  # one trace of each sampling decision
            ctx = TraceContext.new_root()
            if is_sampled(ctx.trace_id, 0.5):
                kept = kept or ctx
            else:
                dropped = dropped or ctx
        svc.log_chat_message(kept, role="user", content=f"mail {email}, key {key}")
        svc.log_llm_call(
            kept, model="m", duration_ms=1.0, error_message=f"bad key {key}", status="error",
            metadata={"deep": [{"who": email}]},
        )  # fmt: skip
        svc.log_llm_call(dropped, model="m", duration_ms=1.0)
        svc.log_llm_call(dropped, model="m", duration_ms=1.0, status="error", name="failed")
        assert await svc.flush(timeout=10)
    stats = otlp.stats()
    assert stats.balances(), stats
    assert stats.sampled_out == 1 and stats.sent == 3, stats
    exported = [s for _, s in receiver.spans]
    assert {_hex(s.trace_id) for s in exported} == {kept.trace_id, dropped.trace_id}
    assert [s.name for s in exported if _hex(s.trace_id) == dropped.trace_id] == ["failed"]
    wire = b"".join(s.SerializeToString() for s in exported) + b"".join(
        r.SerializeToString() for r in receiver.logs
    )
    for secret in (email, key, key[8:20]):
        assert secret.encode() not in wire
    assert b"[email]" in wire and b"[api_key]" in wire
