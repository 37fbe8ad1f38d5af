"""Reading the observability tables back, and showing what was read in a terminal.

Owns the read-side SQL (named constants below, values only as bind parameters) and its
rendering with ``rich``: one trace as a waterfall tree, and per-model / per-span-type latency
tables from ``metrics_aggregates``. Used by ``tracewriter trace``, ``tracewriter stats`` and the
demo; the writer never imports it, so the library stays usable without the ``cli`` extra.
Connection and query failures become one-line :class:`ReadbackError` messages with the DSN's
password redacted.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

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
    "connect",
    "count_rows",
    "fetch_stats",
    "fetch_trace",
    "render_stats",
    "render_trace",
]

CONNECT_TIMEOUT: Final = 10.0
COMMAND_TIMEOUT: Final = 30.0

# --- SQL ---------------------------------------------------------------------------------------
# The schema is the one the migrations in sql/ create. $-parameters carry every value.

TRACE_SQL: Final = """
SELECT trace_id, span_id, name, user_id, session_id, kb_id, status, "timestamp",
       duration_ms, error_type, error_message
FROM observability.traces
WHERE trace_id = $1
ORDER BY (status = 'open'), "timestamp"
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

# Percentiles are clamped to the largest value seen: a bucket's upper bound can exceed it.
MODEL_STATS_SQL: Final = f"""
SELECT model, calls, errors, input_tokens, output_tokens, avg_ms,
       least(observability.histogram_quantile(hist, 0.5), max_ms) AS p50_ms,
       least(observability.histogram_quantile(hist, 0.95), max_ms) AS p95_ms,
       least(observability.histogram_quantile(hist, 0.99), max_ms) AS p99_ms,
       max_ms
FROM (
    SELECT model,
           coalesce(sum(count) FILTER (WHERE metric = 'span.duration_ms'), 0)::bigint AS calls,
           coalesce(sum(count) FILTER (WHERE metric = 'span.duration_ms'
                                         AND status = 'error'), 0)::bigint AS errors,
           coalesce(sum(sum) FILTER (WHERE metric = 'llm.input_tokens'), 0)::bigint
               AS input_tokens,
           coalesce(sum(sum) FILTER (WHERE metric = 'llm.output_tokens'), 0)::bigint
               AS output_tokens,
           sum(sum) FILTER (WHERE metric = 'span.duration_ms')
               / nullif(sum(count) FILTER (WHERE metric = 'span.duration_ms'), 0) AS avg_ms,
           observability.histogram_sum(histogram) FILTER (WHERE metric = 'span.duration_ms')
               AS hist,
           max(max) FILTER (WHERE metric = 'span.duration_ms') AS max_ms
    FROM observability.metrics_aggregates
    WHERE metric IN ('span.duration_ms', 'llm.input_tokens', 'llm.output_tokens')
      AND model <> ''
      AND {_WINDOW}
    GROUP BY model
) AS m
ORDER BY calls DESC, model
"""

# span.duration_ms rows carry the span type; document.duration_ms rows carry the event type in
# the same dimension column.
_LATENCY_BY_TYPE: Final = f"""
SELECT key, calls, errors, avg_ms,
       least(observability.histogram_quantile(hist, 0.5), max_ms) AS p50_ms,
       least(observability.histogram_quantile(hist, 0.95), max_ms) AS p95_ms,
       least(observability.histogram_quantile(hist, 0.99), max_ms) AS p99_ms,
       max_ms
FROM (
    SELECT span_type AS key,
           sum(count)::bigint AS calls,
           coalesce(sum(count) FILTER (WHERE status = 'error'), 0)::bigint AS errors,
           sum(sum) / nullif(sum(count), 0) AS avg_ms,
           observability.histogram_sum(histogram) AS hist,
           max(max) AS max_ms
    FROM observability.metrics_aggregates
    WHERE metric = $3
      AND {_WINDOW}
    GROUP BY span_type
) AS t
ORDER BY calls DESC, key
"""
SPAN_TYPE_STATS_SQL: Final = _LATENCY_BY_TYPE
SPAN_TYPE_METRIC: Final = "span.duration_ms"
DOCUMENT_METRIC: Final = "document.duration_ms"

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
    start: _dt.datetime
    duration_ms: float | None
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class SpanRow:
    """One span of a trace (an LLM call is a span of type ``llm``)."""

    span_id: str
    parent_span_id: str | None
    name: str | None
    span_type: str | None
    status: str
    start: _dt.datetime
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
    start: _dt.datetime
    token_count: int | None
    preview: str


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """One document event of a trace; ``start`` is when it was recorded (its end)."""

    document_id: str
    event_type: str
    status: str
    start: _dt.datetime
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
    r = rows[0]
    return TraceTree(
        trace=TraceRow(
            r["trace_id"], r["span_id"], r["name"], r["user_id"], r["session_id"], r["kb_id"],
            r["status"], r["timestamp"], r["duration_ms"], r["error_type"], r["error_message"],
        ),
        spans=[
            SpanRow(
                s["span_id"], s["parent_span_id"], s["name"], s["span_type"], s["status"],
                s["timestamp"], s["duration_ms"], s["error_type"], s["error_message"],
                s["model"], s["provider"], s["input_tokens"], s["output_tokens"],
                s["cached_input_tokens"], s["reasoning_tokens"],
            )
            for s in spans
        ],
        messages=[
            MessageRow(m["span_id"], m["role"], m["timestamp"], m["token_count"],
                       m["content_preview"])
            for m in messages
        ],
        documents=[
            DocumentRow(d["document_id"], d["event_type"], d["status"], d["timestamp"],
                        d["duration_ms"], d["chunk_count"], d["error_message"])
            for d in documents
        ],
    )  # fmt: skip


# --- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Calls and latency of one model, span type or document stage over the window.

    Percentiles are read from the log-scale histogram: each is the upper bound of the bucket
    holding it, so it overstates the exact value by at most a factor of √2.
    """

    key: str
    calls: int
    errors: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """The per-model, per-span-type and per-document-stage tables over ``since``."""

    since: _dt.timedelta
    models: list[LatencyRow] = field(default_factory=list)
    span_types: list[LatencyRow] = field(default_factory=list)
    document_stages: list[LatencyRow] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether nothing was recorded in the window."""
        return not (self.models or self.span_types or self.document_stages)


def _latency(r: Mapping[str, Any], key: str) -> LatencyRow:
    return LatencyRow(
        key=r[key] or "(none)",
        calls=r["calls"],
        errors=r["errors"],
        avg_ms=r["avg_ms"],
        p50_ms=r["p50_ms"],
        p95_ms=r["p95_ms"],
        p99_ms=r["p99_ms"],
        max_ms=r["max_ms"],
        input_tokens=r.get("input_tokens", 0),
        output_tokens=r.get("output_tokens", 0),
    )


async def fetch_stats(
    conn: asyncpg.Connection, dsn: str, since: _dt.timedelta, *, kb_prefix: str | None = None
) -> Stats:
    """Per-model, per-span-type and per-document-stage figures of the last ``since``.

    ``kb_prefix`` keeps only the roll-ups whose kb_id starts with it (the demo's own run).
    """
    models = await _fetch(conn, dsn, MODEL_STATS_SQL, since, kb_prefix)
    types = await _fetch(conn, dsn, SPAN_TYPE_STATS_SQL, since, kb_prefix, SPAN_TYPE_METRIC)
    stages = await _fetch(conn, dsn, SPAN_TYPE_STATS_SQL, since, kb_prefix, DOCUMENT_METRIC)
    return Stats(
        since=since,
        models=[_latency(dict(r), "model") for r in models],
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


# --- rendering: a trace as a waterfall -----------------------------------------------------------

_TYPE_STYLES: Final[dict[str, str]] = {
    "llm": "magenta",
    "retrieval": "cyan",
    "embedding": "blue",
    "rerank": "green",
    "tool": "yellow",
    "chain": "white",
    "document": "bright_cyan",
    "message": "bright_black",
}
_EIGHTHS: Final = " ▏▎▍▌▋▊▉"
_GUIDE_WIDTH: Final = 4  # rich's tree guides are four cells per level
_NAME_MAX: Final = 30


@dataclass(slots=True)
class _Line:
    depth: int
    name: str
    kind: str
    offset_ms: float
    duration_ms: float | None
    status: str
    detail: str
    children: list[_Line] = field(default_factory=list)


def _ms(delta: _dt.timedelta) -> float:
    return delta.total_seconds() * 1000.0


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def _span_detail(s: SpanRow) -> str:
    parts: list[str] = []
    if s.model:
        parts.append(f"{s.model}" + (f" ({s.provider})" if s.provider else ""))
    if s.input_tokens is not None or s.output_tokens is not None:
        tokens = f"{s.input_tokens or 0:,}→{s.output_tokens or 0:,} tok"
        if s.cached_input_tokens:
            tokens += f", {s.cached_input_tokens:,} cached"
        if s.reasoning_tokens:
            tokens += f", {s.reasoning_tokens:,} reasoning"
        parts.append(tokens)
    if s.status == "error":
        err = ": ".join(x for x in (s.error_type, s.error_message) if x) or "error"
        parts.append(f"✗ {err}")
    elif s.status == "open":
        parts.append("(still open)")
    return "  ".join(parts)


def _build_lines(tree: TraceTree) -> tuple[_Line, float]:
    """The trace as nested lines, with offsets from the trace's start; and the window length."""
    t0 = tree.trace.start
    root = _Line(
        0,
        tree.trace.name or "trace",
        "trace",
        0.0,
        tree.trace.duration_ms,
        tree.trace.status,
        "",
    )
    by_span: dict[str, _Line] = {tree.trace.span_id: root}
    lines_of: list[tuple[SpanRow, _Line]] = []
    for s in tree.spans:
        line = _Line(
            0,
            s.name or s.span_type or "span",
            s.span_type or "span",
            _ms(s.start - t0),
            s.duration_ms,
            s.status,
            _span_detail(s),
        )
        by_span[s.span_id] = line
        lines_of.append((s, line))
    for s, line in lines_of:
        parent = by_span.get(s.parent_span_id or "", root)
        (parent if parent is not line else root).children.append(line)
    for m in tree.messages:
        text = " ".join(m.preview.split())
        detail = (f"{m.token_count} tok  " if m.token_count is not None else "") + f"“{text}”"
        by_span.get(m.span_id or "", root).children.append(
            _Line(0, f"{m.role} message", "message", _ms(m.start - t0), None, "ok", detail)
        )
    for d in tree.documents:
        end = _ms(d.start - t0)
        detail = f"{d.document_id}" + (f"  {d.chunk_count} chunks" if d.chunk_count else "")
        if d.status == "error":
            detail += f"  ✗ {d.error_message or 'error'}"
        start = end - d.duration_ms if d.duration_ms is not None else end
        root.children.append(
            _Line(0, d.event_type, "document", start, d.duration_ms, d.status, detail)
        )

    def settle(line: _Line, depth: int) -> None:
        line.depth = depth
        line.children.sort(key=lambda c: c.offset_ms)
        for child in line.children:
            settle(child, depth + 1)

    settle(root, 0)
    everything = list(_walk(root))
    begin = min(0.0, *(x.offset_ms for x in everything))
    if begin < 0:  # a child recorded as starting before the trace: shift the whole picture
        for x in everything:
            x.offset_ms -= begin
    window = max(
        (x.offset_ms + (x.duration_ms or 0.0) for x in everything),
        default=0.0,
    )
    return root, max(window, 1e-3)


def _walk(line: _Line) -> Iterable[_Line]:
    yield line
    for child in line.children:
        yield from _walk(child)


def _bar(offset: float, duration: float | None, window: float, width: int) -> str:
    """A bar of ``width`` cells: blank up to ``offset``, then ``duration`` in eighths of a cell."""
    start = min(int(offset / window * width), width - 1)
    if duration is None:
        return (" " * start + "◆").ljust(width)
    eighths = max(1, round(duration / window * width * 8))
    full, rest = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[rest] if rest else "")
    return (" " * start + bar)[:width].ljust(width)


def render_trace(tree: TraceTree, *, width: int = 100) -> RenderableType:
    """The trace as a rich renderable: a header line and a waterfall tree.

    Each line shows the span's bar on a shared time axis (offsets from the trace start), its
    start offset and duration, and the model, tokens or error where there is one.
    """
    root, window = _build_lines(tree)
    lines = list(_walk(root))
    name_width = min(
        max(len(x.name) + _GUIDE_WIDTH * x.depth for x in lines) + 1,
        _NAME_MAX + _GUIDE_WIDTH * 3,
    )
    # name | bar | "  +offset  duration  " | details get what is left
    bar_width = max(16, min(48, width - name_width - 24 - 28))

    def label(x: _Line) -> Text:
        indent = _GUIDE_WIDTH * x.depth
        name = x.name[: max(name_width - indent - 1, 4)].ljust(name_width - indent)
        text = Text(no_wrap=True, overflow="ellipsis")
        failed = x.status == "error"
        text.append(name, style="bold red" if failed else ("bold" if x.depth == 0 else ""))
        style = "red" if failed else _TYPE_STYLES.get(x.kind, "white")
        text.append(_bar(x.offset_ms, x.duration_ms, window, bar_width), style=style)
        text.append(f" {'+' + _fmt_ms(x.offset_ms):>10} ", style="dim")
        text.append(f"{_fmt_ms(x.duration_ms):>8}", style="bold" if x.depth == 0 else "")
        if x.detail:
            text.append("  " + x.detail, style="red" if failed else "dim")
        return text

    def grow(node: Tree, x: _Line) -> None:
        for child in x.children:
            grow(node.add(label(child)), child)

    top = Tree(label(root), guide_style="bright_black")
    grow(top, root)

    t = tree.trace
    header = Text()
    header.append("trace ", style="bold")
    header.append(t.trace_id, style="bold cyan")
    status_style = {"ok": "green", "error": "bold red"}.get(t.status, "yellow")
    header.append("  status ", style="dim")
    header.append(t.status, style=status_style)
    header.append(f"  {_fmt_ms(t.duration_ms)}", style="bold")
    who = "  ".join(
        f"{k} {v}"
        for k, v in (
            ("started", t.start.isoformat(timespec="milliseconds")),
            ("user", t.user_id),
            ("session", t.session_id),
            ("kb", t.kb_id),
        )
        if v
    )
    parts: list[RenderableType] = [header, Text(who, style="dim")]
    if t.status == "error" and (t.error_type or t.error_message):
        err = ": ".join(x for x in (t.error_type, t.error_message) if x)
        parts.append(Text(f"✗ {err}", style="red"))
    span_count = len(tree.spans)
    parts.append(
        Text(
            f"{span_count} span{'s' * (span_count != 1)}, {len(tree.messages)} messages"
            + (f", {len(tree.documents)} document events" if tree.documents else ""),
            style="dim",
        )
    )
    parts.append(top)
    return Group(*parts)


# --- rendering: statistics -------------------------------------------------------------------


def _since_text(since: _dt.timedelta) -> str:
    seconds = int(since.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _number_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _compact(count: int) -> str:
    if count < 100_000:
        return f"{count:,}"
    if count < 10_000_000:
        return f"{count / 1000:,.0f}k"
    return f"{count / 1_000_000:,.1f}M"


def _latency_table(title: str, key: str, rows: Sequence[LatencyRow], *, tokens: bool) -> Table:
    # No vertical rules and units in the headers: the model table fits 80 columns.
    table = Table(
        title=f"{title} · latency in ms",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),  # with the box's blank column rule: two spaces between columns
    )
    table.add_column(key, no_wrap=True)
    table.add_column("calls", justify="right")
    table.add_column("err", justify="right")
    if tokens:
        table.add_column("tok in", justify="right")
        table.add_column("tok out", justify="right")
    for name in ("p50", "p95", "p99", "max"):
        table.add_column(name, justify="right")
    for r in rows:
        cells: list[RenderableType] = [
            r.key,
            f"{r.calls:,}",
            Text(f"{r.errors:,}", style="red" if r.errors else ""),
        ]
        if tokens:
            cells += [_compact(r.input_tokens), _compact(r.output_tokens)]
        cells += [_number_ms(v) for v in (r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms)]
        table.add_row(*cells)
    return table


def render_stats(stats: Stats, *, window: str | None = None) -> RenderableType:
    """The per-model, per-span-type and per-document-stage tables of ``stats``.

    ``window`` names the time span in the titles (default: "last 1h" and the like).
    """
    window = window or f"last {_since_text(stats.since)}"
    if stats.empty:
        return Text(f"nothing recorded ({window})", style="yellow")
    parts: list[RenderableType] = []
    if stats.models:
        parts.append(
            _latency_table(f"LLM calls by model ({window})", "model", stats.models,
                           tokens=True)
        )  # fmt: skip
    if stats.span_types:
        parts.append(
            _latency_table(f"Spans by type ({window})", "span type", stats.span_types,
                           tokens=False)
        )  # fmt: skip
    if stats.document_stages:
        parts.append(
            _latency_table(f"Document stages ({window})", "stage", stats.document_stages,
                           tokens=False)
        )  # fmt: skip
    parts.append(
        Text(
            "Percentiles come from the log-scale histograms in metrics_aggregates: each is the "
            "upper bound of its bucket (at most √2 above the exact value, never above max).",
            style="dim",
        )
    )
    return Group(*parts)
