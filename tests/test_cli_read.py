"""`tracewriter trace` and `tracewriter stats` against known rows written through the service."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any

import asyncpg
import pytest

from tracewriter import ObservabilityService
from tracewriter._sketch import bucket_key, bucket_value
from tracewriter.cli import main
from tracewriter.cli._query import connect, fetch_stats

pytestmark = pytest.mark.timeout(120)

UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/x"


class IndexOffline(Exception):
    """An application error raised inside a span."""


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render at 160 columns and with no DSN from the environment."""
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("TRACEWRITER_DSN", raising=False)


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def write_known_trace(dsn: str) -> str:
    """One request: messages, a retrieval span with a nested rerank, a failing tool span, an
    LLM call and a document event; returns its trace id."""
    async with ObservabilityService(dsn, flush_interval=0.05) as svc:
        ctx = svc.start_trace("chat.request", user_id="u-1", session_id="s-1", kb_id="kb-t")
        svc.log_chat_message(ctx, role="user", content="What is RAG?", token_count=4)
        async with svc.span(ctx, "retrieve", "retrieval", {"top_k": 4}):
            await asyncio.sleep(0.03)
            async with svc.span(None, "rerank", "rerank"):
                await asyncio.sleep(0.01)
        with pytest.raises(IndexOffline):
            async with svc.span(ctx, "tool.lookup", "tool"):
                raise IndexOffline("index offline")
        svc.log_llm_call(
            ctx, model="gpt-4o", provider="openai", input_tokens=1200, output_tokens=300,
            cached_input_tokens=1024, duration_ms=250.0, name="llm.generate",
        )  # fmt: skip
        svc.log_chat_message(ctx, role="assistant", content="RAG is retrieval.", token_count=5)
        svc.log_document_event(
            ctx, document_id="doc-1", event_type="index", duration_ms=12.5, chunk_count=3
        )
        svc.end_trace(ctx)
        assert await svc.flush(timeout=30)
    return ctx.trace_id


def fmt_ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def column_of(lines: list[str], name: str) -> int:
    [line] = [x for x in lines if f" {name} " in x]
    return line.index(name)


async def test_trace_renders_the_tree_with_each_spans_duration(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tracewriter trace` nests rerank under retrieve, shows every span's stored duration,
    the LLM call's model and tokens, and the failing span's error."""
    trace_id = await write_known_trace(db_dsn)
    capsys.readouterr()  # the writer's own log lines
    assert await run_cli("trace", trace_id, "--dsn", db_dsn) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert trace_id in lines[0] and "status ok" in lines[0]
    assert "user u-1" in lines[1] and "kb kb-t" in lines[1]
    assert column_of(lines, "retrieve") == 4  # a child of the root
    assert column_of(lines, "rerank") == 8  # a child of retrieve
    assert column_of(lines, "tool.lookup") == 4
    rows = await pool.fetch(
        "SELECT name, duration_ms FROM observability.spans WHERE trace_id = $1", trace_id
    )
    for row in rows:
        [line] = [x for x in lines if f" {row['name']} " in x]
        assert fmt_ms(row["duration_ms"]) in line, (row["name"], line)
    [llm] = [x for x in lines if " llm.generate " in x]
    assert "250 ms" in llm and "gpt-4o (openai)" in llm and "1,200→300 tok" in llm
    [tool] = [x for x in lines if " tool.lookup " in x]
    assert "IndexOffline: index offline" in tool
    assert sum(" message " in x for x in lines) == 2


async def test_trace_takes_the_dsn_from_the_environment(
    db_dsn: str,
    pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With TRACEWRITER_DSN set and no --dsn, `tracewriter trace` reads that database."""
    trace_id = await write_known_trace(db_dsn)
    monkeypatch.setenv("TRACEWRITER_DSN", db_dsn)
    assert await run_cli("trace", trace_id.upper()) == 0
    assert trace_id in capsys.readouterr().out


async def test_an_unknown_trace_exits_1_with_one_clear_line(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed trace id that is not in the database exits 1 with `no trace <id>`."""
    missing = "0123456789abcdef0123456789abcdef"
    assert await run_cli("trace", missing, "--dsn", db_dsn) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [err.strip()]
    assert f"no trace {missing}" in err and "Traceback" not in err


@pytest.mark.parametrize("trace_id", ["not-a-trace", "ab" * 17, "0" * 32])
async def test_a_malformed_trace_id_is_a_usage_error(
    trace_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace id that is not 32 hex digits, or is all zero (invalid in W3C Trace Context), is
    refused by the parser (exit 2) with the rule."""
    with pytest.raises(SystemExit) as exited:
        await run_cli("trace", trace_id, "--dsn", UNREACHABLE)
    assert exited.value.code == 2
    assert "expected 32 hex digits" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["trace", "ab" * 16], ["stats", "--since", "1h"]])
async def test_an_unreachable_database_exits_1_without_the_password(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable --dsn gives exit 1 and one stderr line naming the redacted DSN: no
    password, no traceback."""
    assert await run_cli(*argv, "--dsn", UNREACHABLE) == 1
    out, err = capsys.readouterr()
    assert "secret" not in out + err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/x" in err


@pytest.mark.parametrize("argv", [["trace", "ab" * 16], ["stats"]])
async def test_without_any_dsn_the_read_commands_ask_for_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """With neither --dsn nor TRACEWRITER_DSN, trace and stats exit 2 saying how to give one."""
    assert await run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert "--dsn" in err and "TRACEWRITER_DSN" in err


async def write_known_llm_calls(dsn: str) -> None:
    """model-a: three ok calls of 100, 200, 400 ms; model-b: one failed call of 50 ms."""
    async with ObservabilityService(dsn, flush_interval=0.05) as svc:
        ctx = svc.start_trace("batch", kb_id="kb-s")
        calls: list[dict[str, Any]] = [
            {"model": "model-a", "duration_ms": 100.0, "input_tokens": 1000, "output_tokens": 10},
            {"model": "model-a", "duration_ms": 200.0, "input_tokens": 2000, "output_tokens": 20},
            {"model": "model-a", "duration_ms": 400.0, "input_tokens": 3000, "output_tokens": 30},
            {"model": "model-b", "duration_ms": 50.0, "input_tokens": 7, "status": "error"},
        ]
        for call in calls:
            svc.log_llm_call(ctx, provider="p", **call)
        with svc.span(ctx, "retrieve", "retrieval"):
            pass
        svc.end_trace(ctx)
        assert await svc.flush(timeout=30)


def sketched(value: float) -> float:
    """The value the 1 % sketch reads ``value`` back as."""
    key = bucket_key(value)
    assert key is not None
    return bucket_value(key)


async def test_stats_reads_calls_tokens_and_percentiles_per_model(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """The per-model figures are the sums of the known calls, the percentiles the sketch's
    values of the known durations (within 1 %), never outside the smallest and largest, and
    the cost of calls no price table knows is None."""
    await write_known_llm_calls(db_dsn)
    conn = await connect(db_dsn)
    try:
        stats = await fetch_stats(conn, db_dsn, dt.timedelta(hours=1))
    finally:
        await conn.close()
    a, b = stats.models
    assert (a.key, a.calls, a.errors, a.input_tokens, a.output_tokens) == (
        "model-a", 3, 0, 6000, 60
    )  # fmt: skip
    assert a.avg_ms == pytest.approx(700 / 3)
    assert a.p50_ms == sketched(200.0) == pytest.approx(200.0, rel=0.01) and a.max_ms == 400.0
    assert a.p99_ms == min(sketched(400.0), 400.0)  # clamped to the largest value seen
    assert a.cost_usd is None  # model-a has no price anywhere
    [kb] = stats.knowledge_bases  # every call was made in kb-s
    assert (kb.key, kb.calls, kb.errors, kb.input_tokens, kb.cost_usd) == ("kb-s", 4, 1, 6007, None)
    assert (b.key, b.calls, b.errors, b.input_tokens) == ("model-b", 1, 1, 7)
    by_type = {r.key: r for r in stats.span_types}
    assert by_type["llm"].calls == 4 and by_type["llm"].errors == 1
    assert by_type["retrieval"].calls == 1
    assert stats.document_stages == []


async def test_stats_prints_the_per_model_and_per_span_type_tables(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tracewriter stats --since 1h` prints both tables with the known numbers."""
    await write_known_llm_calls(db_dsn)
    capsys.readouterr()  # the writer's own log lines
    assert await run_cli("stats", "--since", "1h", "--dsn", db_dsn) == 0
    out = capsys.readouterr().out
    assert "LLM calls by model (last 1h) · latency in ms" in out
    assert "Spans by type (last 1h)" in out
    [row_a] = [x for x in out.splitlines() if "model-a" in x]
    p50, top = sketched(200.0), min(sketched(400.0), 400.0)
    assert row_a.split() == [
        "model-a", "3", "0", "6,000", "60", "—", f"{p50:,.0f}", f"{top:,.0f}", f"{top:,.0f}", "400"
    ]  # fmt: skip


async def test_stats_on_an_empty_window_says_nothing_was_recorded(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no metrics in the window, stats exits 0 and says so."""
    assert await run_cli("stats", "--since", "15m", "--dsn", db_dsn) == 0
    assert "nothing recorded (last 15m)" in capsys.readouterr().out


async def test_stats_refuses_a_window_it_cannot_read(capsys: pytest.CaptureFixture[str]) -> None:
    """--since accepts spans like 1h30m and refuses anything else with exit 2."""
    with pytest.raises(SystemExit) as exited:
        await run_cli("stats", "--since", "an hour", "--dsn", UNREACHABLE)
    assert exited.value.code == 2
    assert "expected e.g. 90s, 15m, 1h" in capsys.readouterr().err


# --- --format json -------------------------------------------------------------------------------

TRACE_KEYS = [
    "trace_id", "span_id", "name", "user_id", "session_id", "kb_id", "status", "timestamp",
    "duration_ms", "error_type", "error_message",
]  # fmt: skip
SPAN_KEYS = [
    "span_id", "parent_span_id", "name", "span_type", "status", "timestamp", "duration_ms",
    "error_type", "error_message", "model", "provider", "input_tokens", "output_tokens",
    "cached_input_tokens", "reasoning_tokens",
]  # fmt: skip
MESSAGE_KEYS = ["span_id", "role", "timestamp", "token_count", "content_preview"]
DOCUMENT_KEYS = [
    "document_id", "event_type", "status", "timestamp", "duration_ms", "chunk_count",
    "error_message",
]  # fmt: skip
LATENCY_KEYS = ["avg_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"]


async def test_trace_as_json_is_every_stored_row_under_stable_keys(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tracewriter trace --format json` prints one JSON document whose trace, spans and
    messages carry the documented keys, in order, with the values stored in the tables."""
    trace_id = await write_known_trace(db_dsn)
    capsys.readouterr()
    assert await run_cli("trace", trace_id, "--dsn", db_dsn, "--format", "json") == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert list(data) == ["trace", "spans", "messages", "documents"]
    assert list(data["trace"]) == TRACE_KEYS
    stored = await pool.fetchrow("SELECT * FROM observability.traces WHERE trace_id = $1", trace_id)
    for key in TRACE_KEYS:
        expected = stored[key].isoformat() if key == "timestamp" else stored[key]
        assert data["trace"][key] == expected, key
    assert all(list(s) == SPAN_KEYS for s in data["spans"])
    spans = {
        r["span_id"]: r
        for r in await pool.fetch("SELECT * FROM observability.spans WHERE trace_id = $1", trace_id)
    }
    assert {s["span_id"] for s in data["spans"]} == set(spans)
    for s in data["spans"]:
        row = spans[s["span_id"]]
        assert dt.datetime.fromisoformat(s["timestamp"]) == row["timestamp"]
        for key in SPAN_KEYS:
            if key != "timestamp":
                assert s[key] == row[key], (row["name"], key)
    by_name = {s["name"]: s for s in data["spans"]}
    assert by_name["rerank"]["parent_span_id"] == by_name["retrieve"]["span_id"]
    assert by_name["tool.lookup"]["error_type"] == "IndexOffline"
    assert by_name["llm.generate"]["cached_input_tokens"] == 1024
    assert [list(m) for m in data["messages"]] == [MESSAGE_KEYS, MESSAGE_KEYS]
    assert [m["content_preview"] for m in data["messages"]] == [
        "What is RAG?", "RAG is retrieval."
    ]  # fmt: skip
    [document] = data["documents"]
    assert list(document) == DOCUMENT_KEYS
    assert (document["document_id"], document["event_type"], document["status"]) == (
        "doc-1", "index", "ok"
    )  # fmt: skip
    assert (document["duration_ms"], document["chunk_count"]) == (12.5, 3)


async def test_stats_as_json_carries_the_same_figures_as_the_tables(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tracewriter stats --format json` prints the per-model and per-span-type figures of the
    known calls under the documented keys, and the window in seconds."""
    await write_known_llm_calls(db_dsn)
    capsys.readouterr()
    assert await run_cli("stats", "--since", "1h30m", "--dsn", db_dsn, "--format", "json") == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert list(data) == [
        "since_seconds", "models", "knowledge_bases", "span_types", "document_stages"
    ]  # fmt: skip
    assert data["since_seconds"] == 5400
    a, b = data["models"]
    assert list(a) == [
        "model", "calls", "errors", "input_tokens", "output_tokens", "cost_usd", *LATENCY_KEYS
    ]  # fmt: skip
    assert (a["model"], a["calls"], a["errors"], a["input_tokens"], a["output_tokens"]) == (
        "model-a", 3, 0, 6000, 60
    )  # fmt: skip
    assert a["avg_ms"] == pytest.approx(700 / 3)
    assert (a["p50_ms"], a["p99_ms"], a["max_ms"]) == (
        sketched(200.0), min(sketched(400.0), 400.0), 400.0
    )  # fmt: skip
    assert a["cost_usd"] is None
    [kb] = data["knowledge_bases"]
    assert list(kb) == [
        "kb_id", "calls", "errors", "input_tokens", "output_tokens", "cost_usd", *LATENCY_KEYS
    ]  # fmt: skip
    assert (kb["kb_id"], kb["calls"], kb["input_tokens"]) == ("kb-s", 4, 6007)
    assert (b["model"], b["calls"], b["errors"]) == ("model-b", 1, 1)
    types = {r["span_type"]: r for r in data["span_types"]}
    assert all(
        list(r) == ["span_type", "calls", "errors", *LATENCY_KEYS] for r in data["span_types"]
    )
    assert (types["llm"]["calls"], types["llm"]["errors"], types["retrieval"]["calls"]) == (4, 1, 1)
    assert data["document_stages"] == []


async def test_json_of_an_unknown_trace_prints_nothing_on_stdout(
    db_dsn: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing trace with --format json exits 1 with the one-line error on stderr and no
    half document on stdout, so a script's JSON parser never sees partial output."""
    missing = "fedcba9876543210fedcba9876543210"
    assert await run_cli("trace", missing, "--dsn", db_dsn, "--format", "json") == 1
    out, err = capsys.readouterr()
    assert out == "" and f"no trace {missing}" in err


async def test_json_needs_no_rich_and_text_without_it_names_the_extra(
    db_dsn: str,
    pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With rich not importable, `stats --format json` still works, and the text format exits 1
    naming the `cli` extra to install."""
    for name in ("rich", "rich.console", "tracewriter.cli._render"):
        monkeypatch.setitem(sys.modules, name, None)
    assert await run_cli("stats", "--dsn", db_dsn, "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)["models"] == []
    assert await run_cli("stats", "--dsn", db_dsn) == 1
    out, err = capsys.readouterr()
    assert out == "" and "pip install 'tracewriter[cli]'" in err
