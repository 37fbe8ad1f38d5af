"""The additive metrics upsert with sketches (migration 0004), until it joins ``_sql``.

Owns one statement: the exactly-once additive upsert of ``metrics_aggregates`` rows that carry
a DDSketch (:mod:`tracewriter._sketch`) next to the √2 histogram. It is ``_sql``'s
``_metrics_upsert`` with one more column, kept apart only while the roll-up is being rewritten
(issue 11); once that lands, ``Statements.metrics_upsert`` becomes :func:`metrics_upsert` and
this module goes. Like ``_sql``, it puts nothing from a caller into SQL text.

Exactly-once: the statement claims ``batch_id`` in ``applied_batches`` and inserts only if the
claim inserted a row, in one statement and so one transaction. A retry of a batch whose commit
was not acknowledged finds its claim taken and adds nothing; sketches are merged with
``observability.sketch_add`` (bucket counts added) under the same guard as count and sum, so
they can never be counted twice either.
"""

from __future__ import annotations

from typing import Final

from tracewriter import _schema as schema
from tracewriter._sql import _cols, _unnest

__all__ = ["METRIC_COLUMNS", "metrics_upsert"]

# The writer's metrics rows with the sketch last, as a bigint[] literal (``_sketch.to_sql_text``):
# a batch of sketches of unequal length has no array type, so each travels as text.
METRIC_COLUMNS: Final = (*schema.METRIC_COLUMNS, "sketch")


def metrics_upsert(qschema: str) -> str:
    """The additive upsert for schema ``qschema`` (already validated and quoted).

    Parameters: ``$1`` the batch id (uuid), then one array per :data:`METRIC_COLUMNS` entry.
    A NULL histogram is allowed (a writer that no longer fills it); a NULL sketch adds nothing.
    """
    columns = METRIC_COLUMNS
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
