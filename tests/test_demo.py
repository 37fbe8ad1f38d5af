"""The demo against the run's database: what it reports is what the tables hold."""

from __future__ import annotations

import asyncio
import io

import asyncpg
import pytest
from rich.console import Console

from tracewriter.cli import main
from tracewriter.cli._demo import EVENT_KINDS, EVENT_TABLES, run_demo
from tracewriter.cli._query import COUNTED_TABLES

pytestmark = pytest.mark.timeout(120)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=140, color_system=None)


async def table_counts(pool: asyncpg.Pool) -> dict[str, int]:
    counts = {}
    for table in COUNTED_TABLES:
        # table names come from the fixed tuple above, never from input
        counts[table] = await pool.fetchval(f"SELECT count(*) FROM observability.{table}")
    return counts


async def test_the_rows_the_demo_reports_are_the_rows_in_the_tables(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """A 30-request run reports per table exactly the rows count(*) finds, which are the rows
    its recorded events make, with nothing dropped and a balanced ledger."""
    console = quiet_console()
    report = await run_demo(
        db_dsn,
        requests=30,
        users=6,
        docs_per_second=40,
        failure_rate=0.2,
        seed=11,
        live=False,
        console=console,
    )
    counts = await table_counts(pool)
    assert report.rows_in_db == counts
    for table in EVENT_TABLES:
        assert counts[table] == report.expected_rows[table], table
        # Writes also count the end-update of a row written open (a trace past the grace).
        assert report.rows_written[table] >= counts[table], table
        if report.stats.end_upserts == 0:
            assert report.rows_written[table] == counts[table], table
    assert counts["traces"] == report.requests + report.documents
    assert report.requests == 30 and report.documents > 0
    assert counts["metrics_aggregates"] > 0 and counts["dead_letters"] == 0
    assert report.dropped == 0 and report.dead_lettered == 0
    assert report.stats.balances() and report.stats.written == report.stats.enqueued
    assert sum(report.events_by_kind.values()) == report.stats.enqueued
    assert set(report.events_by_kind) == set(EVENT_KINDS)
    assert report.ok
    errors = await pool.fetchval("SELECT count(*) FROM observability.traces WHERE status = 'error'")
    assert errors == report.failed_requests + report.failed_documents
    output = console.file.getvalue()  # type: ignore[attr-defined]
    for heading in ("Events recorded", "Rows per table", "LLM calls by model", "loop lag"):
        assert heading in output
    assert report.enqueue_p50_us > 0 and report.loop_lag_max_ms >= report.loop_lag_p99_ms


async def test_the_showcase_request_reads_back_as_a_complete_tree(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """The request shown as a waterfall has its messages, three LLM calls and a retrieval span
    with nested embedding and rerank spans, all ok, and the output draws that tree."""
    console = quiet_console()
    report = await run_demo(
        db_dsn, requests=1, users=1, docs_per_second=0, seed=3, live=False, console=console
    )
    trace_id = report.showcase_trace_id
    assert trace_id is not None
    spans = {
        r["name"]: r
        for r in await pool.fetch("SELECT * FROM observability.spans WHERE trace_id = $1", trace_id)
    }
    root = await pool.fetchval(
        "SELECT span_id FROM observability.traces WHERE trace_id = $1", trace_id
    )
    assert set(spans) == {
        "llm.rewrite_query", "retrieve", "embed_query", "rerank", "llm.generate", "llm.guardrail"
    }  # fmt: skip
    assert spans["embed_query"]["parent_span_id"] == spans["retrieve"]["span_id"]
    assert spans["rerank"]["parent_span_id"] == spans["retrieve"]["span_id"]
    assert spans["retrieve"]["parent_span_id"] == root
    assert all(r["status"] == "ok" for r in spans.values())
    assert spans["llm.generate"]["model"] and spans["llm.generate"]["output_tokens"] > 0
    roles = await pool.fetch(
        "SELECT role FROM observability.chat_messages WHERE trace_id = $1 ORDER BY timestamp",
        trace_id,
    )
    assert [r["role"] for r in roles] == ["user", "assistant"]
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert trace_id in output
    assert "│   ├── embed_query" in output and "│   └── rerank" in output


async def test_tracewriter_demo_runs_against_a_dsn_and_exits_0(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tracewriter demo --dsn ... --requests 20 --no-live` migrates (nothing to do), runs,
    prints the summary and exits 0."""
    argv = ["demo", "--dsn", db_dsn, "--requests", "20", "--users", "4", "--no-live"]
    status = await asyncio.to_thread(main, [*argv, "--docs-per-second", "10", "--seed", "5"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Rows per table" in out and "every recorded event is in the database" in out
    assert await pool.fetchval("SELECT count(*) FROM observability.chat_messages") > 0


@pytest.mark.parametrize("migrate", [True, False], ids=["migrate", "no-migrate"])
async def test_tracewriter_demo_on_an_unreachable_database_says_so_in_one_line(
    migrate: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable --dsn makes the demo exit 1 with one line on stderr that names the
    server but not the password, and no traceback."""
    argv = ["demo", "--dsn", "postgresql://nobody:secret@127.0.0.1:1/x", "--requests", "5"]
    status = await asyncio.to_thread(main, argv + ([] if migrate else ["--no-migrate"]))
    out, err = capsys.readouterr()
    assert status == 1
    assert "secret" not in out + err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "127.0.0.1" in err
