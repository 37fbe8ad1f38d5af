"""Hot-path cost per call (pytest-benchmark): tracewriter's recording calls, floor, OpenTelemetry.

Run by ``python -m benchmarks.run`` as ``pytest benchmarks/bench_hotpath.py --benchmark-json``;
runnable alone the same way. Each round times ``TW_BENCH_INNER`` calls in a loop (the timer's
own cost would swamp a sub-microsecond call) and the suite divides by it; ``extra_info`` says
how many. Before every round, outside the timing, the recorder starts empty: a fresh
``ObservabilityService`` (so its buffer never fills and drops), a fresh deque for the floor,
and a drained BatchSpanProcessor queue for OpenTelemetry. The writer is not started: the calls
only append to its buffer, which is all they ever do, and no flusher competes for the CPU.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks._workload import LLM_ARGS, default_metadata
from tracewriter import ObservabilityService, TraceContext

INNER = int(os.environ.get("TW_BENCH_INNER", "1000"))
ROUNDS = int(os.environ.get("TW_BENCH_ROUNDS", "200"))
WARMUP = min(10, ROUNDS)
# Never connected: the hot path does no I/O, and an unstarted writer only buffers.
DSN = "postgresql://bench@localhost/never_connected"

META = default_metadata(1)
MODEL, PROVIDER = LLM_ARGS["model"], LLM_ARGS["provider"]
IN_TOK, OUT_TOK, DURATION = LLM_ARGS["input_tokens"], LLM_ARGS["output_tokens"], 420.0


def _run(benchmark: Any, target: Callable[..., None], setup: Callable[[], Any]) -> None:
    benchmark.extra_info["inner"] = INNER
    benchmark.pedantic(target, setup=lambda: ((setup(),), {}), rounds=ROUNDS, warmup_rounds=WARMUP)


def _service() -> tuple[ObservabilityService, TraceContext]:
    svc = ObservabilityService(DSN, max_buffer_rows=max(4 * INNER, 10_000))
    ctx = svc.start_trace("chat.request", user_id="user-0001", session_id="s-1", kb_id="kb-01")
    return svc, ctx


# --- the floor ---------------------------------------------------------------------------------


def test_floor_deque_append(benchmark: Any) -> None:
    """A bare deque.append of a tuple the size of an event, built from the same arguments."""

    def target(q: deque[Any]) -> None:
        append = q.append
        trace_id, span_id = "90a3ef83acb7f375163318f17d4fd21d", "8278f834bdb9c768"
        for _ in range(INNER):
            append(
                (
                    "span",
                    0,
                    0,
                    trace_id,
                    span_id,
                    None,
                    "llm.call",
                    "llm",
                    "ok",
                    DURATION,
                    None,
                    None,
                    "user-0001",
                    "s-1",
                    "kb-01",
                    META,
                    (MODEL, PROVIDER, IN_TOK, OUT_TOK, None, None),
                )
            )

    _run(benchmark, target, deque)


# --- tracewriter -------------------------------------------------------------------------------


def test_log_llm_call(benchmark: Any) -> None:
    """ObservabilityService.log_llm_call with a context and default-size metadata."""

    def target(state: tuple[ObservabilityService, TraceContext]) -> None:
        svc, ctx = state
        log = svc.log_llm_call
        for _ in range(INNER):
            log(
                ctx,
                model=MODEL,
                provider=PROVIDER,
                input_tokens=IN_TOK,
                output_tokens=OUT_TOK,
                duration_ms=DURATION,
                metadata=META,
            )

    _run(benchmark, target, _service)


def test_span_sync(benchmark: Any) -> None:
    """``with svc.span(ctx, ...)``: enter and exit, two events."""

    def target(state: tuple[ObservabilityService, TraceContext]) -> None:
        svc, ctx = state
        span = svc.span
        for _ in range(INNER):
            with span(ctx, "retrieve", "retrieval", META):
                pass

    _run(benchmark, target, _service)


def test_span_async(benchmark: Any) -> None:
    """``async with svc.span(ctx, ...)`` inside a coroutine: enter and exit, two events."""
    loop = asyncio.new_event_loop()

    async def spans(svc: ObservabilityService, ctx: TraceContext) -> None:
        span = svc.span
        for _ in range(INNER):
            async with span(ctx, "retrieve", "retrieval", META):
                pass

    def target(state: tuple[ObservabilityService, TraceContext]) -> None:
        loop.run_until_complete(spans(*state))

    try:
        _run(benchmark, target, _service)
    finally:
        loop.close()


def test_start_end_trace(benchmark: Any) -> None:
    """``start_trace`` + ``end_trace``: a new root context, two events."""

    def target(state: tuple[ObservabilityService, TraceContext]) -> None:
        svc, _ = state
        start, end = svc.start_trace, svc.end_trace
        for _ in range(INNER):
            ctx = start(
                "chat.request",
                user_id="user-0001",
                session_id="s-1",
                kb_id="kb-01",
                metadata=META,
            )
            end(ctx)

    _run(benchmark, target, _service)


# --- OpenTelemetry SDK -------------------------------------------------------------------------


class _NoopExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


ATTRIBUTES: dict[str, Any] = {
    "gen_ai.request.model": MODEL,
    "gen_ai.system": PROVIDER,
    "gen_ai.usage.input_tokens": IN_TOK,
    "gen_ai.usage.output_tokens": OUT_TOK,
    "duration_ms": DURATION,
    "user.id": "user-0001",
    "session.id": "s-1",
    "kb.id": "kb-01",
    **META,
}


@pytest.fixture(scope="module")
def otel() -> Iterator[tuple[Any, BatchSpanProcessor]]:
    provider = TracerProvider(shutdown_on_exit=False)
    processor = BatchSpanProcessor(_NoopExporter())
    provider.add_span_processor(processor)
    yield provider.get_tracer("tracewriter.bench"), processor
    provider.shutdown()


def test_otel_start_as_current_span(benchmark: Any, otel: Any) -> None:
    """OpenTelemetry ``with tracer.start_as_current_span(name, attributes=...)``."""
    tracer, processor = otel

    def target(_: None) -> None:
        start = tracer.start_as_current_span
        for _ in range(INNER):
            with start("llm.call", attributes=ATTRIBUTES):
                pass

    _run(benchmark, target, processor.force_flush)


def test_otel_start_span_end(benchmark: Any, otel: Any) -> None:
    """OpenTelemetry ``tracer.start_span(name, attributes=...).end()``."""
    tracer, processor = otel

    def target(_: None) -> None:
        start = tracer.start_span
        for _ in range(INNER):
            start("llm.call", attributes=ATTRIBUTES).end()

    _run(benchmark, target, processor.force_flush)


# --- what common building blocks cost here (the "costs worth knowing") -----------------

_REFERENCE: dict[str, Callable[[], object]] = {
    "uuid.uuid4()": uuid.uuid4,
    "json.dumps(142-byte dict)": lambda: json.dumps(META),
    "orjson.dumps(142-byte dict)": lambda: orjson.dumps(META),
    "secrets.token_hex(8)": lambda: secrets.token_hex(8),
    "os.urandom(8).hex()": lambda: os.urandom(8).hex(),
    "datetime.now(timezone.utc)": lambda: _dt.datetime.now(_dt.UTC),
    "time.time_ns()": time.time_ns,
}


@pytest.mark.parametrize("name", list(_REFERENCE))
def test_reference_cost(benchmark: Any, name: str) -> None:
    """One call of a standard-library or orjson building block."""
    fn = _REFERENCE[name]

    def target(_: None) -> None:
        for _ in range(INNER):
            fn()

    _run(benchmark, target, lambda: None)
