"""Process exit with events buffered: close() writes them; without it, a bounded atexit flush.

Each scenario runs a child Python process that records events with a flush interval far longer
than its life, so only close() or the exit hook can write them, and reports its writer's
counters from an exit handler that runs after tracewriter's own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from . import connect

SPANS_PER_CHILD = 200  # each child records this many span() blocks and as many LLM calls

CHILD = textwrap.dedent(
    """
    import asyncio, atexit, json, sys, time

    svc = None
    exit_started = None

    def report():
        s = svc.stats()
        print(json.dumps({
            "trace_id": ctx.trace_id, "enqueued": s.enqueued, "written": s.written,
            "dropped_at_close": s.dropped_at_close, "balances": s.balances(),
            "exit_hook_seconds": time.monotonic() - exit_started if exit_started else None,
        }), flush=True)

    # Registered before tracewriter is imported, so it runs after tracewriter's exit hook.
    atexit.register(report)

    from tracewriter import ObservabilityService

    dsn, mode, spans, atexit_timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    svc = ObservabilityService(
        dsn, flush_interval=3600.0, open_row_grace=3600.0, thread_mode=mode.startswith("thread"),
        atexit_timeout=float(atexit_timeout),
    )
    ctx = None

    def record():
        global ctx
        ctx = svc.start_trace("exit-test", kb_id="kb")
        for i in range(spans):
            with svc.span(ctx, "work", "chain"):
                pass
            svc.log_llm_call(ctx, model=mode, input_tokens=i)
        svc.end_trace(ctx)

    async def main():
        await svc.start()
        record()
        if mode.endswith("close"):
            await svc.close(timeout=10)

    if mode.startswith("thread"):
        svc.start_sync()
        record()
        if mode.endswith("close"):
            svc.close_sync(timeout=10)
    else:
        asyncio.run(main())
    exit_started = time.monotonic()
    """
)


def by_host_name(dsn: str) -> str:
    """``dsn`` naming its host ``localhost`` where it names 127.0.0.1.

    A host name must be resolved, and at interpreter exit the executor asyncio resolves in has
    shut down: the exit flush must cope. (A Unix-socket DSN, the embedded server's, is kept.)
    """
    parts = urlsplit(dsn)
    if parts.hostname != "127.0.0.1":
        return dsn
    return urlunsplit(parts._replace(netloc=parts.netloc.replace("127.0.0.1", "localhost")))


async def run_child(dsn: str, mode: str, atexit_timeout: float) -> tuple[dict[str, Any], str]:
    """Run the child; return its report and its stderr (it must exit 0 within 60 s)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        by_host_name(dsn),
        mode,
        str(SPANS_PER_CHILD),
        str(atexit_timeout),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, stderr
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    assert lines, (out, stderr)
    return json.loads(lines[-1]), stderr


async def stored(conn: asyncpg.Connection, trace_id: str) -> tuple[int, int, int]:
    """(span rows, distinct span ids, trace rows) of ``trace_id``."""
    row = await conn.fetchrow(
        "SELECT count(*), count(DISTINCT span_id) FROM observability.spans WHERE trace_id = $1",
        trace_id,
    )
    traces = await conn.fetchval(
        "SELECT count(*) FROM observability.traces WHERE trace_id = $1", trace_id
    )
    assert row is not None
    return row[0], row[1], traces


@pytest.mark.timeout(90)
async def test_buffered_events_are_written_at_exit_with_or_without_close(fault_db: str) -> None:
    """A child that calls close() writes everything it recorded; one that exits without close()
    has the atexit hook write it — in loop mode (after asyncio.run) and in thread mode."""
    modes = ("loop-close", "loop-exit", "thread-close", "thread-exit")
    results = await asyncio.gather(*(run_child(fault_db, mode, 5.0) for mode in modes))
    events = 3 * SPANS_PER_CHILD + 2  # span() is 2 events, an LLM call 1, the trace 2
    async with connect(fault_db) as conn:
        for mode, (report, stderr) in zip(modes, results, strict=True):
            assert "Traceback" not in stderr, (mode, stderr)
            assert report["balances"], (mode, report)
            assert report["enqueued"] == events, (mode, report)
            assert (report["written"], report["dropped_at_close"]) == (events, 0), (mode, report)
            spans = 2 * SPANS_PER_CHILD
            assert await stored(conn, report["trace_id"]) == (spans, spans, 1), mode


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["loop-exit", "thread-exit"])
async def test_the_exit_hook_gives_up_after_atexit_timeout_and_counts_the_rest(
    fault_db: str, mode: str
) -> None:
    """When the database cannot take the rows (a lock blocks spans), the exit hook returns after
    about atexit_timeout, and what it could not write is counted as dropped at close."""
    async with connect(fault_db) as locker, locker.transaction():
        await locker.execute("LOCK TABLE observability.spans IN ACCESS EXCLUSIVE MODE")
        report, stderr = await run_child(fault_db, mode, 1.0)
    assert "Traceback" not in stderr, stderr
    assert report["exit_hook_seconds"] < 1.0 + 2.0, report
    assert report["balances"], report
    span_events = 2 * SPANS_PER_CHILD + SPANS_PER_CHILD
    # Only the trace row could be written; every span event was counted, none silently lost.
    assert (report["written"], report["dropped_at_close"]) == (2, span_events), report
    async with connect(fault_db) as conn:
        spans, distinct, traces = await stored(conn, report["trace_id"])
    assert traces == 1 and spans == distinct  # whatever reached the table, it did so once
