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
from bisect import bisect_left as _bisect_left
from bisect import bisect_right as _bisect_right
from collections import Counter as _Counter
from collections.abc import Iterable
from itertools import repeat as _repeat
from math import frexp
from operator import truediv as _truediv
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
_ceil: Final = math.ceil
_log: Final = math.log
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


# Lower edges of histogram buckets 1..39, exact: frexp(v) = (m, e) puts v in bucket 2e-1 when
# m < √2/2 and in 2e otherwise, and m < √2/2 exactly when v < (√2/2)·2**e (scaling by a power
# of two is exact). So bucket 2e-1 starts at 2**(e-1) and bucket 2e at (√2/2)·2**e, and
# histogram_bucket(v) == bisect_right(_EDGES, v) for every finite v.
_EDGES: Final = tuple(
    2.0 ** ((b - 1) // 2) if b % 2 else _HALF_SQRT2 * 2.0 ** (b // 2)
    for b in range(1, schema.HISTOGRAM_BUCKETS)
)


def _fold(cells: dict[Dims, Cell], dims: Dims, values: list[Any]) -> None:
    """Add ``values`` (finite numbers, as rows hold them; sorted here) to the cell at ``dims``.

    The same counts, bounds, histogram buckets and sketch keys as adding them one by one, but
    with the per-value work in C: one sort, a bisect per histogram bucket the values span, and
    the sketch keys by ``map`` over ``log``, counted by ``Counter``.
    """
    values.sort()
    n = len(values)
    lo, hi = values[0], values[-1]
    cell = cells.get(dims)
    if cell is None:
        cell = cells[dims] = [0, 0, lo, hi, {}, *_EMPTY_HISTOGRAM]
    else:
        cell[2] = min(cell[2], lo)
        cell[3] = max(cell[3], hi)
    cell[0] += n
    cell[1] += sum(values)
    # histogram: the values are sorted, so each bucket they span is one slice
    first, last = _bisect_right(_EDGES, lo), _bisect_right(_EDGES, hi)
    start = 0
    for bucket in range(first, last):
        end = _bisect_left(values, _EDGES[bucket], start)  # _EDGES[b] starts bucket b + 1
        cell[_HIST_AT + bucket] += end - start
        start = end
    cell[_HIST_AT + last] += n - start
    # sketch: ZERO_KEY for values <= 0, ceil(log(v) / log(gamma)) above, +inf skipped
    bins: dict[int, int] = cell[_SKETCH_AT]
    zeros = _bisect_right(values, 0.0) if lo <= 0.0 else 0
    if zeros:
        bins[ZERO_KEY] = bins.get(ZERO_KEY, 0) + zeros
    top = _bisect_left(values, _INF, zeros) if hi == _INF else n
    if zeros < top:
        positive = values[zeros:top] if zeros or top < n else values
        keys = map(_ceil, map(_truediv, map(_log, positive), _repeat(_LOG_GAMMA)))
        for key, count in _Counter(keys).items():
            bins[key] = bins.get(key, 0) + count


_EMPTY_HISTOGRAM: Final = (0,) * schema.HISTOGRAM_BUCKETS


def _col(table_columns: tuple[str, ...], name: str) -> int:
    return table_columns.index(name)


# One Final per position: compiled by mypyc, a module-level name that is not Final is a
# dict lookup at every use, and these are read for every row.
_S: Final = schema.SPAN_COLUMNS
_S_TS: Final = _col(_S, "timestamp")
_S_TYPE: Final = _col(_S, "span_type")
_S_STATUS: Final = _col(_S, "status")
_S_DUR: Final = _col(_S, "duration_ms")
_S_MODEL: Final = _col(_S, "model")
_S_KB: Final = _col(_S, "kb_id")
_S_IN: Final = _col(_S, "input_tokens")
_S_OUT: Final = _col(_S, "output_tokens")
_S_COST: Final = _col(_S, "cost_usd")
_T: Final = schema.TRACE_COLUMNS
_T_TS: Final = _col(_T, "timestamp")
_T_STATUS: Final = _col(_T, "status")
_T_DUR: Final = _col(_T, "duration_ms")
_T_KB: Final = _col(_T, "kb_id")
_D: Final = schema.DOCUMENT_COLUMNS
_D_TS: Final = _col(_D, "timestamp")
_D_TYPE: Final = _col(_D, "event_type")
_D_STATUS: Final = _col(_D, "status")
_D_DUR: Final = _col(_D, "duration_ms")
_D_KB: Final = _col(_D, "kb_id")
_C: Final = schema.CHAT_COLUMNS
_C_TS: Final = _col(_C, "timestamp")
_C_ROLE: Final = _col(_C, "role")
_C_KB: Final = _col(_C, "kb_id")
_C_TOKENS: Final = _col(_C, "token_count")


def _minute(ts: _dt.datetime) -> int:
    return ts.toordinal() * 1440 + ts.hour * 60 + ts.minute


def _minute_start(minute: int) -> _dt.datetime:
    return _DAY_ZERO + (minute - 1440) * _ONE_MINUTE


# Values wait in a list per dimensions and metric until FOLD_AT of them are there (or the
# flush asks for the roll-up), then fold into their cell in one go: sorting and counting in C
# costs ~0.2 µs a value in batches of hundreds, against ~0.6 µs folded one at a time, and
# ~1 µs in the handful a 64-row slice has per dimensions. One fold of FOLD_AT values takes
# ~50 µs, so a slice of the flusher's work stays short.
FOLD_AT: Final = 256

# Per table: the metrics its rows carry, in the order of a pending group's lists.
_SPAN_METRICS: Final = (
    schema.METRIC_SPAN_DURATION,
    schema.METRIC_LLM_INPUT_TOKENS,
    schema.METRIC_LLM_OUTPUT_TOKENS,
    schema.METRIC_LLM_COST,
)
_TABLE_METRICS: Final = {
    schema.SPANS: _SPAN_METRICS,
    schema.TRACES: (schema.METRIC_TRACE_DURATION,),
    schema.DOCUMENT_EVENTS: (schema.METRIC_DOCUMENT_DURATION,),
    schema.CHAT_MESSAGES: (schema.METRIC_CHAT_TOKENS,),
}
Group = tuple[list[Any], ...]


class Rollup:
    """count, sum, min, max, sketch, histogram per minute, metric, span_type, model, kb, status.

    :meth:`add_rows` only collects values (a dict lookup and a few appends per row); they
    are folded into the cells FOLD_AT at a time, by :meth:`fold` or when a group is full.
    """

    __slots__ = ("_metrics", "_pending")

    def __init__(self) -> None:
        self._metrics: dict[str, dict[Dims, Cell]] = {}
        # table -> dims -> one list of values per metric of the table (_TABLE_METRICS)
        self._pending: dict[str, dict[Dims, Group]] = {}

    def __len__(self) -> int:
        """Cells ready for :meth:`take_rows` (values still pending are not cells yet)."""
        return sum(len(cells) for cells in self._metrics.values())

    @property
    def pending(self) -> bool:
        """Whether values wait to be folded (:meth:`fold`) before every cell is complete."""
        return any(self._pending.values())

    def _cells(self, metric: str) -> dict[Dims, Cell]:
        cells = self._metrics.get(metric)
        if cells is None:
            cells = self._metrics[metric] = {}
        return cells

    def _fold_group(self, table: str, dims: Dims, group: Group) -> int:
        folded = 0
        for metric, values in zip(_TABLE_METRICS[table], group, strict=True):
            if values:
                folded += len(values)
                _fold(self._cells(metric), dims, values)
        return folded

    def fold(self, budget: int) -> bool:
        """Fold pending values into their cells, about ``budget`` values' worth (always at
        least one group); returns whether any are still pending."""
        for table, groups in self._pending.items():
            while groups and budget > 0:
                dims, group = groups.popitem()
                budget -= self._fold_group(table, dims, group)
        return self.pending

    def add_rows(self, table: str, rows: Iterable[Row]) -> None:
        """Collect the metrics of rows written to ``table`` (open rows carry none yet)."""
        groups = self._pending.get(table)
        if groups is None:
            if table not in _TABLE_METRICS:
                return
            groups = self._pending[table] = {}
        if table == schema.SPANS:
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
                group = groups.get(dims)
                if group is None:
                    group = groups[dims] = ([], [], [], [])
                durations = group[0]
                durations.append(duration)
                tokens = r[_S_IN]
                if tokens is not None:
                    group[1].append(tokens)
                tokens = r[_S_OUT]
                if tokens is not None:
                    group[2].append(tokens)
                cost = r[_S_COST]
                if cost is not None:  # a Decimal: summed as a float, like every metric
                    group[3].append(float(cost))
                if len(durations) >= FOLD_AT:
                    del groups[dims]
                    self._fold_group(table, dims, group)
            return
        for r in rows:
            if table == schema.TRACES:
                status, value = r[_T_STATUS], r[_T_DUR]
                if status == "open" or value is None:
                    continue
                dims = (_minute(r[_T_TS]), "", "", r[_T_KB] or "", status)
            elif table == schema.DOCUMENT_EVENTS:
                value = r[_D_DUR]
                if value is None:
                    continue
                dims = (_minute(r[_D_TS]), r[_D_TYPE] or "", "", r[_D_KB] or "", r[_D_STATUS])
            else:  # chat messages
                value = float(r[_C_TOKENS] or 0)
                dims = (_minute(r[_C_TS]), r[_C_ROLE] or "", "", r[_C_KB] or "", "")
            group = groups.get(dims)
            if group is None:
                group = groups[dims] = ([],)
            values = group[0]
            values.append(value)
            if len(values) >= FOLD_AT:
                del groups[dims]
                self._fold_group(table, dims, group)

    def take_rows(self, limit: int) -> list[Row]:
        """Up to ``limit`` cells as rows in :data:`tracewriter._schema.METRIC_COLUMNS` order,
        removed from the roll-up. Values still pending are not in them: :meth:`fold` first."""
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
