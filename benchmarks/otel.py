"""The span processor's cost per span, against the OpenTelemetry SDK's own BatchSpanProcessor.

    python -m benchmarks.otel [--spans 20000] [--rounds 5]

Prints, from one run on one machine:

1. ``on_end`` alone, per span, timed as the SDK calls it (the span that just ended is hot in
   cache, as in an application), less the timer's own cost: the SDK's BatchSpanProcessor
   (no-op exporter: its on_end is a deque append) against TracewriterSpanProcessor (which maps
   the span and hands it to a service whose PostgreSQL writer buffers it). An LLM child span
   (eight GenAI attributes, one event) and a root span (which also gives its trace row).
2. A whole SDK span (start, eight attributes, one event, end), per span, in wall-clock and in
   process CPU time (every thread: the BatchSpanProcessor's worker does its exporting on another
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
    SpanExporter,
    SpanExportResult,
)
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


class Timed(SpanProcessor):
    """Times ``inner.on_end`` as the SDK calls it, with the span that just ended hot in cache."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.ns = 0
        self.calls = 0

    def on_end(self, span: ReadableSpan) -> None:
        start = time.perf_counter_ns()
        self.inner.on_end(span)
        self.ns += time.perf_counter_ns() - start
        self.calls += 1

    def shutdown(self) -> None:
        self.inner.shutdown()


def _spans(provider: TracerProvider, count: int, *, roots: bool) -> None:
    """``count`` LLM spans (eight GenAI attributes, one event), children of one request span
    or each its own trace's root."""
    tracer = provider.get_tracer("bench")
    with _nothing() if roots else tracer.start_as_current_span("request"):
        for _ in range(count):
            with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as span:
                span.set_attributes(LLM_ATTRIBUTES)
                span.add_event("gen_ai.choice", {"index": 0})


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _on_end(inner: SpanProcessor, count: int, *, roots: bool) -> float:
    """µs per ``on_end`` call of ``inner``, as the SDK calls it."""
    provider = TracerProvider()
    timed = Timed(inner)
    provider.add_span_processor(timed)
    _spans(provider, count, roots=roots)
    provider.shutdown()
    return timed.ns / timed.calls / 1000


def _whole_span(
    processor_factory: Callable[[], SpanProcessor | None], count: int
) -> tuple[float, float]:
    """µs per span (wall, process CPU) for ``count`` SDK spans, the processor's drain included."""
    provider = TracerProvider()
    processor = processor_factory()
    if processor is not None:
        provider.add_span_processor(processor)
    wall, cpu = time.perf_counter(), time.process_time()
    _spans(provider, count, roots=False)
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

    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, roots in (("LLM child span", False), ("root span", True)):
            # The timer's own cost, measured around a processor that does nothing.
            floor = _on_end(SpanProcessor(), n, roots=roots)
            bsp = BatchSpanProcessor(NoopExporter(), max_queue_size=2 * n)
            results.setdefault(f"{label}: BatchSpanProcessor", []).append(
                _on_end(bsp, n, roots=roots) - floor
            )
            ours = TracewriterSpanProcessor(_service())
            results.setdefault(f"{label}: TracewriterSpanProcessor", []).append(
                _on_end(ours, n, roots=roots) - floor
            )
            assert ours.recorded == n + (not roots) and ours.failed == 0
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
        base = statistics.median(results[f"{label}: BatchSpanProcessor"])
        for who in ("BatchSpanProcessor", "TracewriterSpanProcessor"):
            value = statistics.median(results[f"{label}: {who}"])
            print(f"| {label}: {who} | {value:.2f} | {value / base:.2f} |")
    print()
    print("| whole SDK span (8 attributes, 1 event) | wall µs | CPU µs, all threads | CPU × BSP |")
    print("|---|---:|---:|---:|")
    base_cpu = statistics.median(c for _, c in whole["BatchSpanProcessor, no-op exporter"])
    for label, samples in whole.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {cpu / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
