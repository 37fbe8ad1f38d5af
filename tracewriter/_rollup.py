"""Additive per-minute metric roll-ups computed from the rows a flush wrote.

Owns the metric names, their dimensions and the fixed log-scale histogram (40 buckets: bucket 0
below 1, bucket i in [√2^(i-1), √2^i), the last open-ended) that
``observability.histogram_quantile`` reads percentiles back from. It does no I/O: the flusher
feeds it written rows and hands the result to the sink's additive upsert.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from math import frexp
from typing import Final

from tracewriter import _schema as schema
from tracewriter._ids import random_uuid7_hex
from tracewriter._records import Row

__all__ = ["Rollup", "histogram_bucket"]

_LAST_BUCKET: Final = schema.HISTOGRAM_BUCKETS - 1
_HALF_SQRT2: Final = math.sqrt(2.0) / 2.0

# (minute, span_type, model, kb_id, status): one per row, shared by the metrics it yields.
Dims = tuple[_dt.datetime, str, str, str, str]
Key = tuple[str, Dims]


def histogram_bucket(value: float) -> int:
    """The histogram bucket of ``value`` (milliseconds, tokens: any non-negative measure)."""
    if not value >= 1.0:  # also catches NaN
        return 0
    # value = mantissa * 2**exp with mantissa in [0.5, 1): floor(2·log2(value)) + 1 without a log.
    mantissa, exp = frexp(value)
    bucket = 2 * exp - 1 if mantissa < _HALF_SQRT2 else 2 * exp
    return bucket if bucket < _LAST_BUCKET else _LAST_BUCKET


def _col(table_columns: tuple[str, ...], name: str) -> int:
    return table_columns.index(name)


_S = schema.SPAN_COLUMNS
_S_TS, _S_TYPE, _S_STATUS, _S_DUR = (
    _col(_S, c) for c in ("timestamp", "span_type", "status", "duration_ms")
)
_S_MODEL, _S_KB = _col(_S, "model"), _col(_S, "kb_id")
_S_IN, _S_OUT = _col(_S, "input_tokens"), _col(_S, "output_tokens")
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


def _minute(ts: _dt.datetime) -> _dt.datetime:
    return ts.replace(second=0, microsecond=0)


class _Cell:
    __slots__ = ("count", "high", "hist", "low", "total")

    def __init__(self, value: float) -> None:
        self.count = 1
        self.total = value
        self.low = value
        self.high = value
        self.hist = [0] * schema.HISTOGRAM_BUCKETS
        self.hist[histogram_bucket(value)] = 1

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.hist[histogram_bucket(value)] += 1

    def copy(self) -> _Cell:
        twin = _Cell.__new__(_Cell)
        twin.count, twin.total, twin.low, twin.high = self.count, self.total, self.low, self.high
        twin.hist = list(self.hist)
        return twin

    def merge(self, other: _Cell) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]


class Rollup:
    """count, sum, min, max and histogram per minute, metric, span_type, model, kb_id, status."""

    __slots__ = ("_cells",)

    def __init__(self) -> None:
        self._cells: dict[Key, _Cell] = {}

    def __len__(self) -> int:
        return len(self._cells)

    def add(
        self,
        ts: _dt.datetime,
        metric: str,
        value: float,
        *,
        span_type: str | None = None,
        model: str | None = None,
        kb_id: str | None = None,
        status: str | None = None,
    ) -> None:
        """Add one observation of ``metric`` at time ``ts``."""
        dims = (_minute(ts), span_type or "", model or "", kb_id or "", status or "")
        self._observe(metric, dims, value)

    def _observe(self, metric: str, dims: Dims, value: float) -> None:
        key = (metric, dims)
        cell = self._cells.get(key)
        if cell is None:
            self._cells[key] = _Cell(value)
        else:
            cell.add(value)

    def add_rows(self, table: str, rows: Iterable[Row]) -> None:
        """Add the metrics of rows written to ``table`` (open rows carry none yet)."""
        observe = self._observe
        if table == schema.SPANS:
            for r in rows:
                status, duration = r[_S_STATUS], r[_S_DUR]
                if status == "open" or duration is None:
                    continue
                dims = (
                    _minute(r[_S_TS]),
                    r[_S_TYPE] or "",
                    r[_S_MODEL] or "",
                    r[_S_KB] or "",
                    status,
                )
                observe("span.duration_ms", dims, duration)
                if r[_S_IN] is not None:
                    observe("llm.input_tokens", dims, r[_S_IN])
                if r[_S_OUT] is not None:
                    observe("llm.output_tokens", dims, r[_S_OUT])
        elif table == schema.TRACES:
            for r in rows:
                status, duration = r[_T_STATUS], r[_T_DUR]
                if status == "open" or duration is None:
                    continue
                observe(
                    "trace.duration_ms",
                    (_minute(r[_T_TS]), "", "", r[_T_KB] or "", status),
                    duration,
                )
        elif table == schema.DOCUMENT_EVENTS:
            for r in rows:
                if r[_D_DUR] is not None:
                    dims = (_minute(r[_D_TS]), r[_D_TYPE] or "", "", r[_D_KB] or "", r[_D_STATUS])
                    observe("document.duration_ms", dims, r[_D_DUR])
        elif table == schema.CHAT_MESSAGES:
            for r in rows:
                dims = (_minute(r[_C_TS]), r[_C_ROLE] or "", "", r[_C_KB] or "", "")
                observe("chat.tokens", dims, float(r[_C_TOKENS] or 0))

    def merge(self, other: Rollup) -> None:
        """Fold ``other`` into this roll-up (used when a failed upsert is retried with more)."""
        for key, theirs in other._cells.items():
            mine = self._cells.get(key)
            if mine is None:
                self._cells[key] = theirs.copy()
            else:
                mine.merge(theirs)

    def rows(self) -> list[Row]:
        """The roll-up as rows in :data:`tracewriter._schema.METRIC_COLUMNS` order."""
        return [
            (
                random_uuid7_hex(int(ts.timestamp() * 1000)),
                ts,
                metric,
                span_type,
                model,
                kb_id,
                status,
                cell.count,
                float(cell.total),
                float(cell.low),
                float(cell.high),
                list(cell.hist),
            )
            for (metric, (ts, span_type, model, kb_id, status)), cell in self._cells.items()
        ]
