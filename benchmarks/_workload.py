"""The workload every measurement shares: realistic RAG traces and the span rows they become.

One trace is what a chat request of a RAG service records: ``start_trace``, a retrieval span
with a nested embedding span, a rerank span, one ``log_llm_call`` and ``end_trace`` — nine
events, four ``spans`` rows and one ``traces`` row. The ceiling and the per-event baselines
write the very rows this workload produces (captured through a provider and built with the
writer's own row builder), so every design writes the same data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from tracewriter import EventKind, ObservabilityService, Provider
from tracewriter._schema import SPAN_COLUMNS, SPANS

EVENTS_PER_TRACE: Final = 9
SPANS_PER_TRACE: Final = 4

USERS: Final = tuple(f"user-{i:04d}" for i in range(64))
KBS: Final = tuple(f"kb-{i:02d}" for i in range(8))

# LLM call arguments used everywhere (hot path, workload, floor, OpenTelemetry attributes).
LLM_ARGS: Final[dict[str, Any]] = {
    "model": "gpt-4o",
    "provider": "openai",
    "input_tokens": 812,
    "output_tokens": 95,
    "duration_ms": 420.0,
}


def default_metadata(i: int = 0) -> dict[str, Any]:
    """The "default size" metadata of an LLM call: 142 bytes of JSON, one value per call."""
    return {
        "request_id": f"req-{i:06d}",
        "temperature": 0.2,
        "top_p": 1.0,
        "prompt_template": "rag-answer-v3",
        "retrieved_chunks": 5,
        "stream": False,
        "cache": "miss",
    }


RETRIEVE_META: Final = {"top_k": 8, "index": "hnsw"}
EMBED_META: Final = {"model": "text-embedding-3-small", "dims": 1536}
RERANK_META: Final = {"model": "bge-reranker-v2", "candidates": 8}
TRACE_META: Final = {"route": "/chat", "client": "web"}


async def trace_async(svc: ObservabilityService, i: int) -> None:
    """One chat request as an async application records it (nine events)."""
    ctx = svc.start_trace(
        "chat.request",
        user_id=USERS[i % len(USERS)],
        session_id=f"sess-{i // 4:08d}",
        kb_id=KBS[i % len(KBS)],
        metadata=TRACE_META,
    )
    async with svc.span(ctx, "retrieve", "retrieval", RETRIEVE_META):
        with svc.span(None, "embed.query", "embedding", EMBED_META):
            pass
    with svc.span(ctx, "rerank", "rerank", RERANK_META):
        pass
    svc.log_llm_call(ctx, **LLM_ARGS, metadata=default_metadata(i))
    svc.end_trace(ctx)


def trace_sync(svc: ObservabilityService, i: int) -> None:
    """The same request as a synchronous application records it."""
    ctx = svc.start_trace(
        "chat.request",
        user_id=USERS[i % len(USERS)],
        session_id=f"sess-{i // 4:08d}",
        kb_id=KBS[i % len(KBS)],
        metadata=TRACE_META,
    )
    with (
        svc.span(ctx, "retrieve", "retrieval", RETRIEVE_META),
        svc.span(None, "embed.query", "embedding", EMBED_META),
    ):
        pass
    with svc.span(ctx, "rerank", "rerank", RERANK_META):
        pass
    svc.log_llm_call(ctx, **LLM_ARGS, metadata=default_metadata(i))
    svc.end_trace(ctx)


class CaptureProvider(Provider):
    """A provider that keeps every event it is given (to build the baselines' rows)."""

    name = "capture"

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def record(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)


_STATUS = SPAN_COLUMNS.index("status")
_END_FIELDS = tuple(
    SPAN_COLUMNS.index(c) for c in ("status", "duration_ms", "error_type", "error_message")
)


def span_rows(traces: int) -> list[tuple[Any, ...]]:
    """The ``spans`` rows ``traces`` workload traces become, complete, in column order.

    Built with the writer's own builder; a span's start and end are merged the way the
    flusher coalesces them (the start row with the end's outcome).
    """
    # Imported here: the rest of this module uses only the public API, so that
    # `benchmarks.cost` can measure an older version of the writer too.
    from tracewriter._records import KIND, build  # noqa: PLC0415

    capture = CaptureProvider()
    svc = ObservabilityService(providers=[capture])
    for i in range(traces):
        trace_sync(svc, i)
    rows: list[tuple[Any, ...]] = []
    open_rows: dict[str, list[Any]] = {}
    for event in capture.events:
        kind = event[KIND]
        if kind not in (EventKind.SPAN, EventKind.SPAN_START, EventKind.SPAN_END):
            continue
        table, row = build(event)
        assert table == SPANS
        if kind == EventKind.SPAN_START:
            open_rows[row[3]] = list(row)
        elif kind == EventKind.SPAN_END:
            start = open_rows.pop(row[3])
            for i in _END_FIELDS:
                start[i] = row[i]
            rows.append(tuple(start))
        else:
            rows.append(row)
    assert not open_rows and all(r[_STATUS] == "ok" for r in rows)
    return rows


async def produce_at_rate(
    svc: ObservabilityService,
    events_per_second: float,
    stop: asyncio.Event,
    *,
    start_index: int = 0,
    tick: float = 0.001,
    on_trace: Callable[[int], None] | None = None,
) -> int:
    """Record workload traces at ``events_per_second`` until ``stop`` is set; returns traces.

    Every ``tick`` it records the traces that are due, so the load arrives in small bursts as
    requests would; after a stall it catches up, as a queue of waiting requests would.
    """
    begun = time.monotonic()
    done = 0
    while not stop.is_set():
        due = int((time.monotonic() - begun) * events_per_second / EVENTS_PER_TRACE)
        while done < due:
            await trace_async(svc, start_index + done)
            done += 1
            if on_trace is not None:
                on_trace(done)
        await asyncio.sleep(tick)
    return done
