"""Additive per-minute metric roll-ups computed from the rows a flush wrote.

Owns the metric names (``llm.cost_usd`` among them, from the spans' cost column), their
dimensions, the DDSketch of each cell (:mod:`tracewriter._sketch`: relative accuracy 1 %, read
back by ``observability.sketch_quantile``) and, until readers have moved to the sketch, the
fixed log-scale histogram (40 buckets: bucket 0 below 1, bucket i in [√2^(i-1), √2^i), the last
open-ended) of ``observability.histogram_quantile``. It does no I/O: the flusher feeds it
written rows and hands the result to the sink's additive upsert.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from math import frexp
from typing import Any, Final

from tracewriter import _schema as schema
from tracewriter._ids import random_uuid7_hex
from tracewriter._records import Row
from tracewriter._sketch import GAMMA, ZERO_KEY
from tracewriter._sketch import encode as encode_sketch

__all__ = ["Rollup", "histogram_bucket"]

_LAST_BUCKET: Final = schema.HISTOGRAM_BUCKETS - 1
_HALF_SQRT2: Final = math.sqrt(2.0) / 2.0

# (minute, span_type, model, kb_id, status): built once per row, shared by the metrics it yields.
# The minute is an int (minutes since 0001-01-01, UTC) read from the row's datetime with three
# attribute reads: datetime.replace() costs several times more, once per row.
Dims = tuple[int, str, str, str, str]
# count, sum, min, max, the sketch's {key: count}, then the histogram's buckets: one flat list
# per cell.
Cell = list[Any]
_SKETCH_AT: Final = 4
_HIST_AT: Final = 5
_LOG_GAMMA: Final = math.log(GAMMA)
_INF: Final = math.inf
_ceil = math.ceil
_log = math.log
_DAY_ZERO: Final = _dt.datetime(1, 1, 1, tzinfo=_dt.UTC)
_ONE_MINUTE: Final = _dt.timedelta(minutes=1)


def histogram_bucket(value: float) -> int:
    """The histogram bucket of ``value`` (milliseconds, tokens: any non-negative measure)."""
    if not value >= 1.0:  # also catches NaN
        return 0
    # value = mantissa * 2**exp with mantissa in [0.5, 1): floor(2·log2(value)) + 1 without a log.
    mantissa, exp = frexp(value)
    bucket = 2 * exp - 1 if mantissa < _HALF_SQRT2 else 2 * exp
    return bucket if bucket < _LAST_BUCKET else _LAST_BUCKET


def _observe(cells: dict[Dims, Cell], dims: Dims, value: float) -> None:
    # histogram_bucket inlined: this runs for every metric of every row written.
    if value >= 1.0:
        mantissa, exp = frexp(value)
        bucket = 2 * exp - 1 if mantissa < _HALF_SQRT2 else 2 * exp
        if bucket > _LAST_BUCKET:  # noqa: PLR1730 - min() is a call; this runs per metric per row
            bucket = _LAST_BUCKET
    else:
        bucket = 0
    # _sketch.bucket_key inlined, the same expression (rows hold no NaN; +inf is skipped)
    if value <= 0.0:
        key: int | None = ZERO_KEY
    elif value < _INF:
        key = _ceil(_log(value) / _LOG_GAMMA)
    else:
        key = None
    cell = cells.get(dims)
    if cell is None:
        cell = cells[dims] = [0, 0, value, value, {}, *_EMPTY_HISTOGRAM]
    cell[0] += 1
    cell[1] += value
    if value < cell[2]:
        cell[2] = value
    elif value > cell[3]:
        cell[3] = value
    cell[_HIST_AT + bucket] += 1
    if key is not None:
        bins = cell[_SKETCH_AT]
        bins[key] = bins.get(key, 0) + 1


_EMPTY_HISTOGRAM: Final = (0,) * schema.HISTOGRAM_BUCKETS


def _col(table_columns: tuple[str, ...], name: str) -> int:
    return table_columns.index(name)


_S = schema.SPAN_COLUMNS
_S_TS, _S_TYPE, _S_STATUS, _S_DUR = (
    _col(_S, c) for c in ("timestamp", "span_type", "status", "duration_ms")
)
_S_MODEL, _S_KB = _col(_S, "model"), _col(_S, "kb_id")
_S_IN, _S_OUT = _col(_S, "input_tokens"), _col(_S, "output_tokens")
_S_COST = _col(_S, "cost_usd")
_T = schema.TRACE_COLUMNS
_T_TS, _T_STATUS, _T_DUR, _T_KB = (
    _col(_T, c) for c in ("timestamp", "status", "duration_ms", "kb_id")
)
_D = schema.DOCUMENT_COLUMNS
_D_TS, _D_TYPE, _D_STATUS, _D_DUR, _D_KB = (
    _col(_D, c) for c in ("timestamp", "event_type", "status", "duration_ms", "kb_id")
)
_C = schema.CHAT_COLUMNS
_C_TS, _C_ROLE, _C_KB, _C_TOKENS = (
    _col(_C, c) for c in ("timestamp", "role", "kb_id", "token_count")
)


def _minute(ts: _dt.datetime) -> int:
    return ts.toordinal() * 1440 + ts.hour * 60 + ts.minute


def _minute_start(minute: int) -> _dt.datetime:
    return _DAY_ZERO + (minute - 1440) * _ONE_MINUTE


class Rollup:
    """count, sum, min, max, sketch, histogram per minute, metric, span_type, model, kb, status."""

    __slots__ = ("_metrics",)

    def __init__(self) -> None:
        self._metrics: dict[str, dict[Dims, Cell]] = {}

    def __len__(self) -> int:
        return sum(len(cells) for cells in self._metrics.values())

    def _cells(self, metric: str) -> dict[Dims, Cell]:
        cells = self._metrics.get(metric)
        if cells is None:
            cells = self._metrics[metric] = {}
        return cells

    def add_rows(self, table: str, rows: Iterable[Row]) -> None:
        """Add the metrics of rows written to ``table`` (open rows carry none yet), in one pass."""
        observe = _observe
        if table == schema.SPANS:
            durations = self._cells(schema.METRIC_SPAN_DURATION)
            inputs = self._cells(schema.METRIC_LLM_INPUT_TOKENS)
            outputs = self._cells(schema.METRIC_LLM_OUTPUT_TOKENS)
            costs = self._cells(schema.METRIC_LLM_COST)
            for r in rows:
                status, duration = r[_S_STATUS], r[_S_DUR]
                if status == "open" or duration is None:
                    continue
                ts = r[_S_TS]
                dims = (
                    ts.toordinal() * 1440 + ts.hour * 60 + ts.minute,
                    r[_S_TYPE] or "",
                    r[_S_MODEL] or "",
                    r[_S_KB] or "",
                    status,
                )
                observe(durations, dims, duration)
                tokens = r[_S_IN]
                if tokens is not None:
                    observe(inputs, dims, tokens)
                tokens = r[_S_OUT]
                if tokens is not None:
                    observe(outputs, dims, tokens)
                cost = r[_S_COST]
                if cost is not None:  # a Decimal: summed as a float, like every metric
                    observe(costs, dims, float(cost))
        elif table == schema.TRACES:
            durations = self._cells(schema.METRIC_TRACE_DURATION)
            for r in rows:
                status, duration = r[_T_STATUS], r[_T_DUR]
                if status == "open" or duration is None:
                    continue
                dims = (_minute(r[_T_TS]), "", "", r[_T_KB] or "", status)
                observe(durations, dims, duration)
        elif table == schema.DOCUMENT_EVENTS:
            durations = self._cells(schema.METRIC_DOCUMENT_DURATION)
            for r in rows:
                if r[_D_DUR] is not None:
                    dims = (_minute(r[_D_TS]), r[_D_TYPE] or "", "", r[_D_KB] or "", r[_D_STATUS])
                    observe(durations, dims, r[_D_DUR])
        elif table == schema.CHAT_MESSAGES:
            tokens_cells = self._cells(schema.METRIC_CHAT_TOKENS)
            for r in rows:
                dims = (_minute(r[_C_TS]), r[_C_ROLE] or "", "", r[_C_KB] or "", "")
                observe(tokens_cells, dims, float(r[_C_TOKENS] or 0))

    def take_rows(self, limit: int) -> list[Row]:
        """Up to ``limit`` cells as rows in :data:`tracewriter._schema.METRIC_COLUMNS` order,
        removed from the roll-up."""
        out: list[Row] = []
        metrics = self._metrics
        while metrics and len(out) < limit:
            metric = next(iter(metrics))
            cells = metrics[metric]
            while cells and len(out) < limit:
                dims = next(iter(cells))
                out.append(_row(metric, dims, cells.pop(dims)))
            if not cells:
                del metrics[metric]
        return out


def _row(metric: str, dims: Dims, cell: Cell) -> Row:
    minute, span_type, model, kb_id, status = dims
    ts = _minute_start(minute)
    return (
        random_uuid7_hex(int(ts.timestamp() * 1000)),
        ts,
        metric,
        span_type,
        model,
        kb_id,
        status,
        cell[0],
        float(cell[1]),
        float(cell[2]),
        float(cell[3]),
        cell[_HIST_AT:],
        encode_sketch(cell[_SKETCH_AT]),
    )
