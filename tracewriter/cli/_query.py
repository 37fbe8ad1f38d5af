"""Reading the observability tables back as plain data: the query half of the read commands.

Owns the read-side SQL (named constants below, values only as bind parameters) and the frozen
dataclasses it fills: one trace with its spans, messages and document events, and the
per-model / per-span-type / per-document-stage latency tables from ``metrics_aggregates``;
and :func:`as_json`, the stable, documented form ``--format json`` prints. It knows nothing of
terminals: :mod:`tracewriter.cli._render` draws what it returns, so ``--format json`` works
without the ``cli`` extra. Connection and query failures become one-line
:class:`ReadbackError` messages with the DSN's password redacted.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from tracewriter import _schema as schema
from tracewriter._config import redact_dsn, redact_text
from tracewriter.errors import TracewriterError

__all__ = [
    "COUNTED_TABLES",
    "DocumentRow",
    "LatencyRow",
    "MessageRow",
    "ReadbackError",
    "SpanRow",
    "Stats",
    "TraceNotFoundError",
    "TraceRow",
    "TraceTree",
    "as_json",
    "connect",
    "count_rows",
    "fetch_stats",
    "fetch_trace",
]

CONNECT_TIMEOUT: Final = 10.0
COMMAND_TIMEOUT: Final = 30.0

# --- SQL ---------------------------------------------------------------------------------------
# The schema is the one the migrations in sql/ create. $-parameters carry every value.

# A trace recorded without start_trace (a span or LLM call made with no context is a root
# span of a trace of its own, with no traces row) is described by its root span instead.
TRACE_SQL: Final = """
SELECT trace_id, span_id, name, user_id, session_id, kb_id, status, "timestamp",
       duration_ms, error_type, error_message
FROM (
    SELECT trace_id, span_id, name, user_id, session_id, kb_id, status, "timestamp",
           duration_ms, error_type, error_message, 0 AS source
    FROM observability.traces
    WHERE trace_id = $1
    UNION ALL
    SELECT trace_id, span_id, name, user_id, session_id, kb_id, status, "timestamp",
           duration_ms, error_type, error_message, 1 AS source
    FROM observability.spans
    WHERE trace_id = $1 AND parent_span_id IS NULL
) AS t
ORDER BY source, (status = 'open'), "timestamp"
LIMIT 1
"""

TRACE_SPANS_SQL: Final = """
SELECT span_id, parent_span_id, name, span_type, status, "timestamp", duration_ms,
       error_type, error_message, model, provider, input_tokens, output_tokens,
       cached_input_tokens, reasoning_tokens
FROM observability.spans
WHERE trace_id = $1
ORDER BY "timestamp", span_id
"""

TRACE_MESSAGES_SQL: Final = """
SELECT span_id, role, "timestamp", token_count, content_preview
FROM observability.chat_messages
WHERE trace_id = $1
ORDER BY "timestamp", id
"""

TRACE_DOCUMENTS_SQL: Final = """
SELECT document_id, event_type, status, "timestamp", duration_ms, chunk_count, error_message
FROM observability.document_events
WHERE trace_id = $1
ORDER BY "timestamp", id
"""

# $1: how far back (interval), $2: a kb_id prefix or NULL for every kb. Buckets are whole
# minutes, so the window starts at the minute that holds now() - $1.
_WINDOW: Final = """
"timestamp" >= date_trunc('minute', now() - $1::interval)
AND ($2::text IS NULL OR starts_with(kb_id, $2::text))
"""


# A percentile comes from the merged 1 % sketches (migration 0004), clamped to the smallest and
# largest value seen (a bucket's value can lie just outside them); a window whose rows all
# predate the sketch falls back to the √2 histogram's bucket bound, clamped to the largest.
def _percentile(q: str) -> str:
    return (
        f"coalesce(greatest(least(observability.sketch_quantile(sk, {q}), max_ms), min_ms), "
        f"least(observability.histogram_quantile(hist, {q}), max_ms))"
    )


_PERCENTILES: Final = ", ".join(
    f"{_percentile(q)} AS {name}" for q, name in (("0.5", "p50_ms"), ("0.95", "p95_ms"),
                                                  ("0.99", "p99_ms"))
)  # fmt: skip


# LLM calls (rows with a model) grouped by ``key``: the model, or the knowledge base.
# cost_usd: the sum of the priced calls' cost (NULL when none of them was priced).
# Metric names come from _schema (their one home) as SQL literals: constants, never input.
_SPAN_MS: Final = f"'{schema.METRIC_SPAN_DURATION}'"
_TOKENS_IN: Final = f"'{schema.METRIC_LLM_INPUT_TOKENS}'"
_TOKENS_OUT: Final = f"'{schema.METRIC_LLM_OUTPUT_TOKENS}'"
_COST: Final = f"'{schema.METRIC_LLM_COST}'"


def _llm_stats(key: str) -> str:
    return f"""
SELECT key, calls, errors, input_tokens, output_tokens, cost_usd, avg_ms,
       {_PERCENTILES},
       max_ms
FROM (
    SELECT {key} AS key,
           coalesce(sum(count) FILTER (WHERE metric = {_SPAN_MS}), 0)::bigint AS calls,
           coalesce(sum(count) FILTER (WHERE metric = {_SPAN_MS}
                                         AND status = 'error'), 0)::bigint AS errors,
           coalesce(sum(sum) FILTER (WHERE metric = {_TOKENS_IN}), 0)::bigint
               AS input_tokens,
           coalesce(sum(sum) FILTER (WHERE metric = {_TOKENS_OUT}), 0)::bigint
               AS output_tokens,
           sum(sum) FILTER (WHERE metric = {_COST}) AS cost_usd,
           sum(sum) FILTER (WHERE metric = {_SPAN_MS})
               / nullif(sum(count) FILTER (WHERE metric = {_SPAN_MS}), 0) AS avg_ms,
           observability.sketch_merge(sketch) FILTER (WHERE metric = {_SPAN_MS}) AS sk,
           observability.histogram_sum(histogram) FILTER (WHERE metric = {_SPAN_MS})
               AS hist,
           min(min) FILTER (WHERE metric = {_SPAN_MS}) AS min_ms,
           max(max) FILTER (WHERE metric = {_SPAN_MS}) AS max_ms
    FROM observability.metrics_aggregates
    WHERE metric IN ({_SPAN_MS}, {_TOKENS_IN}, {_TOKENS_OUT}, {_COST})
      AND model <> ''
      AND {_WINDOW}
    GROUP BY 1
) AS m
ORDER BY calls DESC, key
"""


MODEL_STATS_SQL: Final = _llm_stats("model")
KB_STATS_SQL: Final = _llm_stats("nullif(kb_id, '')")

# span.duration_ms rows carry the span type; document.duration_ms rows carry the event type in
# the same dimension column.
_LATENCY_BY_TYPE: Final = f"""
SELECT key, calls, errors, avg_ms,
       {_PERCENTILES},
       max_ms
FROM (
    SELECT span_type AS key,
           sum(count)::bigint AS calls,
           coalesce(sum(count) FILTER (WHERE status = 'error'), 0)::bigint AS errors,
           sum(sum) / nullif(sum(count), 0) AS avg_ms,
           observability.sketch_merge(sketch) AS sk,
           observability.histogram_sum(histogram) AS hist,
           min(min) AS min_ms,
           max(max) AS max_ms
    FROM observability.metrics_aggregates
    WHERE metric = $3
      AND {_WINDOW}
    GROUP BY span_type
) AS t
ORDER BY calls DESC, key
"""
SPAN_TYPE_STATS_SQL: Final = _LATENCY_BY_TYPE
SPAN_TYPE_METRIC: Final = schema.METRIC_SPAN_DURATION
DOCUMENT_METRIC: Final = schema.METRIC_DOCUMENT_DURATION

# Rows per table, optionally only those of one demo run: $1 a kb_id prefix (or NULL for all),
# $2 the earliest "timestamp" (or NULL). dead_letters keeps no kb_id: only $2 applies there.
COUNT_ROWS_SQL: Final = """
SELECT
  (SELECT count(*) FROM observability.traces
    WHERE ($1::text IS NULL OR starts_with(kb_id, $1::text))
      AND ($2::timestamptz IS NULL OR "timestamp" >= $2::timestamptz)) AS traces,
  (SELECT count(*) FROM observability.spans
    WHERE ($1::text IS NULL OR starts_with(kb_id, $1::text))
      AND ($2::timestamptz IS NULL OR "timestamp" >= $2::timestamptz)) AS spans,
  (SELECT count(*) FROM observability.chat_messages
    WHERE ($1::text IS NULL OR starts_with(kb_id, $1::text))
      AND ($2::timestamptz IS NULL OR "timestamp" >= $2::timestamptz)) AS chat_messages,
  (SELECT count(*) FROM observability.document_events
    WHERE ($1::text IS NULL OR starts_with(kb_id, $1::text))
      AND ($2::timestamptz IS NULL OR "timestamp" >= $2::timestamptz)) AS document_events,
  (SELECT count(*) FROM observability.metrics_aggregates
    WHERE ($1::text IS NULL OR starts_with(kb_id, $1::text))
      AND ($2::timestamptz IS NULL OR "timestamp" >= date_trunc('minute', $2::timestamptz)))
      AS metrics_aggregates,
  (SELECT count(*) FROM observability.dead_letters
    WHERE ($2::timestamptz IS NULL OR created_at >= $2::timestamptz)) AS dead_letters
"""

COUNTED_TABLES: Final = (
    "traces",
    "spans",
    "chat_messages",
    "document_events",
    "metrics_aggregates",
    "dead_letters",
)


# --- errors and connections ------------------------------------------------------------------


class ReadbackError(TracewriterError):
    """The database could not be reached or read; the message is one line, password-free."""


class TraceNotFoundError(ReadbackError):
    """No trace with the requested id exists in the database."""


def _describe(exc: BaseException, dsn: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in {"42P01", "3F000", "42883"}:
        text += " (is the schema migrated? run `tracewriter migrate`)"
    return redact_text(text, dsn)


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection to ``dsn``; a :class:`ReadbackError` naming the redacted DSN if it fails."""
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
    except Exception as exc:  # OSError, asyncpg errors, invalid DSNs (ValueError): all alike
        raise ReadbackError(f"cannot connect to {redact_dsn(dsn)}: {_describe(exc, dsn)}") from None


async def _fetch(conn: asyncpg.Connection, dsn: str, sql: str, *args: Any) -> list[Any]:
    try:
        return list(await conn.fetch(sql, *args))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise ReadbackError(f"cannot read {redact_dsn(dsn)}: {_describe(exc, dsn)}") from None


# --- one trace ---------------------------------------------------------------------------------
# Each dataclass's fields are the columns its SQL above selects, by name: the row fills it by
# keyword, and ``--format json`` prints the same names.


@dataclass(frozen=True, slots=True)
class TraceRow:
    """The traces row of one trace."""

    trace_id: str
    span_id: str
    name: str | None
    user_id: str | None
    session_id: str | None
    kb_id: str | None
    status: str
    timestamp: _dt.datetime
    duration_ms: float | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class SpanRow:
    """One span of a trace (an LLM call is a span of type ``llm``); ``timestamp`` is its start."""

    span_id: str
    parent_span_id: str | None
    name: str | None
    span_type: str | None
    status: str
    timestamp: _dt.datetime
    duration_ms: float | None
    error_type: str | None
    error_message: str | None
    model: str | None
    provider: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    reasoning_tokens: int | None


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One chat message of a trace."""

    span_id: str | None
    role: str
    timestamp: _dt.datetime
    token_count: int | None
    content_preview: str


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """One document event of a trace; ``timestamp`` is when it was recorded (its end)."""

    document_id: str
    event_type: str
    status: str
    timestamp: _dt.datetime
    duration_ms: float | None
    chunk_count: int | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class TraceTree:
    """Everything recorded under one trace id."""

    trace: TraceRow
    spans: list[SpanRow]
    messages: list[MessageRow]
    documents: list[DocumentRow]


async def fetch_trace(conn: asyncpg.Connection, dsn: str, trace_id: str) -> TraceTree:
    """Read trace ``trace_id`` with its spans, messages and document events.

    Raises :class:`TraceNotFoundError` when no such trace exists. ``dsn`` only names the
    database in error messages.
    """
    rows = await _fetch(conn, dsn, TRACE_SQL, trace_id)
    if not rows:
        raise TraceNotFoundError(f"no trace {trace_id} in {redact_dsn(dsn)}")
    spans = await _fetch(conn, dsn, TRACE_SPANS_SQL, trace_id)
    messages = await _fetch(conn, dsn, TRACE_MESSAGES_SQL, trace_id)
    documents = await _fetch(conn, dsn, TRACE_DOCUMENTS_SQL, trace_id)
    return TraceTree(
        trace=TraceRow(**rows[0]),
        spans=[SpanRow(**s) for s in spans],
        messages=[MessageRow(**m) for m in messages],
        documents=[DocumentRow(**d) for d in documents],
    )


# --- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Calls and latency of one model, span type or document stage over the window.

    ``key`` is the model, span type or document stage (None where the roll-up had none).
    Percentiles are read from the merged sketches: within 1 % of the exact value of the same
    rank (``percentile_disc``), clamped to the window's smallest and largest value. A window
    written entirely before migration 0004 falls back to the √2 histogram's bucket bounds.
    ``cost_usd`` (models only) sums the calls that could be priced; None if none could.
    """

    key: str | None
    calls: int
    errors: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """The per-model, per-knowledge-base (LLM calls), per-span-type and per-document-stage
    tables over ``since``."""

    since: _dt.timedelta
    models: list[LatencyRow] = field(default_factory=list)
    knowledge_bases: list[LatencyRow] = field(default_factory=list)
    span_types: list[LatencyRow] = field(default_factory=list)
    document_stages: list[LatencyRow] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether nothing was recorded in the window."""
        return not (self.models or self.span_types or self.document_stages)


def _latency(r: Mapping[str, Any], key: str) -> LatencyRow:
    return LatencyRow(
        key=r[key],
        calls=r["calls"],
        errors=r["errors"],
        avg_ms=r["avg_ms"],
        p50_ms=r["p50_ms"],
        p95_ms=r["p95_ms"],
        p99_ms=r["p99_ms"],
        max_ms=r["max_ms"],
        input_tokens=r.get("input_tokens", 0),
        output_tokens=r.get("output_tokens", 0),
        cost_usd=r.get("cost_usd"),
    )


async def fetch_stats(
    conn: asyncpg.Connection, dsn: str, since: _dt.timedelta, *, kb_prefix: str | None = None
) -> Stats:
    """Per-model, per-knowledge-base, per-span-type and per-document-stage figures of the
    last ``since``.

    ``kb_prefix`` keeps only the roll-ups whose kb_id starts with it (the demo's own run).
    """
    models = await _fetch(conn, dsn, MODEL_STATS_SQL, since, kb_prefix)
    kbs = await _fetch(conn, dsn, KB_STATS_SQL, since, kb_prefix)
    types = await _fetch(conn, dsn, SPAN_TYPE_STATS_SQL, since, kb_prefix, SPAN_TYPE_METRIC)
    stages = await _fetch(conn, dsn, SPAN_TYPE_STATS_SQL, since, kb_prefix, DOCUMENT_METRIC)
    return Stats(
        since=since,
        models=[_latency(dict(r), "key") for r in models],
        knowledge_bases=[_latency(dict(r), "key") for r in kbs],
        span_types=[_latency(dict(r), "key") for r in types],
        document_stages=[_latency(dict(r), "key") for r in stages],
    )


async def count_rows(
    conn: asyncpg.Connection,
    dsn: str,
    *,
    kb_prefix: str | None = None,
    since: _dt.datetime | None = None,
) -> dict[str, int]:
    """Rows per table (see :data:`COUNTED_TABLES`), optionally only one kb prefix and after
    ``since``."""
    rows = await _fetch(conn, dsn, COUNT_ROWS_SQL, kb_prefix, since)
    return {table: int(rows[0][table]) for table in COUNTED_TABLES}


# --- the JSON form ---------------------------------------------------------------------------
# What `--format json` prints, documented in the README: scripts depend on these keys, so a
# key is added, never renamed or removed. Times are ISO 8601 with their offset, durations in ms.

# The name each stats table gives its rows' key, and whether its rows carry token sums.
_STATS_TABLES: Final = (
    ("models", "model", True),
    ("knowledge_bases", "kb_id", True),
    ("span_types", "span_type", False),
    ("document_stages", "event_type", False),
)


def _plain(row: Any) -> dict[str, Any]:
    return {f.name: _json_value(getattr(row, f.name)) for f in dataclasses.fields(row)}


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, _dt.datetime) else value


def as_json(data: TraceTree | Stats) -> dict[str, Any]:
    """``data`` as JSON-ready plain values with stable keys (see the README's CLI section)."""
    if isinstance(data, TraceTree):
        return {
            "trace": _plain(data.trace),
            "spans": [_plain(s) for s in data.spans],
            "messages": [_plain(m) for m in data.messages],
            "documents": [_plain(d) for d in data.documents],
        }
    out: dict[str, Any] = {"since_seconds": data.since.total_seconds()}
    for table, key, tokens in _STATS_TABLES:
        rows = []
        for r in getattr(data, table):
            row = {key: r.key, "calls": r.calls, "errors": r.errors}
            if tokens:
                row |= {
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cost_usd": r.cost_usd,
                }
            row |= {
                "avg_ms": r.avg_ms, "p50_ms": r.p50_ms, "p95_ms": r.p95_ms,
                "p99_ms": r.p99_ms, "max_ms": r.max_ms,
            }  # fmt: skip
            rows.append(row)
        out[table] = rows
    return out
