"""The writer's own cost (issue 11): objects the collector tracks, and CPU per row vs the ceiling.

Owns three measurements, each through the public API only, so the same code measures any
version of the writer:

- **GC-tracked objects per held event**: growth of ``len(gc.get_objects())`` (after two
  ``gc.collect()``, see ``_settle``) per event waiting in the buffer of an unstarted writer,
  and per event held for a retry while the sink is down (an in-memory sink switched off,
  after one failed flush has built them into rows).
- **End to end against the COPY ceiling of the very same rows**, for the simple path
  (``log_llm_call`` only) and for the realistic mix (the workload's traces): the writer's run
  is timed from the first recording call until ``flush()`` returns; then the rows it wrote are
  read back, the tables emptied, and those rows written again by raw binary COPY over two
  connections (the ceiling). Application CPU (``time.process_time``, every thread) is taken per
  row for both, and so is the CPU the rest of the machine spent meanwhile (Linux: busy time
  from ``/proc/stat`` less the application's) — on a machine PostgreSQL shares, its backends.
  That second figure says what bounds the rate: PostgreSQL and the application share the
  cores, so when both runs keep every core busy the writer's rate relative to the ceiling's
  is the ratio of their total CPU per row: (ceiling's server + client CPU) / (writer's server
  + application CPU).
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks._common import Figure, Report, percentile, reset, say, verdict
from benchmarks._table import print_table
from benchmarks._workload import LLM_ARGS, default_metadata, trace_async, trace_sync
from tracewriter import ObservabilityService, PostgresProvider, WriterConfig
from tracewriter._schema import COLUMNS
from tracewriter.testing import InMemorySink

_NEVER = "postgresql://bench@localhost/never_connected"
SECTION_GC = "Objects the cycle collector tracks, per held event"
SECTION_E2E = "End to end against the COPY ceiling of the same rows"


# --- objects tracked by the collector ----------------------------------------------------------


def _settle() -> None:
    # Two collections: a tuple nested in a tuple (an event's detail) is untracked by the first,
    # its container by the second — as every object is by the time it reaches the oldest
    # generation, the one whose collections are the long pauses.
    gc.collect()
    gc.collect()


def _tracked_growth(n: int, record: Callable[[int], None]) -> float:
    _settle()
    before = len(gc.get_objects())
    for i in range(n):
        record(i)
    _settle()
    return (len(gc.get_objects()) - before) / n


def gc_in_buffer(n: int) -> dict[str, float]:
    """Tracked objects per event waiting in the buffer: LLM calls, spans, the workload mix."""
    out: dict[str, float] = {}
    svc = ObservabilityService(_NEVER, max_buffer_rows=n * 10 + 10)
    ctx = svc.start_trace("chat.request", user_id="user-0001", session_id="s-1", kb_id="kb-01")
    out["log_llm_call"] = _tracked_growth(
        n, lambda i: svc.log_llm_call(ctx, **LLM_ARGS, metadata=default_metadata(i))
    )

    def span(i: int) -> None:
        with svc.span(ctx, "retrieve", "retrieval", {"top_k": 8, "query": f"q{i}"}):
            pass

    out["span"] = _tracked_growth(n, span) / 2
    mix = ObservabilityService(_NEVER, max_buffer_rows=n * 10 + 10)
    traces = max(n // 9, 1)
    out["mix"] = _tracked_growth(traces, lambda i: trace_sync(mix, i)) / 9
    return out


async def gc_in_outage(n: int) -> float:
    """Tracked objects per event held for a retry: built into rows, the sink unavailable."""
    sink = InMemorySink()
    provider = PostgresProvider(
        WriterConfig(
            max_buffer_rows=n * 10 + 10,
            flush_interval=3600.0,
            open_row_grace=3600.0,
            retry_initial_backoff=3600.0,
            retry_max_backoff=3600.0,
        ),
        sink=sink,
    )
    svc = ObservabilityService(providers=[provider])
    await svc.start()
    try:
        sink.available = False
        traces = max(n // 9, 1)
        _settle()
        before = len(gc.get_objects())
        for i in range(traces):
            await trace_async(svc, i)
        await svc.flush(timeout=0.5)  # fails: every event is now a row waiting for a retry
        stats = provider.stats()
        assert stats.buffered == 0 and stats.in_flight == traces * 9, stats
        _settle()
        growth = (len(gc.get_objects()) - before) / (traces * 9)
    finally:
        sink.available = True
        await svc.close(timeout=30.0)
    return growth


def run_gc(report: Report, n: int) -> None:
    target = "≤ 0.01"
    say(f"  GC-tracked objects, {n:,} events ...")
    buffered = gc_in_buffer(n)
    labels = {
        "log_llm_call": "in the buffer: log_llm_call (142-byte metadata)",
        "span": "in the buffer: span() start and end events (with metadata)",
        "mix": "in the buffer: workload mix (traces, spans, LLM calls)",
    }
    for key, value in buffered.items():
        report.add(
            Figure(
                f"gc_buffer_{key}",
                SECTION_GC,
                labels[key],
                value,
                "objects",
                target=target,
                status=verdict(value <= 0.01),
            )
        )
    outage = asyncio.run(gc_in_outage(n))
    report.add(
        Figure(
            "gc_outage",
            SECTION_GC,
            "held for a retry while the sink is down (workload mix, built into rows)",
            outage,
            "objects",
            target=target,
            status=verdict(outage <= 0.01),
        )
    )


# --- end to end against the ceiling of the same rows --------------------------------------------


async def _drive(
    dsn: str, n: int, step: Callable[[ObservabilityService, int], Awaitable[None] | None]
) -> dict[str, Any]:
    """Record ``n`` units through a default writer; CPU and wall clock until flush() returns."""
    await reset(dsn)
    svc = ObservabilityService(dsn)
    await svc.start()
    high_water = svc.config.max_buffer_rows // 2
    try:
        gc.collect()
        busy0 = _machine_busy()
        cpu0 = time.process_time()
        began = time.perf_counter()
        for i in range(n):
            pending = step(svc, i)
            if pending is not None:
                await pending
            if i % 10 == 9:
                await asyncio.sleep(0)  # as a request handler awaiting I/O would
            if i % 250 == 249:
                # Hold back while the buffer is over half full: this measures the rate the
                # writer sustains, not how fast the app can fill a buffer. Checked every 250
                # calls: stats() is not free, and its cost is the harness's, not the writer's.
                stats = svc.stats()
                assert stats is not None
                while stats.buffered + stats.in_flight > high_water:
                    await asyncio.sleep(0.001)
                    stats = svc.stats()
                    assert stats is not None
        flushed = await svc.flush(timeout=300)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu0
        others = _others(busy0, cpu)
        stats = svc.stats()
    finally:
        await svc.close()
    assert stats is not None
    return {
        "seconds": elapsed,
        "cpu": cpu,
        "others": others,
        "flushed": flushed,
        "balances": stats.balances(),
    }


async def _read_rows(dsn: str, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            cols = ", ".join(f'"{c}"' for c in COLUMNS[table])
            records = await conn.fetch(f"SELECT {cols} FROM observability.{table}")
            # The writer hands asyncpg ids as text: keep the ceiling's rows the same shape.
            out[table] = [(str(r[0]), *tuple(r)[1:]) for r in records]
        return out
    finally:
        await conn.close()


async def _ceiling(
    dsn: str, rows: dict[str, list[tuple[Any, ...]]], *, batch: int = 10_000
) -> dict[str, float]:
    """The same rows by raw binary COPY in ``batch``-row calls over two connections."""
    await reset(dsn)
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        parts = iter(
            [(t, rs[i : i + batch]) for t, rs in rows.items() for i in range(0, len(rs), batch)]
        )

        async def worker(conn: asyncpg.Connection) -> None:
            for table, part in parts:
                await conn.copy_records_to_table(
                    table, schema_name="observability", columns=COLUMNS[table], records=part
                )

        gc.collect()
        busy0 = _machine_busy()
        cpu0 = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu0
        others = _others(busy0, cpu)
    finally:
        for conn in conns:
            await conn.close()
    return {"seconds": elapsed, "cpu": cpu, "others": others}


def _machine_busy() -> float | None:
    """CPU seconds every core of this machine has spent busy since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq [steal ...]: steal is another guest's time.
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _others(busy0: float | None, cpu: float) -> float | None:
    """CPU the rest of the machine spent since ``busy0``, given the application's ``cpu``."""
    busy1 = _machine_busy()
    return None if busy0 is None or busy1 is None else max(busy1 - busy0 - cpu, 0.0)


def _llm(svc: ObservabilityService, i: int) -> None:
    svc.log_llm_call(None, **LLM_ARGS, metadata=default_metadata(i))


def _per_row(seconds: float | None, rows: int) -> float:
    return float("nan") if seconds is None else seconds / rows * 1e6


async def versus_ceiling(dsn: str, n: int, *, mix: bool, repeats: int = 1) -> dict[str, Any]:
    """The writer and the ceiling of its own rows, ``repeats`` times each; medians."""
    tables = ("spans", "traces") if mix else ("spans",)
    runs: list[dict[str, Any]] = []
    for _ in range(repeats):
        tw = await _drive(dsn, n, trace_async if mix else _llm)  # type: ignore[arg-type]
        rows = await _read_rows(dsn, tables)
        total = sum(len(r) for r in rows.values())
        spans = len(rows["spans"])
        ceiling = await _ceiling(dsn, rows)
        del rows
        runs.append(
            {
                "rows": total,
                "spans": spans,
                "tw_rows_per_s": total / tw["seconds"],
                "ceiling_rows_per_s": total / ceiling["seconds"],
                "tw_cpu_us_per_row": tw["cpu"] / total * 1e6,
                "tw_cpu_us_per_span": tw["cpu"] / spans * 1e6,
                "ceiling_cpu_us_per_row": ceiling["cpu"] / total * 1e6,
                "tw_server_cpu_us_per_row": _per_row(tw["others"], total),
                "ceiling_server_cpu_us_per_row": _per_row(ceiling["others"], total),
                "flushed": tw["flushed"],
                "balances": tw["balances"],
            }
        )
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    result: dict[str, Any] = {k: percentile([r[k] for r in runs], 50) for k in keys}
    result.update(rows=runs[0]["rows"], spans=runs[0]["spans"], runs=runs)
    result["ratio"] = result["tw_rows_per_s"] / result["ceiling_rows_per_s"]
    return result


async def run_e2e(report: Report, dsn: str, *, calls: int, traces: int, repeats: int) -> None:
    cases = (
        ("simple", f"simple path: {calls:,} log_llm_call", calls, False, 0.8, 4.0),
        ("mix", f"realistic mix: {traces:,} workload traces", traces, True, 0.5, 6.0),
    )
    for key, label, n, mix, rate_target, cpu_target in cases:
        say(f"  {label} ...")
        r = await versus_ceiling(dsn, n, mix=mix, repeats=repeats)
        report.details[f"cost_e2e_{key}"] = r
        note = (
            f"{r['rows']:,} rows; ceiling {r['ceiling_rows_per_s']:,.0f} rows/s; "
            f"median of {len(r['runs'])}"
            + ("" if all(x["flushed"] and x["balances"] for x in r["runs"]) else "; INCOMPLETE")
        )
        report.add(
            Figure(
                f"cost_{key}_rate",
                SECTION_E2E,
                f"{label}: rows/s end to end",
                r["tw_rows_per_s"],
                "rows/s",
                r["ratio"],
                "ceiling",
                f"≥ {rate_target} × ceiling",
                verdict(r["ratio"] >= rate_target),
                note,
            )
        )
        report.add(
            Figure(
                f"cost_{key}_ceiling_cpu",
                SECTION_E2E,
                f"{label}: ceiling's client CPU per row (asyncpg encoding + I/O)",
                r["ceiling_cpu_us_per_row"],
                "µs",
                1.0,
                "ceiling",
            )
        )
        _add_server_cpu(report, key, label, r)
        per = "tw_cpu_us_per_span" if mix else "tw_cpu_us_per_row"
        cpu_ratio = r[per] / r["ceiling_cpu_us_per_row"]
        report.add(
            Figure(
                f"cost_{key}_cpu",
                SECTION_E2E,
                f"{label}: application CPU per {'span' if mix else 'row'}",
                r[per],
                "µs",
                cpu_ratio,
                "ceiling",
                f"≤ {cpu_target:g} × ceiling",
                verdict(cpu_ratio <= cpu_target),
                "recording + assembling + roll-ups + encoding, every thread of the app process",
            )
        )


def _add_server_cpu(report: Report, key: str, label: str, r: dict[str, Any]) -> None:
    """The rest of the machine's CPU per row in both runs, and the rate it allows the writer."""
    server, ceiling_server = r["tw_server_cpu_us_per_row"], r["ceiling_server_cpu_us_per_row"]
    if math.isnan(server) or math.isnan(ceiling_server):
        return  # not Linux: no figure rather than a wrong one
    app, client = r["tw_cpu_us_per_row"], r["ceiling_cpu_us_per_row"]
    bound = (ceiling_server + client) / (server + app) if server + app > 0 else float("nan")
    report.add(
        Figure(
            f"cost_{key}_server_cpu_ceiling",
            SECTION_E2E,
            f"{label}: rest of the machine (PostgreSQL), CPU per row, ceiling",
            ceiling_server,
            "µs",
            1.0,
            "ceiling",
        )
    )
    report.add(
        Figure(
            f"cost_{key}_server_cpu",
            SECTION_E2E,
            f"{label}: rest of the machine (PostgreSQL), CPU per row, writer",
            server,
            "µs",
            server / ceiling_server if ceiling_server > 0 else float("nan"),
            "ceiling",
            note=(
                f"with every core busy in both runs the rate ratio would be ~{bound:.2f} "
                "(total CPU per row, ceiling's / writer's)"
            ),
        )
    )


def main(argv: list[str] | None = None) -> None:
    """Print the figures above; ``make bench`` runs them as its "cost" section.

    To measure an older version with the same harness, put its package first on the path and
    run from outside the checkout (``python -m`` puts the current directory first)::

        git archive REV tracewriter sql | tar -x -C /tmp/old
        cd /tmp && PYTHONPATH=/tmp/old:$REPO python -m benchmarks.cost DSN --repeats 3

    ``DSN`` names a migrated database (``tracewriter migrate``); its tables are emptied.
    """
    import argparse  # noqa: PLC0415

    from benchmarks._common import quiet_logging  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__)
    parser.add_argument("dsn", nargs="?", help="a migrated database; without it, GC figures only")
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--traces", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gc-events", type=int, default=20_000)
    args = parser.parse_args(argv)
    quiet_logging()
    report = Report()
    run_gc(report, args.gc_events)
    if args.dsn:
        asyncio.run(
            run_e2e(report, args.dsn, calls=args.calls, traces=args.traces, repeats=args.repeats)
        )
    print_table(report)


if __name__ == "__main__":
    main()
