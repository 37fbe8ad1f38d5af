"""The column layout of the observability tables, as the writer sees it.

Owns only names: the order of the columns in every row tuple the writer builds, which is also
the order the sink names them in COPY and in its statements. It imports nothing; the SQL
that creates these tables lives in ``sql/``.
"""

from __future__ import annotations

from typing import Any, Final

# What the writer builds for each table: one value per column, in the order below.
Row = tuple[Any, ...]

TRACES: Final = "traces"
SPANS: Final = "spans"
CHAT_MESSAGES: Final = "chat_messages"
DOCUMENT_EVENTS: Final = "document_events"
METRICS_AGGREGATES: Final = "metrics_aggregates"

TRACE_COLUMNS: Final = (
    "id",
    "timestamp",
    "trace_id",
    "span_id",
    "name",
    "user_id",
    "session_id",
    "kb_id",
    "status",
    "duration_ms",
    "error_type",
    "error_message",
    "metadata",
)

SPAN_COLUMNS: Final = (
    "id",
    "timestamp",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "span_type",
    "status",
    "duration_ms",
    "error_type",
    "error_message",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "user_id",
    "session_id",
    "kb_id",
    # the cost of an LLM call (migration 0004), priced when the row is built; metadata stays
    # last
    "cost_usd",
    "price_source",
    "price_version",
    "metadata",
)

CHAT_COLUMNS: Final = (
    "id",
    "timestamp",
    "trace_id",
    "span_id",
    "session_id",
    "user_id",
    "kb_id",
    "role",
    "content",
    "content_preview",
    "token_count",
    "metadata",
)

DOCUMENT_COLUMNS: Final = (
    "id",
    "timestamp",
    "trace_id",
    "kb_id",
    "document_id",
    "event_type",
    "status",
    "duration_ms",
    "chunk_count",
    "error_type",
    "error_message",
    "metadata",
)

# The columns of metrics_aggregates the writer supplies, and the dimensions of its unique key.
METRIC_COLUMNS: Final = (
    "id",
    "timestamp",
    "metric",
    "span_type",
    "model",
    "kb_id",
    "status",
    "count",
    "sum",
    "min",
    "max",
    "histogram",
    "sketch",
)

COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    TRACES: TRACE_COLUMNS,
    SPANS: SPAN_COLUMNS,
    CHAT_MESSAGES: CHAT_COLUMNS,
    DOCUMENT_EVENTS: DOCUMENT_COLUMNS,
}

# Tables whose rows can be written open and completed later by an end-upsert.
UPSERTABLE: Final = (TRACES, SPANS)

# Columns an end-upsert overwrites on an existing row (the start's name/ids are kept).
END_UPDATE_COLUMNS: Final = ("status", "duration_ms", "error_type", "error_message")

# Columns an end-upsert fills in only where the end knows them (a span handle's model and
# tokens, known when a stream finishes): an end that does not must not erase the start's.
END_FILL_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    SPANS: (
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "cost_usd",
        "price_source",
        "price_version",
    ),
}

HISTOGRAM_BUCKETS: Final = 40


# The metrics the writer rolls up into metrics_aggregates, by name: what the roll-up writes and
# what `tracewriter stats` reads (and the README documents).
METRIC_SPAN_DURATION: Final = "span.duration_ms"
METRIC_LLM_INPUT_TOKENS: Final = "llm.input_tokens"
METRIC_LLM_OUTPUT_TOKENS: Final = "llm.output_tokens"
METRIC_LLM_COST: Final = "llm.cost_usd"
METRIC_TRACE_DURATION: Final = "trace.duration_ms"
METRIC_DOCUMENT_DURATION: Final = "document.duration_ms"
METRIC_CHAT_TOKENS: Final = "chat.tokens"
