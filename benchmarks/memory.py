"""Memory: bytes per buffered event (tracemalloc), and resident memory through an outage.

Owns two measurements. Per event: recording calls into a writer that is not started (so
nothing is taken out of its buffer) under tracemalloc, against the floor — a deque of
same-size tuples holding the same arguments. Outage: a child process (`_outage_child`) runs
the writer under load while this process stops the embedded server for a while, sampling
the child's RSS; once the buffer is full, the RSS must stay flat.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any

from benchmarks._common import RESULTS_DIR, ROOT, Figure, Report, percentile, ratio, say, verdict
from benchmarks._workload import EVENTS_PER_TRACE, LLM_ARGS, default_metadata, trace_sync
from tracewriter import ObservabilityService

# Never connected: an unstarted writer only buffers, which is what is measured.
_DSN = "postgresql://bench@localhost/never_connected"


def _traced_bytes(n: int, record: Callable[[int], None]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            record(i)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / n


def bytes_per_event(n: int) -> dict[str, float]:
    """Bytes held per buffered event: LLM calls, the whole workload mix, and the floor."""
    results: dict[str, float] = {}

    svc = ObservabilityService(_DSN, max_buffer_rows=n * EVENTS_PER_TRACE + 10)
    ctx = svc.start_trace("chat.request", user_id="user-0001", session_id="s-1", kb_id="kb-01")

    def llm(i: int) -> None:
        # A fresh dict per call, as an application builds one; the caller drops it after.
        svc.log_llm_call(ctx, **LLM_ARGS, metadata=default_metadata(i))

    results["log_llm_call"] = _traced_bytes(n, llm)

    mix = ObservabilityService(_DSN, max_buffer_rows=n * EVENTS_PER_TRACE + 10)
    traces = max(n // EVENTS_PER_TRACE, 1)
    results["workload_mix"] = _traced_bytes(traces, lambda i: trace_sync(mix, i)) / EVENTS_PER_TRACE

    q: deque[Any] = deque()
    trace_id, span_id = ctx.trace_id, ctx.span_id

    def floor(i: int) -> None:
        meta = default_metadata(i)
        q.append(
            (
                "span",
                time.time_ns(),
                time.time_ns(),
                trace_id,
                span_id,
                span_id,
                "llm.call",
                "llm",
                "ok",
                LLM_ARGS["duration_ms"],
                None,
                None,
                "user-0001",
                "s-1",
                "kb-01",
                meta,
                (LLM_ARGS["model"], LLM_ARGS["provider"], 812, 95, None, None),
            )
        )

    results["floor"] = _traced_bytes(n, floor)
    return results


def _outage(dsn: str, pg: Any, *, warm: float, down: float, recover: float) -> dict[str, Any]:
    """Run the child, take the server away for ``down`` seconds, sample the child's RSS."""
    import psutil  # noqa: PLC0415

    RESULTS_DIR.mkdir(exist_ok=True)
    stderr_path = RESULTS_DIR / "outage-child-stderr.txt"
    stderr = stderr_path.open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._outage_child", dsn],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"outage child did not start: {line!r}")
        proc = psutil.Process(child.pid)
        samples: list[tuple[float, float, str]] = []
        began = time.monotonic()

        def sample_until(t_end: float, phase: str) -> None:
            while time.monotonic() < t_end:
                samples.append((time.monotonic() - began, proc.memory_info().rss, phase))
                time.sleep(0.1)

        def tell(word: str) -> None:
            assert child.stdin is not None
            child.stdin.write(word + "\n")
            child.stdin.flush()

        sample_until(began + warm, "up")
        pg.stop()
        tell("down")
        sample_until(time.monotonic() + down, "down")
        pg.start()
        tell("up")
        sample_until(time.monotonic() + recover, "recovering")
        tell("stop")
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        pg.start()  # whatever happened, leave the server running
        stderr.close()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    # What the writer's process printed besides its own (structlog, stdout) lines.
    text = stderr_path.read_text()
    result["stderr_file"] = str(stderr_path.relative_to(ROOT))
    result["stderr_lines"] = len(text.splitlines())
    result["asyncpg_pool_tracebacks"] = text.count("Failed to restore the pool connection floor")
    result["stdout_warnings"] = [line for line in out.splitlines() if "[warning" in line][:20]
    result["rss_samples"] = [(round(t, 2), rss, phase) for t, rss, phase in samples]
    return result


def _analyse(result: dict[str, Any], max_buffer_rows: int) -> dict[str, Any]:
    """RSS before the outage, when the buffer filled, and whether it kept growing after.

    Once the buffer is full, RSS still steps up while the flusher's retries turn the buffered
    events into rows (a row takes more memory than the event it came from); that step is
    bounded by the buffer. "Flat" is judged on the second half of the outage, well after the
    buffer filled: there the RSS must not grow.
    """
    samples = result["rss_samples"]
    up = [rss for _, rss, phase in samples if phase == "up"]
    down = [(t, rss) for t, rss, phase in samples if phase == "down"]
    full_at = result.get("buffer_full_after_s")
    base = percentile(up, 50) if up else float("nan")
    peak = max(rss for _, rss, _ in samples)
    empty = {"base": base, "peak": peak, "full": None, "growth": None, "full_at": None}
    if full_at is None or len(down) < 4:
        return empty
    t_down, t_end = down[0][0], down[-1][0]
    at_full = next((rss for t, rss in down if t >= t_down + full_at), down[-1][1])
    halfway = (t_down + t_end) / 2
    if halfway < t_down + full_at:
        return {**empty, "full": at_full, "full_at": full_at}  # filled too late to judge
    late = [rss for t, rss in down if t >= halfway]
    return {
        "base": base,
        "peak": peak,
        "full": at_full,
        "plateau_start": late[0],
        "growth": max(late) - late[0],
        "late_window_s": t_end - halfway,
        "full_at": full_at,
        "per_event_rss": (late[0] - base) / max_buffer_rows,
    }


SECTION = "Memory"


def run(report: Report, *, events: int) -> None:
    """Bytes per buffered event."""
    section = SECTION
    say("  bytes per buffered event (tracemalloc) ...")
    per = bytes_per_event(events)
    report.details["bytes_per_event"] = per
    report.add(
        Figure(
            "bytes_llm",
            section,
            "Bytes per buffered log_llm_call event (142-byte metadata)",
            per["log_llm_call"],
            "B",
            ratio(per["log_llm_call"], per["floor"]),
            "floor",
            "≤ 1 KB",
            verdict(per["log_llm_call"] <= 1024),
            f"floor: same-size tuple of the same arguments, {per['floor']:.0f} B",
        )
    )
    report.add(
        Figure(
            "bytes_mix",
            section,
            "Bytes per buffered event, workload mix (traces, spans, LLM calls)",
            per["workload_mix"],
            "B",
            ratio(per["workload_mix"], per["floor"]),
            "floor",
        )
    )


def run_outage(
    report: Report, dsn: str, pg: Any, *, outage: tuple[float, float, float] | None
) -> None:
    """Peak RSS and its growth while the database is away and the buffer is full."""
    section = SECTION
    if outage is None or pg is None:
        report.add(
            Figure(
                "rss_outage_growth",
                section,
                "RSS growth once the buffer is full, database unreachable",
                None,
                "MB",
                status="SKIP",
                note="needs the embedded server (it is stopped and restarted)"
                if pg is None
                else "not run in --smoke"
                if outage is None
                else "",
            )
        )
        return
    warm, down, recover = outage
    say(f"  RSS through a {down:g} s outage under load (child process) ...")
    result = _outage(dsn, pg, warm=warm, down=down, recover=recover)
    max_rows = result["max_buffer_rows"]
    a = _analyse(result, max_rows)
    report.details["outage"] = {**result, "analysis": a}
    mb = 1 / 2**20
    stats = result["stats"]
    note = (
        f"{down:g} s outage at {result['rate']:,.0f} events/s; buffer full after "
        f"{a['full_at']:.1f} s; {stats['dropped_overflow']:,} dropped; after recovery "
        f"{stats['written']:,} written, ledger balances: {stats['balances']}; "
        f"asyncpg's pool printed {result['asyncpg_pool_tracebacks']} tracebacks to stderr"
        if a["full_at"] is not None
        else "the buffer never filled"
    )
    report.add(
        Figure(
            "rss_outage_peak",
            section,
            f"Peak RSS, database unreachable, buffer full (max_buffer_rows {max_rows:,})",
            a["peak"] * mb,
            "MB",
            ratio(a["peak"], a["base"]),
            "RSS before the outage",
            note=note,
        )
    )
    growth = a["growth"]
    flat = None if growth is None else growth <= 0.01 * a["plateau_start"]
    report.add(
        Figure(
            "rss_outage_growth",
            section,
            "RSS growth over the second half of the outage (buffer full)",
            None if growth is None else growth * mb,
            "MB",
            ratio(growth, a.get("plateau_start")),
            "RSS",
            "flat (≤ 1 % growth)",
            verdict(flat),
            ""
            if growth is None
            else f"RSS {a['full'] * mb:.0f} MB when the buffer filled, "
            f"{a['plateau_start'] * mb:.0f} MB once retries had built its events into rows; "
            f"{a['per_event_rss']:.0f} B of RSS per buffered event",
        )
    )
