"""Redaction, content capture and sampling end to end against a real PostgreSQL."""

from __future__ import annotations

import random
import time
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

import tracewriter._flusher as flusher_module
from tracewriter import _schema as schema
from tracewriter._config import WriterConfig
from tracewriter._ids import new_span_id
from tracewriter._policy import is_sampled
from tracewriter._provider import PostgresProvider
from tracewriter._records import Event, EventKind, build
from tracewriter._service import ObservabilityService

pytestmark = pytest.mark.timeout(300)

SECRETS: dict[str, str] = {
    "email": "jane.doe+billing@example.co.uk",
    "card": "4111 1111 1111 1111",
    "openai": "sk-proj-Ab3dEfGh1jKlMn0pQrStUvWxYz0123456789",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "bearer": "Bearer abc123DEF456ghi789.jkl-mno_pqr~stu",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fw",
}
PLANTED = " | ".join(SECRETS.values())


def nested(depth: int) -> Any:
    value: Any = {"secret": PLANTED}
    for i in range(depth):
        value = {f"d{i}": [value, PLANTED], PLANTED[:40]: i}
    return value


async def text_columns(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = 'observability' AND t.table_type = 'BASE TABLE' "
        "AND c.data_type IN ('text', 'jsonb', 'json', 'character varying', 'ARRAY')"
    )
    return [(r["table_name"], r["column_name"]) for r in rows]


async def occurrences(pool: asyncpg.Pool, needle: str) -> list[str]:
    """Every table.column in the schema whose text holds ``needle``."""
    found = []
    for table, column in await text_columns(pool):
        n = await pool.fetchval(
            f'SELECT count(*) FROM observability."{table}" WHERE strpos("{column}"::text, $1) > 0',
            needle,
        )
        if n:
            found.append(f"{table}.{column}")
    return found


async def test_planted_secrets_never_reach_a_table_a_dead_letter_or_a_log_line(
    db_dsn: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets of every built-in kind, in every field and 20 levels deep, are stored as markers."""
    chat_col = schema.CHAT_COLUMNS.index("trace_id")

    def refuse_first_chat(event: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        table, row = build(event)
        if table == schema.CHAT_MESSAGES and "poison" in str(row[-1]):
            # Upper-case hex: the CHECK constraint refuses it, so this row is dead-lettered.
            row = (*row[:chat_col], str(row[chat_col]).upper(), *row[chat_col + 1 :])
        return table, row

    monkeypatch.setattr(flusher_module, "build", refuse_first_chat)
    svc = ObservabilityService(db_dsn, redact="all", flush_interval=0.05)
    await svc.start()
    with capture_logs() as logs:
        ctx = svc.start_trace("rag", user_id="u1", kb_id="kb-secret", metadata=nested(20))
        with (
            pytest.raises(ValueError),
            svc.span(ctx, "retrieve", "retrieval", metadata={"q": PLANTED}),
        ):
            raise ValueError(PLANTED)
        svc.log_llm_call(
            ctx,
            model="gpt-x",
            input_tokens=3,
            status="error",
            error_message=PLANTED,
            metadata={"prompt": [{"role": "user", "content": PLANTED}], PLANTED: nested(5)},
        )
        svc.log_chat_message(ctx, role="user", content=PLANTED * 3, metadata=nested(3))
        svc.log_chat_message(ctx, role="user", content=PLANTED, metadata={"poison": PLANTED})
        svc.log_document_event(
            ctx,
            document_id="doc-1",
            event_type="parse",
            status="error",
            error_message=PLANTED,
            metadata=nested(4),
        )
        svc.end_trace(ctx, status="error", error_message=PLANTED, metadata={"x": [PLANTED]})
        assert await svc.flush(timeout=60)
        stats = svc.stats()
        await svc.close()
    assert stats is not None and stats.balances()
    assert (stats.written, stats.dead_lettered, stats.redaction_failures) == (7, 1, 0)
    for kind, secret in SECRETS.items():
        assert await occurrences(pool, secret) == [], kind
        assert await occurrences(pool, secret[-12:]) == [], kind  # nor a recognisable piece
        assert not [e for e in logs if secret in repr(e) or secret[-12:] in repr(e)], kind
    # The rows are there, with the markers where the secrets were.
    content = await pool.fetchval(
        "SELECT content FROM observability.chat_messages WHERE kb_id = 'kb-secret'"
    )
    assert "[email] | [card] | [api_key] | [api_key] | [bearer] | [jwt]" in content
    letter = await pool.fetchval("SELECT row_data FROM observability.dead_letters")
    assert "[jwt]" in letter


TRACES = 20_000
RATE = 0.1
BASE_NS = (time.time_ns() // 60_000_000_000 - 30) * 60_000_000_000  # a whole minute, 30 ago


def trace_events(i: int, trace_id: str, kb: str) -> list[tuple[Any, ...]]:
    """One trace: start, an LLM call (an error every 97th trace), a chat message, end."""
    start = BASE_NS + (i % 5) * 60_000_000_000 + i
    root = f"{i + 1:016x}"
    failed = i % 97 == 0
    common = dict(trace_id=trace_id, user_id="u", session_id="s", kb_id=kb, metadata=None)
    return [
        (
            Event(
                kind=EventKind.TRACE_START, start_ns=start, end_ns=None, span_id=root,
                parent_span_id=None, name="rag", span_type=None, status=None, duration_ms=None,
                error_type=None, error_message=None, detail=None, **common,
            )
        ),
        (
            Event(
                kind=EventKind.SPAN, start_ns=start, end_ns=start + 1, span_id=new_span_id(),
                parent_span_id=root, name="llm.call", span_type="llm",
                status="error" if failed else "ok", duration_ms=float(1 + i % 50),
                error_type="Timeout" if failed else None, error_message=None,
                detail=("m", "p", 10 + i % 7, 3 + i % 5, None, None), **common,
            ).flat()
        ),
        (
            Event(
                kind=EventKind.CHAT, start_ns=start, end_ns=None, span_id=root,
                parent_span_id=None, name=None, span_type=None, status=None, duration_ms=None,
                error_type=None, error_message=None, detail=("user", f"q{i}", 1 + i % 9),
                **common,
            ).flat()
        ),
        (
            Event(
                kind=EventKind.TRACE_END, start_ns=start, end_ns=start + 2, span_id=root,
                parent_span_id=None, name=None, span_type=None, status="ok",
                duration_ms=float(2 + i % 40), error_type=None, error_message=None, detail=None,
                **common,
            ).flat()
        ),
    ]  # fmt: skip


async def run(db_dsn: str, ids: list[str], kb: str, rate: float) -> Any:
    writer = PostgresProvider(
        WriterConfig(
            dsn=db_dsn, flush_interval=0.05, max_buffer_rows=100_000, sample_rate=rate, pool_size=2
        )
    )
    await writer.start()
    for i, trace_id in enumerate(ids):
        for event in trace_events(i, trace_id, kb):
            writer.record(event)
    assert await writer.flush(timeout=240)
    stats = writer.stats()
    await writer.close()
    return stats


ROLLUP_SQL = (
    'SELECT "timestamp", metric, span_type, model, status, count, sum, min, max, histogram '
    "FROM observability.metrics_aggregates WHERE kb_id = $1 "
    'ORDER BY "timestamp", metric, span_type, model, status'
)


async def trace_ids_in(pool: asyncpg.Pool, table: str, kb: str) -> list[str]:
    rows = await pool.fetch(f"SELECT trace_id FROM observability.{table} WHERE kb_id = $1", kb)
    return [r["trace_id"] for r in rows]


async def test_sampling_keeps_a_tenth_of_whole_traces_every_error_and_whole_rollups(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """At 0.1 over 20,000 traces: 10 % ± 1 % kept whole, the rest absent but for errors (with
    their trace row), the ledger balanced with sampled_out, roll-ups equal to an unsampled run."""
    rng = random.Random(1414)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(TRACES)]
    sampled = {t for t in ids if is_sampled(t, RATE)}
    errors = {t for i, t in enumerate(ids) if i % 97 == 0}
    assert 0.09 * TRACES <= len(sampled) <= 0.11 * TRACES

    stats = await run(db_dsn, ids, "kb-sampled", RATE)
    full = await run(db_dsn, ids, "kb-full", 1.0)

    unsampled_errors = errors - sampled
    dropped_traces = len(ids) - len(sampled) - len(unsampled_errors)
    assert stats.balances() and full.balances()
    assert stats.sampled_out == 4 * dropped_traces + len(unsampled_errors)  # errors lose chat
    assert full.sampled_out == 0 and full.written == 4 * TRACES

    traces = await trace_ids_in(pool, "traces", "kb-sampled")
    spans = await trace_ids_in(pool, "spans", "kb-sampled")
    chats = await trace_ids_in(pool, "chat_messages", "kb-sampled")
    assert sorted(traces) == sorted(sampled | errors)  # one row each, errors' included
    assert sorted(spans) == sorted(sampled | errors)
    assert sorted(chats) == sorted(sampled)
    incomplete = await pool.fetchval(
        "SELECT count(*) FROM observability.traces WHERE kb_id = 'kb-sampled' "
        "AND (status <> 'ok' OR duration_ms IS NULL)"
    )
    assert incomplete == 0

    sampled_rollup = [tuple(r) for r in await pool.fetch(ROLLUP_SQL, "kb-sampled")]
    full_rollup = [tuple(r) for r in await pool.fetch(ROLLUP_SQL, "kb-full")]
    assert sampled_rollup and sampled_rollup == full_rollup


async def test_a_raising_redactor_keeps_the_event_with_a_marker_and_counts(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """A user redactor that raises on chat content stores the marker; the failure is counted."""

    def picky(field: str, text: str) -> str:
        if field == "content":
            raise RuntimeError(text)
        return text.replace("ACME", "[customer]")

    svc = ObservabilityService(db_dsn, redact=["default", picky], flush_interval=0.05)
    await svc.start()
    ctx = svc.start_trace("t", kb_id="kb-picky", metadata={"who": "ACME"})
    svc.log_chat_message(ctx, role="user", content="ACME " + SECRETS["openai"])
    svc.end_trace(ctx)
    assert await svc.flush(timeout=60)
    stats = svc.stats()
    await svc.close()
    assert stats is not None and stats.balances() and stats.redaction_failures == 1
    assert stats.written == 3
    content = await pool.fetchval(
        "SELECT content FROM observability.chat_messages WHERE kb_id = 'kb-picky'"
    )
    meta = await pool.fetchval(
        "SELECT metadata->>'who' FROM observability.traces WHERE kb_id = 'kb-picky'"
    )
    assert (content, meta) == ("[redaction_failed]", "[customer]")
