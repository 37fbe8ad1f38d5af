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
from typing import Final

from tracewriter import _schema as schema
from tracewriter._ids import random_uuid7_hex
from tracewriter._records import Row

__all__ = ["Rollup", "histogram_bucket"]

_LAST_BUCKET: Final = schema.HISTOGRAM_BUCKETS - 1

Key = tuple[_dt.datetime, str, str, str, str, str]


def histogram_bucket(value: float) -> int:
    """The histogram bucket of ``value`` (milliseconds, tokens: any non-negative measure)."""
    if not value >= 1.0:  # also catches NaN
        return 0
    return min(math.floor(2.0 * math.log2(value)) + 1, _LAST_BUCKET)


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
        key = (_minute(ts), metric, span_type or "", model or "", kb_id or "", status or "")
        cell = self._cells.get(key)
        if cell is None:
            self._cells[key] = _Cell(value)
        else:
            cell.add(value)

    def add_rows(self, table: str, rows: Iterable[Row]) -> None:
        """Add the metrics of rows written to ``table`` (open rows carry none yet)."""
        if table == schema.SPANS:
            for r in rows:
                if r[_S_STATUS] == "open" or r[_S_DUR] is None:
                    continue
                dims = {"span_type": r[_S_TYPE], "model": r[_S_MODEL], "kb_id": r[_S_KB]}
                self.add(r[_S_TS], "span.duration_ms", r[_S_DUR], status=r[_S_STATUS], **dims)
                if r[_S_IN] is not None:
                    self.add(r[_S_TS], "llm.input_tokens", r[_S_IN], status=r[_S_STATUS], **dims)
                if r[_S_OUT] is not None:
                    self.add(r[_S_TS], "llm.output_tokens", r[_S_OUT], status=r[_S_STATUS], **dims)
        elif table == schema.TRACES:
            for r in rows:
                if r[_T_STATUS] == "open" or r[_T_DUR] is None:
                    continue
                self.add(
                    r[_T_TS], "trace.duration_ms", r[_T_DUR], kb_id=r[_T_KB], status=r[_T_STATUS]
                )
        elif table == schema.DOCUMENT_EVENTS:
            for r in rows:
                if r[_D_DUR] is None:
                    continue
                self.add(
                    r[_D_TS],
                    "document.duration_ms",
                    r[_D_DUR],
                    span_type=r[_D_TYPE],
                    kb_id=r[_D_KB],
                    status=r[_D_STATUS],
                )
        elif table == schema.CHAT_MESSAGES:
            for r in rows:
                tokens = r[_C_TOKENS]
                self.add(
                    r[_C_TS],
                    "chat.tokens",
                    float(tokens or 0),
                    span_type=r[_C_ROLE],
                    kb_id=r[_C_KB],
                )

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
            for (ts, metric, span_type, model, kb_id, status), cell in self._cells.items()
        ]
