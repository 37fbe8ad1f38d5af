"""``python -m benchmarks.versus REV``: per-stage CPU of this checkout against git revision REV.

Extracts ``tracewriter/`` at REV into a temporary directory, renamed to the package
``tw_old`` so both versions load into one process, and times each stage of the writer's work
on the same workload with thread CPU time (best of several runs). Interleaving the two in one
process, and counting CPU rather than wall-clock time, keeps a shared machine's load from
deciding the comparison. No database is needed. The stages: recording calls (an unstarted
writer only buffers), ``build()`` per event kind, assembling the workload's events (the
flusher's building step, coalescing included) and the metric roll-up per row.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import re
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks._common import ROOT, quiet_logging, say
from benchmarks._workload import LLM_ARGS, default_metadata, trace_sync

_NEVER = "postgresql://bench@localhost/never_connected"


def _extract(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", rev, "tracewriter"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    package = into / "tracewriter"
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\btracewriter\b(?=[.\s])", "tw_old", text))
    package.rename(into / "tw_old")


def _cpu(fn: Callable[[], object], per: int, repeat: int = 9) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat, timer=time.thread_time)) / per * 1e6


def _events(pkg: ModuleType, traces: int) -> list[Any]:
    class Capture(pkg.Provider):  # type: ignore[name-defined,misc]
        name = "capture"

        def __init__(self) -> None:
            self.events: list[Any] = []

        def record(self, event: Any) -> None:
            self.events.append(event)

    capture = Capture()
    svc = pkg.ObservabilityService(providers=[capture])
    for i in range(traces):
        trace_sync(svc, i)
    return capture.events


def _assemble(pkg_name: str, events: list[Any]) -> Callable[[], None]:
    """The flusher's building step over ``events`` (an in-memory sink, nothing written)."""
    flusher_mod = importlib.import_module(f"{pkg_name}._flusher")
    buffer_mod = importlib.import_module(f"{pkg_name}._buffer")
    testing = importlib.import_module(f"{pkg_name}.testing")

    def run() -> None:
        buffer = buffer_mod.Buffer(max_rows=10**8, batch_rows=10**8)
        flusher = flusher_mod.Flusher(buffer, testing.InMemorySink(), flusher_mod.FlusherSettings())
        for event in events:
            buffer.put(event)
        asyncio.run(flusher._build(force=False))

    return run


def _recording(pkg: ModuleType) -> dict[str, Callable[[], None]]:
    svc = pkg.ObservabilityService(_NEVER, max_buffer_rows=10**8)
    ctx = svc.start_trace("chat.request", user_id="user-0001", session_id="s-1", kb_id="kb-01")
    meta = default_metadata(1)
    buffer = svc.postgres._buffer

    def llm() -> None:
        svc.log_llm_call(ctx, **LLM_ARGS, metadata=meta)

    def span() -> None:
        with svc.span(ctx, "retrieve", "retrieval", meta):
            pass

    def trace() -> None:
        c = svc.start_trace("chat.request", user_id="user-0001", kb_id="kb-01", metadata=meta)
        svc.end_trace(c)

    def orphan_llm() -> None:
        svc.log_llm_call(None, **LLM_ARGS, metadata=meta)

    calls = {"log_llm_call": llm, "span() enter+exit": span, "start+end trace": trace}
    calls["log_llm_call outside a trace"] = orphan_llm

    def cleared(fn: Callable[[], None]) -> Callable[[], None]:
        # A cleared buffer for each run: memory is reused, as in a service's steady state.
        def run() -> None:
            buffer._items.clear()
            for _ in range(2000):
                fn()

        return run

    return {name: cleared(fn) for name, fn in calls.items()}


def _roll_up(module: ModuleType, table: str, rows: list[Any]) -> None:
    """Roll ``rows`` up as the flusher does: 256-row slices, then whatever folding is left
    (versions that fold as they add have no ``fold``)."""
    rollup = module.Rollup()
    for i in range(0, len(rows), 256):
        rollup.add_rows(table, rows[i : i + 256])
    fold = getattr(rollup, "fold", None)
    while fold is not None and fold(1024):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versus", description=__doc__)
    parser.add_argument("rev", help="the git revision to compare against (say 9473328)")
    parser.add_argument("--traces", type=int, default=2000)
    args = parser.parse_args(argv)
    quiet_logging()
    import tracewriter  # noqa: PLC0415
    from tracewriter import _rollup  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        _extract(args.rev, Path(tmp))
        sys.path.insert(0, tmp)
        old = importlib.import_module("tw_old")
        old_records = importlib.import_module("tw_old._records")
        old_rollup = importlib.import_module("tw_old._rollup")
        new_records = importlib.import_module("tracewriter._records")

        say(f"thread CPU per call, event or row; {args.rev} against this checkout; best of 9")
        say(f"  {'stage':44} {'before':>9} {'after':>9}")

        def line(what: str, before: float, after: float) -> None:
            say(f"  {what:44} {before:7.2f} µs {after:7.2f} µs")

        old_calls, new_calls = _recording(old), _recording(tracewriter)
        for name in new_calls:
            line(f"recording: {name}", _cpu(old_calls[name], 2000), _cpu(new_calls[name], 2000))

        old_events = _events(old, args.traces)
        new_events = _events(tracewriter, args.traces)
        line(
            "assembling the mix, per event",
            _cpu(_assemble("tw_old", old_events), len(old_events), 5),
            _cpu(_assemble("tracewriter", new_events), len(new_events), 5),
        )
        old_by: dict[str, list[Any]] = collections.defaultdict(list)
        new_by: dict[str, list[Any]] = collections.defaultdict(list)
        for event in old_events:
            old_by[event[0]].append(event)
        for event in new_events:
            new_by[event[0]].append(event)
        for kind, group in new_by.items():
            line(
                f"build() per {kind} event",
                _cpu(lambda g=old_by[kind]: [old_records.build(e) for e in g], len(group)),
                _cpu(lambda g=group: [new_records.build(e) for e in g], len(group)),
            )
        for table, kind in (("spans", "span"), ("traces", "trace_end")):
            old_rows = [old_records.build(e)[1] for e in old_by[kind]]
            new_rows = [new_records.build(e)[1] for e in new_by[kind]]
            line(
                f"roll-up per {table} row",
                _cpu(lambda r=old_rows, t=table: _roll_up(old_rollup, t, r), len(old_rows)),
                _cpu(lambda r=new_rows, t=table: _roll_up(_rollup, t, r), len(new_rows)),
            )


if __name__ == "__main__":
    main()
