"""The span processor's cost per span, against the OpenTelemetry SDK's own BatchSpanProcessor.

    python -m benchmarks.otel [--spans 20000] [--rounds 5]

Prints, from one run on one machine:

1. ``on_end`` alone, per span, over the same pre-ended spans: the SDK's BatchSpanProcessor
   (no-op exporter: its on_end is a deque append) against TracewriterSpanProcessor (which maps
   the span and hands it to a service whose PostgreSQL writer buffers it). An LLM child span
   (eight GenAI attributes, one event) and a root span (which also gives its trace row).
2. A whole SDK span (start, eight attributes, end), per span, in wall-clock and in process
   CPU time (every thread: the BatchSpanProcessor's worker does its exporting on another
   thread, under the same GIL): no processor (the floor), BatchSpanProcessor with a no-op
   exporter, BatchSpanProcessor with the SDK's OTLP protobuf encoding (what the OTLP exporter
   does to every span before it POSTs it; needs ``opentelemetry-exporter-otlp-proto-common``,
   in the ``bench`` extra), and TracewriterSpanProcessor.

Each figure is the median of ``rounds`` interleaved rounds, with its ratio to the BSP figure.
Our processor's figures stop at the buffer: building rows and COPY happen later on the
flusher, and are what benchmarks/hotpath.py and benchmarks/throughput.py measure.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tracewriter import ObservabilityService, PostgresProvider, WriterConfig
from tracewriter.otel import TracewriterSpanProcessor
from tracewriter.testing import InMemorySink

LLM_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.provider.name": "openai",
    "gen_ai.usage.input_tokens": 812,
    "gen_ai.usage.output_tokens": 95,
    "gen_ai.response.finish_reasons": ("stop",),
    "server.address": "api.openai.com",
}


class NoopExporter(SpanExporter):
    """Takes every batch and does nothing: the BatchSpanProcessor's own cost alone."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class EncodingExporter(SpanExporter):
    """Encodes every batch as OTLP protobuf, as the OTLP exporters do, and sends nothing."""

    def __init__(self) -> None:
        # Imported here: the bench extra brings it, and the rest of this module runs without.
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import (  # noqa: PLC0415
            encode_spans,
        )

        self._encode = encode_spans
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(self._encode(spans).SerializeToString())
        return SpanExportResult.SUCCESS


def _service() -> ObservabilityService:
    # A real PostgreSQL writer over the in-memory sink, never started: events stop in its
    # buffer, which is exactly where on_end's work ends. Big enough never to drop.
    writer = PostgresProvider(WriterConfig(max_buffer_rows=10**8), sink=InMemorySink())
    return ObservabilityService(providers=[writer])


def _ended_spans(count: int, *, child: bool) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    with tracer.start_as_current_span("request") if child else _nothing():
        for _ in range(count):
            with tracer.start_as_current_span(
                "chat gpt-4o", kind=SpanKind.CLIENT, attributes=LLM_ATTRIBUTES
            ) as span:
                span.add_event("gen_ai.choice", {"index": 0})
    return [s for s in memory.get_finished_spans() if s.name != "request"]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _time_on_end(processor: SpanProcessor, spans: list[ReadableSpan]) -> float:
    on_end = processor.on_end
    start = time.perf_counter()
    for span in spans:
        on_end(span)
    return (time.perf_counter() - start) / len(spans) * 1e6


def _whole_span(
    processor_factory: Callable[[], SpanProcessor | None], count: int
) -> tuple[float, float]:
    """µs per span (wall, process CPU) for ``count`` SDK spans, the processor's drain included."""
    provider = TracerProvider()
    processor = processor_factory()
    if processor is not None:
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")
    wall, cpu = time.perf_counter(), time.process_time()
    with tracer.start_as_current_span("request"):
        for _ in range(count):
            with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as span:
                span.set_attributes(LLM_ATTRIBUTES)
    provider.shutdown()  # the BatchSpanProcessor exports what it still holds
    return (
        (time.perf_counter() - wall) / count * 1e6,
        (time.process_time() - cpu) / count * 1e6,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    n, rounds = args.spans, args.rounds

    children = _ended_spans(n, child=True)
    roots = _ended_spans(n, child=False)
    gc.collect()
    gc.freeze()  # the pre-built spans are not what a collection should be walking

    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, spans in (("LLM child span", children), ("root span", roots)):
            bsp = BatchSpanProcessor(
                NoopExporter(), max_queue_size=2 * n, schedule_delay_millis=60_000
            )
            results.setdefault(f"on_end, {label}: BatchSpanProcessor", []).append(
                _time_on_end(bsp, spans)
            )
            bsp.shutdown()
            ours = TracewriterSpanProcessor(_service())
            results.setdefault(f"on_end, {label}: TracewriterSpanProcessor", []).append(
                _time_on_end(ours, spans)
            )
            assert ours.recorded == n and ours.failed == 0
            gc.collect()

    factories: dict[str, Callable[[], SpanProcessor | None]] = {
        "no processor (floor)": lambda: None,
        # A queue that holds the whole run: a dropped span would flatter the SDK.
        "BatchSpanProcessor, no-op exporter": lambda: BatchSpanProcessor(
            NoopExporter(), max_queue_size=2 * n
        ),
        "BatchSpanProcessor, OTLP protobuf encoding": lambda: BatchSpanProcessor(
            EncodingExporter(), max_queue_size=2 * n
        ),
        "TracewriterSpanProcessor": lambda: TracewriterSpanProcessor(_service()),
    }
    try:
        EncodingExporter()
    except ImportError:
        del factories["BatchSpanProcessor, OTLP protobuf encoding"]
        print("(opentelemetry-exporter-otlp-proto-common not installed: no encoding figure)")
    whole: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for label, factory in factories.items():
            whole.setdefault(label, []).append(_whole_span(factory, n))
            gc.collect()

    print(f"# tracewriter span processor vs BatchSpanProcessor — {n} spans × {rounds} rounds")
    print(f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}")
    print()
    print("| on_end alone | µs per span (median) | × BatchSpanProcessor |")
    print("|---|---:|---:|")
    for label in ("LLM child span", "root span"):
        base = statistics.median(results[f"on_end, {label}: BatchSpanProcessor"])
        for who in ("BatchSpanProcessor", "TracewriterSpanProcessor"):
            value = statistics.median(results[f"on_end, {label}: {who}"])
            print(f"| {label}: {who} | {value:.2f} | {value / base:.2f} |")
    print()
    print(
        "| whole SDK span (start, 8 attributes, end) | wall µs | CPU µs, all threads | CPU × BSP |"
    )
    print("|---|---:|---:|---:|")
    base_cpu = statistics.median(c for _, c in whole["BatchSpanProcessor, no-op exporter"])
    for label, samples in whole.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {cpu / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
