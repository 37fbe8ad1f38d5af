"""What the storage policy (issue 14) adds per event in the writer's background path.

Times :meth:`tracewriter._policy.Policy.prepare` (redaction and content capture) and the
per-row sampling decision on the events of the benchmark workload, each beside the cost of
building the same event's row (``_records.build``), which the writer pays anyway: the ratio is
what survives a noisy machine. CPU only, no database. Run: ``python -m benchmarks.policy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks._workload import LLM_ARGS, default_metadata
from tracewriter._ids import new_span_id, new_trace_id
from tracewriter._policy import Policy
from tracewriter._records import Event, EventKind, build, snapshot_metadata

N = 20_000
REPEAT = 5


def _llm(i: int, metadata: dict[str, Any]) -> tuple[Any, ...]:
    now = time.time_ns()
    return (
        Event(
            kind=EventKind.SPAN, start_ns=now, end_ns=now + 1, trace_id=new_trace_id(),
            span_id=new_span_id(), parent_span_id=None, name="llm.call", span_type="llm",
            status="ok", duration_ms=LLM_ARGS["duration_ms"], error_type=None,
            error_message=None, user_id="u1", session_id="s1", kb_id="kb1",
            metadata=snapshot_metadata(metadata),
            detail=(LLM_ARGS["model"], LLM_ARGS["provider"], 812, 95, None, None),
        ).flat()
    )  # fmt: skip


def _chat(i: int, content: str) -> tuple[Any, ...]:
    now = time.time_ns()
    return (
        Event(
            kind=EventKind.CHAT, start_ns=now, end_ns=None, trace_id=new_trace_id(),
            span_id=new_span_id(), parent_span_id=None, name=None, span_type=None, status=None,
            duration_ms=None, error_type=None, error_message=None, user_id="u1",
            session_id="s1", kb_id="kb1", metadata=snapshot_metadata({"turn": i}),
            detail=("user", content, 120),
        ).flat()
    )  # fmt: skip


QUESTION = (
    "What does our refund policy say about annual plans cancelled in the first month, and "
    "does it differ for customers billed through the app store? Please cite the section. "
) * 3  # ~510 characters, a long user turn


def _per_call(fn: Callable[[tuple[Any, ...]], object], events: list[tuple[Any, ...]]) -> float:
    best = float("inf")
    for _ in range(REPEAT):
        started = time.perf_counter()
        for e in events:
            fn(e)
        best = min(best, time.perf_counter() - started)
    return best / len(events) * 1e6


def main() -> None:
    """Print µs per event for each policy setting beside the row build it precedes."""
    workloads = {
        "LLM call, default metadata (142 B)": [_llm(i, default_metadata(i)) for i in range(N)],
        "LLM call, metadata holding an API key": [
            _llm(i, {**default_metadata(i), "auth": f"sk-proj-{i:030d}"}) for i in range(N)
        ],
        "chat message, 510 chars": [_chat(i, QUESTION) for i in range(N)],
    }
    policies = {
        "redact=default": Policy(),
        "redact=all": Policy(redact="all"),
        "redact=all, capture=none": Policy(redact="all", capture_content="none"),
    }
    print(f"{'event':40} {'setting':28} {'µs/event':>9} {'build µs':>9} {'ratio':>6}")
    for label, events in workloads.items():
        building = _per_call(build, events)
        for name, policy in policies.items():
            cost = _per_call(policy.prepare, events)
            print(f"{label:40} {name:28} {cost:9.2f} {building:9.2f} {cost / building:6.2f}")
    sampler = Policy(sample_rate=0.1)
    rows = [build(e) for e in workloads["LLM call, default metadata (142 B)"]]
    started = time.perf_counter()
    for table, row in rows:
        sampler.keeps_row(table, row)
    decide = (time.perf_counter() - started) / len(rows) * 1e6
    print(f"{'sampling decision per row (rate 0.1)':69} {decide:9.2f}")


if __name__ == "__main__":
    main()
