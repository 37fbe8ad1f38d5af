"""``python -m benchmarks.profile {costs,e2e,lag}``: where the writer's time goes.

The evidence behind RESULTS.md's analysis of missed targets, reproducible on any machine:

- ``costs``: CPU per event of each stage a recorded event goes through on the writer — the
  recording call, building the row, coalescing, the metric roll-up — timed with ``timeit``
  on the workload's events (no database).
- ``e2e``: the end-to-end throughput run under pyinstrument (``pip install pyinstrument``);
  the text profile goes to ``benchmarks/results/profile-e2e.txt``.
- ``lag``: the loop-lag run at 20,000 events/s with every event-loop step longer than 2 ms
  attributed to the coroutine it ran (where it suspended next), and every GC pause noted.
- ``encode``: asyncpg's client CPU per value of each column of the simple path's span rows
  (priced ``log_llm_call`` rows), each column sent alone by binary COPY into a table of that
  column's type, beside the whole row: what the COPY encoding of a row is made of; then the
  timestamp and the whole row again on a connection with the writer pool's codec
  (``tracewriter._codecs``).

``e2e``, ``lag`` and ``encode`` use ``TRACEWRITER_DSN`` or start an embedded server, in a throwaway
database.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks._common import RESULTS_DIR, quiet_logging, say


@contextmanager
def _database() -> Iterator[str]:
    from benchmarks._common import create_database, drop_database  # noqa: PLC0415
    from tracewriter.embedded import EmbeddedPostgres  # noqa: PLC0415

    server = os.environ.pop("TRACEWRITER_DSN", None)
    pg = None
    if not server:
        pg = EmbeddedPostgres().start()
        server = pg.dsn
    name, dsn = create_database(server)
    try:
        yield dsn
    finally:
        drop_database(server, name)
        if pg is not None:
            pg.cleanup()


def _best(fn: Callable[[], object], n: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=7)) / n * 1e6


def costs(traces: int) -> None:
    """CPU µs per event (or row) of each stage, best of 7, on the workload's events."""
    from benchmarks._workload import CaptureProvider, trace_sync  # noqa: PLC0415
    from tracewriter import EventKind, ObservabilityService  # noqa: PLC0415
    from tracewriter._records import KIND, build  # noqa: PLC0415
    from tracewriter._rollup import Rollup  # noqa: PLC0415

    capture = CaptureProvider()
    recorder = ObservabilityService(providers=[capture])
    for i in range(traces):
        trace_sync(recorder, i)
    events = capture.events
    by_kind: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:
        by_kind[event[KIND]].append(event)

    def line(what: str, us: float) -> None:
        say(f"  {what:<58} {us:7.2f} µs")

    def record() -> None:
        fresh = ObservabilityService("postgresql://bench@localhost/never_connected")
        for i in range(traces):
            trace_sync(fresh, i)

    say(f"{len(events):,} events from {traces:,} workload traces; best of 7")
    line("recording: API call + buffer append, per event (mix)", _best(record, len(events)))
    for kind, group in by_kind.items():
        line(f"build() per {kind} event", _best(lambda g=group: [build(e) for e in g], len(group)))
    rows: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:
        if event[KIND] in (EventKind.SPAN, EventKind.SPAN_START, EventKind.TRACE_START):
            table, row = build(event)
            rows[table].append(row)
    for table, table_rows in rows.items():
        # The roll-up skips open rows; give it complete ones, as after coalescing.
        if table == "spans":
            done = [(*r[:7], "ok", 12.5, *r[9:]) for r in table_rows]
        else:
            done = [(*r[:8], "ok", 250.0, *r[10:]) for r in table_rows]

        def rollup(t: str = table, rs: list[Any] = done) -> None:
            r = Rollup()
            r.add_rows(t, rs)
            while r.fold(1024):  # add_rows collects; folding into the cells is the rest
                pass

        line(f"roll-up (add_rows + fold) per {table} row", _best(rollup, len(done)))


async def _e2e(dsn: str, traces: int) -> None:
    from benchmarks.throughput import end_to_end  # noqa: PLC0415

    result = await end_to_end(dsn, traces, {})
    say(
        f"{result['spans']:,} spans in {result['seconds']:.2f} s = "
        f"{result['spans_per_s']:,.0f} spans/s, {result['cpu_us_per_span']:.1f} µs CPU per span"
    )


def e2e(traces: int) -> None:
    try:
        from pyinstrument import Profiler  # noqa: PLC0415
    except ImportError:
        sys.exit("pip install pyinstrument (the bench extra should carry it)")
    with _database() as dsn:
        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        asyncio.run(_e2e(dsn, traces))
        profiler.stop()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / "profile-e2e.txt"
    out.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    say(f"wrote {out}")
    say(profiler.output_text(unicode=True, color=False, show_all=False)[:6000])


def _where(handle: asyncio.Handle) -> str:
    """The task a loop step ran and the chain of awaits it suspended in afterwards."""
    task = getattr(handle._callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return repr(handle._callback)[:80]
    frames: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return f"[{task.get_name()}] " + " > ".join(frames[-4:])


def lag(seconds: float, thread_mode: bool) -> None:
    import asyncio.events as events  # noqa: PLC0415

    from benchmarks.latency import loop_lag  # noqa: PLC0415

    slow: collections.Counter[str] = collections.Counter()
    worst: dict[str, float] = {}
    worst_cpu: dict[str, float] = {}
    # Over all steps longer than 2 ms: wall-clock time, and the loop thread's own CPU in them.
    # What is not CPU is time the thread was off a core (preempted, or waiting for the GIL).
    slow_total = [0.0, 0.0]
    original = events.Handle._run

    def timed(handle: asyncio.Handle) -> None:
        began = time.perf_counter()
        cpu0 = time.thread_time()
        original(handle)
        took = (time.perf_counter() - began) * 1000
        if took > 2.0:
            cpu = (time.thread_time() - cpu0) * 1000
            key = _where(handle)
            # Task names carry a counter; group by what ran, not by which task object.
            key = key.split("] ", 1)[-1] if key.startswith("[Task-") else key
            slow[key] += 1
            slow_total[0] += took
            slow_total[1] += cpu
            if took > worst.get(key, 0.0):
                worst[key], worst_cpu[key] = took, cpu

    pauses: list[tuple[int, float]] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append((info["generation"], (time.perf_counter() - started[0]) * 1000))

    # The roll-up runs over a whole written batch in one go: time each call.
    from tracewriter._rollup import Rollup  # noqa: PLC0415

    rollups: list[tuple[int, float]] = []
    add_rows = Rollup.add_rows

    def timed_add_rows(self: Rollup, table: str, rows: Any) -> None:
        rows = list(rows)
        began = time.perf_counter()
        add_rows(self, table, rows)
        rollups.append((len(rows), (time.perf_counter() - began) * 1000))

    with _database() as dsn:
        events.Handle._run = timed  # type: ignore[method-assign]
        Rollup.add_rows = timed_add_rows  # type: ignore[method-assign]
        gc.callbacks.append(on_gc)
        try:
            options = {"thread_mode": True} if thread_mode else {}
            result = asyncio.run(loop_lag(dsn, rate=20_000, seconds=seconds, options=options))
        finally:
            events.Handle._run = original  # type: ignore[method-assign]
            Rollup.add_rows = add_rows  # type: ignore[method-assign]
            gc.callbacks.remove(on_gc)
    say(
        f"ticker lateness p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"max {result['max_ms']:.2f} ms at {result['events_per_s']:,.0f} events/s"
    )
    say(
        f"loop steps over 2 ms: {sum(slow.values())}, {slow_total[0]:.0f} ms in all, of which "
        f"{slow_total[1]:.0f} ms on a CPU; by what ran (where it suspended next):"
    )
    for key, took in sorted(worst.items(), key=lambda kv: -kv[1])[:15]:
        say(f"  max {took:6.1f} ms ({worst_cpu[key]:5.1f} on a CPU)  x{slow[key]:<4d} {key}")
    if rollups:
        rows, ms = max(rollups, key=lambda r: r[1])
        say(
            f"Rollup.add_rows: {len(rollups)} calls, longest {ms:.1f} ms for {rows:,} rows, "
            f"{sum(m for _, m in rollups) * 1000 / max(sum(n for n, _ in rollups), 1):.1f} µs "
            "per row, all without yielding to the loop"
        )
    by_gen: dict[int, list[float]] = collections.defaultdict(list)
    for generation, ms in pauses:
        by_gen[generation].append(ms)
    for generation, ms_list in sorted(by_gen.items()):
        say(
            f"GC generation {generation}: {len(ms_list)} collections, "
            f"max {max(ms_list):.1f} ms, total {sum(ms_list):.0f} ms"
        )


async def _encode_costs(dsn: str, rows: list[tuple[Any, ...]], repeats: int) -> list[Any]:
    import asyncpg  # noqa: PLC0415

    from tracewriter._pgsink import _use_our_codecs  # noqa: PLC0415
    from tracewriter._schema import SPAN_COLUMNS  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TEMP TABLE whole (LIKE observability.spans)")

        async def cpu_per_value(
            table: str, records: list[tuple[Any, ...]], columns: Any = None
        ) -> float:
            best = float("inf")
            for _ in range(repeats):
                await conn.execute(f"TRUNCATE {table}")
                began = time.process_time()
                await conn.copy_records_to_table(table, records=records, columns=columns)
                best = min(best, time.process_time() - began)
            return best / len(records) * 1e6

        figures: list[tuple[str, str, float]] = []
        for i, column in enumerate(SPAN_COLUMNS):
            table = f"only_{i}"
            await conn.execute(
                f'CREATE TEMP TABLE {table} AS SELECT "{column}" FROM observability.spans LIMIT 0'
            )
            pg_type = await conn.fetchval(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = $1::regclass AND attnum = 1",
                table,
            )
            us = await cpu_per_value(table, [(r[i],) for r in rows])
            figures.append((column, pg_type, us))
        whole = await cpu_per_value("whole", rows, list(SPAN_COLUMNS))
        # The same on a connection as the writer's pool makes them (its timestamptz codec).
        await _use_our_codecs(conn)
        at = SPAN_COLUMNS.index("timestamp")
        writer_timestamp = await cpu_per_value(f"only_{at}", [(r[at],) for r in rows])
        writer_whole = await cpu_per_value("whole", rows, list(SPAN_COLUMNS))
    finally:
        await conn.close()
    return [figures, whole, writer_timestamp, writer_whole]


def encode(calls: int, repeats: int) -> None:
    """Client CPU of binary COPY per value, column by column, for priced LLM span rows."""
    from benchmarks._workload import LLM_ARGS, CaptureProvider, default_metadata  # noqa: PLC0415
    from tracewriter import ObservabilityService  # noqa: PLC0415
    from tracewriter._cost import CostCalculator  # noqa: PLC0415
    from tracewriter._records import KIND, EventKind, priced_builders  # noqa: PLC0415

    capture = CaptureProvider()
    recorder = ObservabilityService(providers=[capture])
    for i in range(calls):
        recorder.log_llm_call(None, **LLM_ARGS, metadata=default_metadata(i))
    _, builders = priced_builders(CostCalculator())
    assert builders is not None
    build_span = builders[EventKind.SPAN][1]
    rows = [build_span(e) for e in capture.events if e[KIND] == EventKind.SPAN]
    with _database() as dsn:
        figures, whole, writer_timestamp, writer_whole = asyncio.run(
            _encode_costs(dsn, rows, repeats)
        )
    say(f"{len(rows):,} priced LLM span rows; client CPU of binary COPY, best of {repeats}")
    say(f"  {'whole row':<24} {'asyncpg defaults':<28} {whole:6.2f} µs a row")
    say(f"  {'whole row':<24} {'the writer pool codecs':<28} {writer_whole:6.2f} µs a row")
    say(f"  {'timestamp':<24} {'the writer pool codec':<28} {writer_timestamp:6.2f} µs a value")
    for column, pg_type, us in sorted(figures, key=lambda f: -f[2]):
        say(f"  {column:<24} {pg_type:<28} {us:6.2f} µs a value (a table of it alone)")
    say(
        f"  sum of the columns alone: {sum(f[2] for f in figures):.2f} µs (each alone also "
        "pays a row's framing)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("costs", help="CPU per event of each writer stage")
    p.add_argument("--traces", type=int, default=5_000)
    p = sub.add_parser("e2e", help="pyinstrument profile of the end-to-end run")
    p.add_argument("--traces", type=int, default=25_000)
    p = sub.add_parser("lag", help="what stalls the loop at 20,000 events/s")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--thread-mode", action="store_true")
    p = sub.add_parser("encode", help="asyncpg's COPY encoding CPU, column by column")
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    quiet_logging()
    if args.what == "costs":
        costs(args.traces)
    elif args.what == "e2e":
        e2e(args.traces)
    elif args.what == "encode":
        encode(args.calls, args.repeats)
    else:
        lag(args.seconds, args.thread_mode)


if __name__ == "__main__":
    main()
