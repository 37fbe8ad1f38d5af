"""Hostile strings are data: SQL- and COPY-looking values in every caller-supplied field are stored
verbatim, and no configured name reaches SQL text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from tracewriter import ConfigurationError, ObservabilityService
from tracewriter._records import clean_text

pytestmark = pytest.mark.timeout(60)

HOSTILE = [
    "'); DROP TABLE observability.spans; --",
    "x' OR '1'='1",
    "''",
    '"; DROP SCHEMA observability CASCADE; --',
    "$1",
    "$1::text, $2",
    "%s %(name)s {0}",
    "$$; DROP TABLE observability.traces; $$",
    "$tw$ $tw$",
    "\\",
    "\\\\",
    "\\.",
    "\\.\n",
    "\\N",
    "\\copy observability.spans FROM '/etc/passwd'",
    "COPY observability.spans FROM PROGRAM 'id'",
    "E'\\x41\\000'",
    "a\tb\nc\rd",
    "\t",
    "\n",
    "\\t\\n\\r",
    "/* */ -- ;",
    "NULL",
    "\x1a\x04\x7f",
    "\u2028\u2029\ufeff",
    "😀'; --",
]


class HostileError(Exception):
    """An application error whose message is hostile."""


def _hostile_error_type(text: str) -> type[Exception]:
    # An exception class whose name is itself hostile: error_type is caller-controlled too.
    return type(text, (HostileError,), {})


@dataclass
class Recorded:
    """What one hostile string was recorded as: the ids to find its rows by."""

    text: str
    provider_name: str
    trace_id: str
    span_id: str
    llm_id: str


def record(svc: ObservabilityService, text: str, provider_name: str) -> Recorded:
    """Pass ``text`` in every caller-supplied field of every recording call."""
    meta = metadata_of(text)
    ctx = svc.start_trace(text, user_id=text, session_id=text, kb_id=text, metadata=meta)
    with pytest.raises(HostileError), svc.span(ctx, text, text, meta) as span_id:
        raise _hostile_error_type(text)(text)
    llm_id = svc.log_llm_call(
        ctx, model=text, provider=text, status=text, error_message=text, name=text, metadata=meta
    )
    svc.log_chat_message(ctx, role=text, content=text, metadata=meta)
    svc.log_document_event(
        ctx, document_id=text, event_type=text, status=text, error_message=text, metadata=meta
    )
    svc.end_trace(ctx, status=text, error_message=text, metadata=meta)
    return Recorded(text, provider_name, ctx.trace_id, span_id, llm_id)


def metadata_of(text: str) -> dict[str, Any]:
    return {text: text, "nested": {text: [text, {"k": text}]}}


async def check(conn: asyncpg.Connection, rec: Recorded) -> None:
    """Every field of every row ``rec`` wrote holds the text verbatim (cut to its column)."""
    text = rec.text
    meta = metadata_of(text)

    def cut(limit: int) -> str:
        return text[:limit]

    async def row(sql: str, key: str) -> asyncpg.Record:
        found = await conn.fetchrow(sql, key)
        assert found is not None, (sql, text)
        assert json.loads(found["metadata"]) == meta, text
        return found

    trace = await row("SELECT * FROM observability.traces WHERE trace_id = $1", rec.trace_id)
    fields = ("name", "user_id", "session_id", "kb_id", "error_message")
    assert [trace[c] for c in fields] == [text] * 5, text
    assert trace["status"] == cut(32), text

    span = await row("SELECT * FROM observability.spans WHERE span_id = $1", rec.span_id)
    assert (span["name"], span["span_type"], span["status"]) == (text, cut(64), "error")
    assert (span["error_type"], span["error_message"]) == (cut(256), text)
    assert (span["user_id"], span["session_id"], span["kb_id"]) == (text, text, text)

    llm = await row("SELECT * FROM observability.spans WHERE span_id = $1", rec.llm_id)
    assert (llm["name"], llm["model"], llm["provider"]) == (text, text, text)
    assert (llm["status"], llm["error_message"]) == (cut(32), text)

    chat = await row("SELECT * FROM observability.chat_messages WHERE trace_id = $1", rec.trace_id)
    assert (chat["role"], chat["content"], chat["content_preview"]) == (cut(64), text, text)

    doc = await row("SELECT * FROM observability.document_events WHERE trace_id = $1", rec.trace_id)
    assert (doc["document_id"], doc["kb_id"], doc["error_message"]) == (text, text, text)
    assert (doc["event_type"], doc["status"]) == (cut(64), cut(32))

    for table, rows in (("traces", 1), ("spans", 2), ("chat_messages", 1), ("document_events", 1)):
        count = await conn.fetchval(
            f"SELECT count(*) FROM observability.{table} WHERE trace_id = $1", rec.trace_id
        )
        assert count == rows, (table, text)  # each row once

    provider = await conn.fetchval(
        "SELECT provider FROM observability.provider_sync_status WHERE provider = $1",
        rec.provider_name,
    )
    assert provider == rec.provider_name


async def test_hostile_strings_in_every_field_are_stored_as_data(db_dsn: str) -> None:
    """Each hostile string, passed in every caller-supplied field (names, ids, statuses,
    messages, content, metadata keys and values, exception type and message, the provider name
    in the configuration), is stored verbatim up to its column's documented length, and the
    schema is untouched."""
    recorded: list[Recorded] = []
    for text in HOSTILE:
        assert clean_text(text, None) == text  # nothing here is the sanitiser's business
        provider_name = f"p{text}"  # blank names are refused as configuration
        async with ObservabilityService(
            db_dsn, flush_interval=0.05, provider_name=provider_name
        ) as svc:
            rec = record(svc, text, provider_name)
            assert await svc.flush(timeout=30)
            stats = svc.stats()
        assert stats is not None and stats.balances(), text
        assert stats.written == stats.enqueued and stats.dead_lettered == 0, text
        recorded.append(rec)
    conn = await asyncpg.connect(db_dsn)
    try:
        for rec in recorded:
            await check(conn, rec)
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'observability' "
            "AND tablename IN ('traces', 'spans', 'chat_messages', 'document_events')"
        )
        assert tables == 4
    finally:
        await conn.close()


def test_a_schema_setting_is_refused_by_name() -> None:
    """There is one schema, `observability`: a `schema=` option is refused as an unknown
    setting rather than accepted and ignored, so no configured name can reach SQL text."""
    dsn = "postgresql://postgres@127.0.0.1:1/none"
    with pytest.raises(ConfigurationError, match=r"unknown WriterConfig setting.*'schema'"):
        ObservabilityService(dsn, schema="elsewhere")
