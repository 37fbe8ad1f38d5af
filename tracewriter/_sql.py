"""Every SQL statement the writer runs, as named templates.

Owns the SQL text. Statements are built once per sink from the column layout in ``_schema`` and
the one schema the migrations create; nothing from a caller's events or the configuration is
ever put into SQL text — values travel only as bind parameters or COPY data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tracewriter import _schema as schema

__all__ = ["SCHEMA", "Statements"]

# The schema sql/0001.schema.sql creates; the migrations, roles and read-back name it too.
SCHEMA: Final = "observability"

# Types of the columns the writer supplies, for the unnest() casts of array parameters.
_TYPES: Final[dict[str, str]] = {
    "id": "uuid",
    "timestamp": "timestamptz",
    "duration_ms": "float8",
    "input_tokens": "int4",
    "output_tokens": "int4",
    "cached_input_tokens": "int4",
    "reasoning_tokens": "int4",
    "token_count": "int4",
    "chunk_count": "int4",
    "metadata": "jsonb",
    "count": "int8",
    "sum": "float8",
    "min": "float8",
    "max": "float8",
    # histograms travel as their text form: unnest() would flatten a 2-D bigint array
    "histogram": "text",
    "sketch": "text",
    "cost_usd": "numeric",
}


def _cols(columns: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _unnest(columns: tuple[str, ...], first_param: int = 1) -> str:
    args = ", ".join(
        f"${i}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(columns, start=first_param)
    )
    return f"unnest({args}) AS u({_cols(columns)})"


# The key of the four trace tables (sql/0005.trace_keys.sql): trace_id first, because Citus
# distributes them by it and a key there must contain the distribution column.
_TRACE_KEY: Final = ("trace_id", "id", "timestamp")


def _end_upsert(qschema: str, table: str) -> str:
    columns = schema.COLUMNS[table]
    sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in schema.END_UPDATE_COLUMNS)
    fills = "".join(
        f', "{c}" = COALESCE(EXCLUDED."{c}", t."{c}")'
        for c in schema.END_FILL_COLUMNS.get(table, ())
    )
    return (
        f"INSERT INTO {qschema}.{table} AS t ({_cols(columns)}) "
        f"SELECT * FROM {_unnest(columns)} "
        f"ON CONFLICT ({_cols(_TRACE_KEY)}) DO UPDATE SET {sets}{fills}, "
        "metadata = CASE WHEN EXCLUDED.metadata IS NULL THEN t.metadata "
        "WHEN t.metadata IS NULL THEN EXCLUDED.metadata "
        "ELSE t.metadata || EXCLUDED.metadata END"
    )


def _metrics_upsert(qschema: str) -> str:
    columns = schema.METRIC_COLUMNS
    select = ", ".join(
        f"u.{c}::bigint[]" if c in ("histogram", "sketch") else f'u."{c}"' for c in columns
    )
    return (
        f"WITH claim AS (INSERT INTO {qschema}.applied_batches (batch_id) VALUES ($1) "
        "ON CONFLICT DO NOTHING RETURNING batch_id) "
        f"INSERT INTO {qschema}.metrics_aggregates AS m ({_cols(columns)}) "
        f"SELECT {select} FROM {_unnest(columns, first_param=2)} "
        "WHERE EXISTS (SELECT 1 FROM claim) "
        'ON CONFLICT ("timestamp", metric, span_type, model, kb_id, status) DO UPDATE SET '
        "count = m.count + EXCLUDED.count, sum = m.sum + EXCLUDED.sum, "
        "min = LEAST(m.min, EXCLUDED.min), max = GREATEST(m.max, EXCLUDED.max), "
        f"histogram = {qschema}.histogram_add(m.histogram, EXCLUDED.histogram), "
        f"sketch = {qschema}.sketch_add(m.sketch, EXCLUDED.sketch)"
    )


@dataclass(frozen=True, slots=True)
class Statements:
    """The writer's statements. Build with :meth:`build`."""

    schema: str
    check_schema: str
    end_upsert: dict[str, str]
    metrics_upsert: str
    dead_letters_insert: str
    sync_status_upsert: str
    ensure_partitions: str
    prune_batches: str
    stage_create: dict[str, str]
    stage_insert: dict[str, str]

    @classmethod
    def build(cls) -> Statements:
        """Statements for the observability tables in :data:`SCHEMA`."""
        q = f'"{SCHEMA}"'
        return cls(
            schema=SCHEMA,
            check_schema=(
                "SELECT to_regclass($1 || '.spans') IS NOT NULL "
                "AND to_regclass($1 || '.applied_batches') IS NOT NULL"
            ),
            end_upsert={t: _end_upsert(q, t) for t in schema.UPSERTABLE},
            metrics_upsert=_metrics_upsert(q),
            dead_letters_insert=(
                f"INSERT INTO {q}.dead_letters (target_table, row_data, error, sqlstate) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
            ),
            # A success moves last_success_at; a failure, or a success reporting the failure
            # streak that just ended (the database was away meanwhile), moves last_error,
            # last_error_at and consecutive_failures. Neither erases the other.
            sync_status_upsert=(
                f"INSERT INTO {q}.provider_sync_status AS s (provider, last_flush_at, "
                "last_success_at, last_error, last_error_at, consecutive_failures, rows_sent, "
                "rows_failed, rows_dropped, updated_at) "
                "VALUES ($1, $2::timestamptz, CASE WHEN $3::boolean THEN $2::timestamptz END, "
                "$4, $5, $6, $7, $8, $9, now()) ON CONFLICT (provider) DO UPDATE SET "
                "last_flush_at = EXCLUDED.last_flush_at, "
                "last_success_at = coalesce(EXCLUDED.last_success_at, s.last_success_at), "
                "last_error = coalesce(EXCLUDED.last_error, s.last_error), "
                "last_error_at = coalesce(EXCLUDED.last_error_at, s.last_error_at), "
                "consecutive_failures = CASE WHEN EXCLUDED.last_error_at IS NULL "
                "THEN s.consecutive_failures ELSE EXCLUDED.consecutive_failures END, "
                "rows_sent = s.rows_sent + EXCLUDED.rows_sent, "
                "rows_failed = s.rows_failed + EXCLUDED.rows_failed, "
                "rows_dropped = s.rows_dropped + EXCLUDED.rows_dropped, updated_at = now()"
            ),
            ensure_partitions=f"SELECT {q}.ensure_partitions()",
            prune_batches=f"SELECT {q}.prune_applied_batches($1::interval)",
            stage_create={
                t: f"CREATE TEMP TABLE tw_stage_{t} (LIKE {q}.{t} INCLUDING DEFAULTS) "
                "ON COMMIT DROP"
                for t in schema.COLUMNS
            },
            stage_insert={
                t: f"INSERT INTO {q}.{t} ({_cols(c)}) SELECT {_cols(c)} FROM tw_stage_{t} "
                "ON CONFLICT DO NOTHING"
                for t, c in schema.COLUMNS.items()
            },
        )
