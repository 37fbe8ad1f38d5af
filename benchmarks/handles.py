"""Issue 17: what a span handle costs, against ``span()`` enter+exit on the same machine and run.

Run alone with ``python -m benchmarks.handles [--rounds N] [--inner N]``; ``run(report, ...)``
adds the same figures to a :class:`~benchmarks._common.Report` for ``benchmarks.run``.

Each round times ``inner`` calls of every variant back to back, in a rotating order, so a noisy
neighbour slows them alike; the figure is the median over rounds of the per-call time. As in
``bench_hotpath``, the writer is never started and each round records into a fresh service
(the calls only append to its buffer, which is all they ever do, and it never fills).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from benchmarks._common import Figure, Report, ratio, verdict
from benchmarks._workload import LLM_ARGS, default_metadata
from tracewriter import ObservabilityService, TraceContext

DSN = "postgresql://bench@localhost/never_connected"  # never connected: an unstarted writer
META = default_metadata(1)
MODEL, PROVIDER = LLM_ARGS["model"], LLM_ARGS["provider"]
IN_TOK, OUT_TOK = LLM_ARGS["input_tokens"], LLM_ARGS["output_tokens"]

Variant = Callable[[ObservabilityService, TraceContext, int], None]


def _floor(svc: ObservabilityService, ctx: TraceContext, n: int) -> None:
    q: deque[Any] = deque()
    append = q.append
    for _ in range(n):  # two event-sized tuples, as a start and an end are
        append(("span_start", 0, None, ctx.trace_id, "8278f834bdb9c768", None, "retrieve",
                "retrieval", None, None, None, None, "u", "s", "kb", None, None))  # fmt: skip
        append(("span_end", 0, 0, ctx.trace_id, "8278f834bdb9c768", None, "retrieve",
                "retrieval", "ok", 1.0, None, None, "u", "s", "kb", None, None))  # fmt: skip


def _span_block(svc: ObservabilityService, ctx: TraceContext, n: int) -> None:
    span = svc.span
    for _ in range(n):
        with span(ctx, "retrieve", "retrieval", META):
            pass


def _span_block_facts(svc: ObservabilityService, ctx: TraceContext, n: int) -> None:
    span = svc.span
    for _ in range(n):
        scope = span(ctx, "llm.stream", "llm", META)
        with scope:
            scope.set(model=MODEL, provider=PROVIDER, input_tokens=IN_TOK, output_tokens=OUT_TOK)


def _handle(svc: ObservabilityService, ctx: TraceContext, n: int) -> None:
    start_span = svc.start_span
    for _ in range(n):
        start_span(ctx, "retrieve", "retrieval", META).end()


def _handle_facts(svc: ObservabilityService, ctx: TraceContext, n: int) -> None:
    start_span = svc.start_span
    for _ in range(n):
        start_span(ctx, "llm.stream", "llm", META).end(
            model=MODEL, provider=PROVIDER, input_tokens=IN_TOK, output_tokens=OUT_TOK
        )


VARIANTS: dict[str, tuple[str, Variant]] = {
    "floor": ("Floor: two deque.append of event-sized tuples", _floor),
    "span": ("span() enter+exit, with (2 events)", _span_block),
    "span_facts": ("span() enter+exit + scope.set(model, provider, 2 tokens)", _span_block_facts),
    "handle": ("start_span() + handle.end() (2 events)", _handle),
    "handle_facts": ("start_span() + handle.end(model, provider, 2 tokens)", _handle_facts),
}


def measure(rounds: int, inner: int) -> dict[str, list[float]]:
    """µs per call of each variant, one sample per round of ``inner`` calls."""
    samples: dict[str, list[float]] = {k: [] for k in VARIANTS}
    names = list(VARIANTS)
    for r in range(rounds + 2):  # two warm-up rounds, not kept
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            svc = ObservabilityService(DSN, max_buffer_rows=max(4 * inner, 10_000))
            ctx = svc.start_trace("chat.request", user_id="u-1", session_id="s-1", kb_id="kb-1")
            fn = VARIANTS[name][1]
            t0 = time.perf_counter_ns()
            fn(svc, ctx, inner)
            elapsed = time.perf_counter_ns() - t0
            if r >= 2:
                samples[name].append(elapsed / inner / 1000.0)
    return samples


def run(report: Report, *, rounds: int, inner: int) -> None:
    """Add the handle figures (µs per call, ratios to the floor and to span())."""
    section = "Span handles (µs per start+end, median)"
    samples = measure(rounds, inner)
    per_call = {k: statistics.median(v) for k, v in samples.items()}
    report.details["handles"] = {
        "per_call_us": per_call,
        "min_us": {k: min(v) for k, v in samples.items()},
        "rounds": rounds,
        "inner": inner,
    }
    floor, span = per_call["floor"], per_call["span"]
    for key, (label, _) in VARIANTS.items():
        report.add(Figure(f"handles_{key}", section, label, per_call[key], "µs",
                          ratio(per_call[key], floor), "floor"))  # fmt: skip
    for key in ("handle", "handle_facts"):
        r = ratio(per_call[key], span)
        report.add(
            Figure(
                f"handles_{key}_vs_span",
                section,
                f"{VARIANTS[key][1].__name__.strip('_')} / span() enter+exit",
                r,
                "×",
                target="≤ 1 ×",
                status=verdict(r <= 1.0 if r is not None else None),
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--inner", type=int, default=2000)
    args = parser.parse_args()
    samples = measure(args.rounds, args.inner)
    print(
        f"{args.rounds} rounds × {args.inner} calls; µs per call (median, min), ratios of medians"
    )
    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    for key, (label, _) in VARIANTS.items():
        print(f"  {label:<58} {med[key]:7.3f} {low[key]:7.3f} µs  "
              f"{med[key] / med['floor']:5.1f} × floor  {med[key] / med['span']:5.2f} × span()"
              f"  (min: {low[key] / low['span']:5.2f} × span())")  # fmt: skip


if __name__ == "__main__":
    main()
