"""Rows per second into PostgreSQL: the COPY ceiling, tracewriter, per-event INSERT, the ORM.

Owns the four ways of writing the workload's spans and the search for tracewriter's best
configuration. Every design writes the same rows (see `_workload.span_rows`) into the same
freshly emptied ``observability.spans`` table; each result says how many rows it wrote and
how long that took, wall clock, with the database's own work included.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from benchmarks._common import (
    INFO,
    Figure,
    Report,
    count_rows,
    percentile,
    ratio,
    reset,
    say,
    verdict,
)
from benchmarks._workload import SPANS_PER_TRACE, span_rows, trace_async
from tracewriter import ObservabilityService
from tracewriter._schema import SPAN_COLUMNS

Row = tuple[Any, ...]

# The configurations tried for "the best one you find". Throughput on one Python process is
# CPU-bound on building and encoding rows, so the knobs are what a flush costs per row:
# batch size, yields while encoding, the pool, and which thread does the work.
SWEEP: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default", {}),
    ("batch 10k, yield 2k", {"max_batch_rows": 10_000, "copy_yield_rows": 2048}),
    (
        "batch 20k, yield 4k, buffer 200k",
        {"max_batch_rows": 20_000, "copy_yield_rows": 4096, "max_buffer_rows": 200_000},
    ),
    ("pool 2, batch 10k", {"pool_size": 2, "max_batch_rows": 10_000, "copy_yield_rows": 2048}),
    ("thread mode", {"thread_mode": True}),
    (
        "thread mode, batch 20k, yield 4k, buffer 200k",
        {
            "thread_mode": True,
            "max_batch_rows": 20_000,
            "copy_yield_rows": 4096,
            "max_buffer_rows": 200_000,
        },
    ),
)


@dataclass(frozen=True, slots=True)
class Sizes:
    traces: int  # workload traces for the ceiling and end to end (4 spans each)
    ceiling_repeats: int
    insert_rows: int
    insert_seconds: float
    orm_rows: int
    orm_seconds: float
    sweep: bool
    repeats: int  # extra runs of the default and of the best configuration


# --- the ceiling -------------------------------------------------------------------------------


async def copy_ceiling(
    dsn: str, rows: Sequence[Row], *, batch: int = 10_000, connections: int = 2
) -> dict[str, Any]:
    """Pre-built rows by binary COPY in ``batch``-row calls over ``connections`` in parallel."""
    await reset(dsn)
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    try:
        batches = iter([rows[i : i + batch] for i in range(0, len(rows), batch)])

        async def worker(conn: asyncpg.Connection) -> None:
            for part in batches:
                await conn.copy_records_to_table(
                    "spans", schema_name="observability", columns=SPAN_COLUMNS, records=part
                )

        cpu0 = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu0
    finally:
        for conn in conns:
            await conn.close()
    written = await count_rows(dsn)
    assert written == len(rows), f"COPY wrote {written} of {len(rows)} rows"
    return {
        "rows": written,
        "seconds": elapsed,
        "rows_per_s": written / elapsed,
        "cpu_us_per_row": cpu / written * 1e6,
    }


# --- per-event INSERT --------------------------------------------------------------------------

_INSERT = (
    "INSERT INTO observability.spans ("
    + ", ".join(f'"{c}"' for c in SPAN_COLUMNS)
    + ") VALUES ("
    + ", ".join(f"${i}" for i in range(1, len(SPAN_COLUMNS) + 1))
    + ")"
)


async def insert_per_event(
    dsn: str, rows: Sequence[Row], *, seconds: float, concurrency: int = 10
) -> dict[str, Any]:
    """One asyncpg INSERT per row through a pool, ``concurrency`` at a time."""
    await reset(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    try:
        todo = iter(rows)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            for row in todo:
                await pool.execute(_INSERT, *row)
                done += 1
                if time.perf_counter() >= deadline:
                    return

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await pool.close()
    return {"rows": done, "seconds": elapsed, "rows_per_s": done / elapsed}


async def orm_per_event(
    dsn: str, rows: Sequence[Row], *, seconds: float, concurrency: int = 1
) -> dict[str, Any]:
    from benchmarks import _orm  # noqa: PLC0415 - SQLAlchemy only when this one runs

    await reset(dsn)
    return await _orm.write_per_event(dsn, rows, seconds=seconds, concurrency=concurrency)


# --- tracewriter end to end --------------------------------------------------------------------


async def end_to_end(dsn: str, traces: int, options: dict[str, Any]) -> dict[str, Any]:
    """Record ``traces`` workload traces through the API and wait until all rows are committed.

    The clock runs from the first recording call until ``flush()`` returns: the application's
    own calls, building, encoding and COPY all count. The producer yields to the loop every
    ten traces, as a request handler awaiting I/O would. The writer never pushes back (a full
    buffer drops), so the producer holds back itself while the buffer is over half full: this
    measures the rate the writer sustains, not how fast the app can fill a buffer.
    """
    await reset(dsn)
    svc = ObservabilityService(dsn, **options)
    await svc.start()
    high_water = svc.config.max_buffer_rows // 2
    waits = 0
    try:
        gc.collect()
        cpu0 = time.process_time()
        began = time.perf_counter()
        for i in range(traces):
            await trace_async(svc, i)
            if i % 10 == 9:
                await asyncio.sleep(0)
                stats = svc.stats()
                assert stats is not None
                while stats.buffered + stats.in_flight > high_water:
                    waits += 1
                    await asyncio.sleep(0.001)
                    stats = svc.stats()
                    assert stats is not None
        produced = time.perf_counter()
        flushed = await svc.flush(timeout=300)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu0
        stats = svc.stats()
    finally:
        await svc.close()
    spans = await count_rows(dsn, "spans")
    trace_rows = await count_rows(dsn, "traces")
    assert stats is not None
    return {
        "options": options,
        "traces": traces,
        "spans": spans,
        "trace_rows": trace_rows,
        "expected_spans": traces * SPANS_PER_TRACE,
        "flushed": flushed,
        "seconds": elapsed,
        "produce_seconds": produced - began,
        "flush_tail_seconds": elapsed - (produced - began),
        "spans_per_s": spans / elapsed,
        "rows_per_s": (spans + trace_rows) / elapsed,
        "cpu_us_per_span": cpu / max(spans, 1) * 1e6,
        "dropped_overflow": stats.dropped_overflow,
        "flushes": stats.flushes,
        "retries": stats.retries,
        "balances": stats.balances(),
        "producer_waits": waits,
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, annotated with how many runs and their spread."""
    ordered = sorted(runs, key=lambda r: r["spans_per_s"])
    median = dict(ordered[len(ordered) // 2])
    median["runs"] = [round(r["spans_per_s"]) for r in runs]
    return median


def _options(options: dict[str, Any]) -> str:
    if not options:
        return "WriterConfig defaults"
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _e2e_note(result: dict[str, Any]) -> str:
    note = (
        f"{result['spans']:,} spans + {result['trace_rows']:,} trace rows in "
        f"{result['seconds']:.2f} s ({result['produce_seconds']:.2f} s recording at the pace "
        "the writer sustained, "
        f"{result['flush_tail_seconds']:.2f} s final flush)"
    )
    if result["spans"] != result["expected_spans"] or not result["flushed"]:
        note += f"; INCOMPLETE: expected {result['expected_spans']:,} spans"
    if result["dropped_overflow"]:
        note += f"; {result['dropped_overflow']:,} events dropped (buffer full)"
    if len(result.get("runs", ())) > 1:
        note += "; median of runs at " + ", ".join(f"{r:,}" for r in result["runs"]) + " spans/s"
    return note


async def run(report: Report, dsn: str, sizes: Sizes) -> None:
    """Measure everything in this module into ``report``."""
    section = "Throughput (rows/s into PostgreSQL)"
    say(f"  building {sizes.traces * SPANS_PER_TRACE:,} span rows from the workload ...")
    rows = span_rows(sizes.traces)

    say("  COPY ceiling ...")
    ceiling_runs = [await copy_ceiling(dsn, rows) for _ in range(sizes.ceiling_repeats)]
    ceiling = percentile([r["rows_per_s"] for r in ceiling_runs], 50)
    one = await copy_ceiling(dsn, rows, connections=1)
    report.details["ceiling"] = {"two_connections": ceiling_runs, "one_connection": one}
    report.add(
        Figure(
            "ceiling",
            section,
            "Ceiling: binary COPY of pre-built rows, 10k-row batches, 2 connections",
            ceiling,
            "rows/s",
            1.0,
            "ceiling",
            note=f"{len(rows):,} rows, median of {len(ceiling_runs)}",
        )
    )
    report.add(
        Figure(
            "ceiling_1conn",
            section,
            "Binary COPY, 10k-row batches, 1 connection",
            one["rows_per_s"],
            "rows/s",
            ratio(one["rows_per_s"], ceiling),
            "ceiling",
        )
    )

    say("  per-event INSERT (10 concurrent) ...")
    ins = await insert_per_event(dsn, rows[: sizes.insert_rows], seconds=sizes.insert_seconds)
    report.details["insert_per_event"] = ins
    report.add(
        Figure(
            "insert",
            section,
            "Per-event INSERT (asyncpg pool, 10 concurrent)",
            ins["rows_per_s"],
            "rows/s",
            ratio(ins["rows_per_s"], ceiling),
            "ceiling",
            note=f"{ins['rows']:,} rows in {ins['seconds']:.1f} s",
        )
    )

    say("  ORM design (SQLAlchemy async, add+commit per event) ...")
    orm = await orm_per_event(dsn, rows[: sizes.orm_rows], seconds=sizes.orm_seconds)
    orm10 = await orm_per_event(
        dsn, rows[: sizes.orm_rows], seconds=sizes.orm_seconds / 2, concurrency=10
    )
    report.details["orm"] = {"sequential": orm, "concurrent_10": orm10}
    report.add(
        Figure(
            "orm",
            section,
            "ORM design: SQLAlchemy 2 async session, add()+commit() per event",
            orm["rows_per_s"],
            "rows/s",
            ratio(orm["rows_per_s"], ceiling),
            "ceiling",
            note=f"one request at a time; {orm['rows']:,} rows in {orm['seconds']:.1f} s",
        )
    )
    report.add(
        Figure(
            "orm_10",
            section,
            "ORM design, 10 concurrent sessions",
            orm10["rows_per_s"],
            "rows/s",
            ratio(orm10["rows_per_s"], ceiling),
            "ceiling",
            note=f"{orm10['rows']:,} rows in {orm10['seconds']:.1f} s",
        )
    )
    del rows
    gc.collect()

    configs = SWEEP if sizes.sweep else SWEEP[:1] + SWEEP[4:5]
    results: list[tuple[str, dict[str, Any]]] = []
    for name, options in configs:
        say(f"  tracewriter end to end: {name} ...")
        results.append((name, await end_to_end(dsn, sizes.traces, options)))
    report.details["end_to_end"] = [{"name": n, **r} for n, r in results]
    complete = [
        (n, r) for n, r in results if r["spans"] == r["expected_spans"] and r["flushed"]
    ] or results
    best_name = max(complete, key=lambda nr: nr[1]["spans_per_s"])[0]
    # One run per configuration picks the winner, and on a shared machine a single run is
    # noisy (and the winner's run its luckiest). The default and the winner are measured
    # again, interleaved so that drift in the machine's load hits both alike, and each is
    # reported as the median of its runs.
    e2e_runs: dict[str, list[dict[str, Any]]] = {
        "default": [results[0][1]],
        best_name: [dict(results)[best_name]],
    }
    for _ in range(sizes.repeats):
        for name, measured in e2e_runs.items():
            say(f"  tracewriter end to end: {name} (repeat) ...")
            measured.append(await end_to_end(dsn, sizes.traces, dict(SWEEP)[name]))
    report.details["end_to_end_repeats"] = e2e_runs
    default = _median_run(e2e_runs["default"])
    best = _median_run(e2e_runs[best_name])

    e2e_target = "≥ 0.8 × ceiling"
    for key, name, result in (
        ("e2e_default", "default", default),
        ("e2e_best", best_name, best),
    ):
        r = ratio(result["spans_per_s"], ceiling)
        report.add(
            Figure(
                key,
                section,
                "tracewriter end to end, "
                + ("default configuration" if key == "e2e_default" else f"best found: {name}"),
                result["spans_per_s"],
                "spans/s",
                r,
                "ceiling",
                e2e_target,
                verdict(r >= 0.8 if r is not None else None),
                _e2e_note(result)
                + (
                    "; the default was the best configuration tried"
                    if key == "e2e_best" and name == "default"
                    else ""
                ),
            )
        )
    compared = [("default", "default", default)]
    if best_name != "default":
        compared.append(("best", best_name, best))
    for key, name, result in compared:
        tw = result["spans_per_s"]
        r_orm = ratio(tw, orm["rows_per_s"])
        r_ins = ratio(tw, ins["rows_per_s"])
        report.add(
            Figure(
                f"vs_orm_{key}",
                section,
                f"tracewriter ({name}) / ORM design",
                r_orm,
                "×",
                target="≥ 150 ×",
                status=verdict(r_orm >= 150 if r_orm is not None else None),
            )
        )
        report.add(
            Figure(
                f"vs_insert_{key}",
                section,
                f"tracewriter ({name}) / per-event INSERT",
                r_ins,
                "×",
                target="≥ 20 ×",
                status=verdict(r_ins >= 20 if r_ins is not None else None),
            )
        )
    ceiling_cpu = percentile([r["cpu_us_per_row"] for r in ceiling_runs], 50)
    report.add(
        Figure(
            "cpu_per_row_ceiling",
            section,
            "Application-process CPU per row, ceiling (asyncpg encoding + I/O)",
            ceiling_cpu,
            "µs",
            1.0,
            "ceiling",
        )
    )
    report.add(
        Figure(
            "cpu_per_span",
            section,
            "Application-process CPU per span, end to end (default configuration)",
            default["cpu_us_per_span"],
            "µs",
            ratio(default["cpu_us_per_span"], ceiling_cpu),
            "ceiling",
            note="recording + building + encoding, all threads of the app process; "
            "PostgreSQL's own CPU not included",
        )
    )
    sweep_section = "End-to-end configurations tried"
    for name, result in results:
        report.add(
            Figure(
                f"sweep_{name}",
                sweep_section,
                name,
                result["spans_per_s"],
                "spans/s",
                ratio(result["spans_per_s"], ceiling),
                "ceiling",
                status=INFO,
                note=f"{_options(result['options'])}; {_e2e_note(result)}",
            )
        )
