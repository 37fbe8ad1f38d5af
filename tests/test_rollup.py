"""The roll-up folds values in bulk; every cell must equal adding the values one at a time.

The reference here is the definition: ``histogram_bucket`` and ``_sketch.bucket_key`` per value,
count, sum, min and max. No database.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tracewriter import _schema as schema
from tracewriter._rollup import FOLD_AT, Rollup, histogram_bucket
from tracewriter._sketch import bucket_key, decode

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
WHEN = dt.datetime(2026, 11, 30, 12, 30, 15, tzinfo=dt.UTC)
COL = {name: i for i, name in enumerate(schema.SPAN_COLUMNS)}
METRIC = {name: i for i, name in enumerate(schema.METRIC_COLUMNS)}

# Every bucket edge of the √2 histogram, and the doubles either side of it.
EDGES = [math.sqrt(2.0) ** i for i in range(45)] + [2.0**i for i in range(25)]
NEAR_EDGES = [x for e in EDGES for x in (e, math.nextafter(e, 0.0), math.nextafter(e, math.inf))]
durations = st.one_of(
    st.sampled_from(NEAR_EDGES),
    st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False),
    st.just(0.0),
)
tokens = st.one_of(st.none(), st.integers(min_value=-5, max_value=3_000_000))


_rng = random.Random(7)
BIG = [
    (
        _rng.choice(["llm", "retrieval"]),
        "ok",
        _rng.choice([_rng.lognormvariate(5, 2), _rng.choice(NEAR_EDGES), 0.0]),
        _rng.choice([None, _rng.randrange(-5, 200_000)]),
        _rng.randrange(0, 5_000),
    )
    for _ in range(1500)
]


def span_row(
    span_type: str, status: str, duration: float, inp: int | None, out: int | None
) -> tuple[Any, ...]:
    row: list[Any] = [None] * len(schema.SPAN_COLUMNS)
    row[COL["timestamp"]] = WHEN
    row[COL["span_type"]] = span_type
    row[COL["model"]] = "gpt-4o"
    row[COL["kb_id"]] = "kb-1"
    row[COL["status"]] = status
    row[COL["duration_ms"]] = duration
    row[COL["input_tokens"]] = inp
    row[COL["output_tokens"]] = out
    row[COL["cost_usd"]] = None if inp is None else Decimal(max(inp, 0)) / 1_000_000
    return tuple(row)


def reference(values: list[float]) -> dict[str, Any]:
    """What adding ``values`` one by one stores: count, sum, bounds, histogram, sketch bins."""
    histogram = [0] * schema.HISTOGRAM_BUCKETS
    bins: Counter[int] = Counter()
    for v in values:
        histogram[histogram_bucket(v)] += 1
        key = bucket_key(v)
        if key is not None:
            bins[key] += 1
    return {
        "count": len(values),
        "sum": math.fsum(values),
        "min": min(values),
        "max": max(values),
        "histogram": histogram,
        "bins": dict(bins),
    }


def stored(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for r in rows:
        key = (r[METRIC["metric"]], r[METRIC["span_type"]], r[METRIC["status"]])
        assert key not in out, key
        out[key] = {
            "count": r[METRIC["count"]],
            "sum": r[METRIC["sum"]],
            "min": r[METRIC["min"]],
            "max": r[METRIC["max"]],
            "histogram": list(r[METRIC["histogram"]]),
            "bins": decode(r[METRIC["sketch"]]),
        }
    return out


@SETTINGS
@given(
    st.lists(
        st.tuples(st.sampled_from(["llm", "retrieval"]), st.sampled_from(["ok", "error"]),
                  durations, tokens, tokens),
        min_size=1,
        max_size=700,
    ),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=500),
)  # fmt: skip
@example([("llm", "ok", 1.0, 0, -5), ("llm", "ok", math.sqrt(2.0), 1, 2)], 1, 1)
@example(BIG, 64, 300)  # groups past FOLD_AT, folded by themselves and then in slices
def test_cells_equal_adding_every_value_one_at_a_time(
    calls: list[tuple[str, str, float, int | None, int | None]], chunk: int, budget: int
) -> None:
    """Counts, bounds, histogram and sketch exactly as per value; sums within rounding;
    whether the rows come in chunks (as the flusher gives them) or all at once, and however
    the folding is sliced (values of one dimension folded in several goes included: the
    lists may reach FOLD_AT), the cells are the same."""
    rows = [span_row(*c) for c in calls]
    rollup = Rollup()
    for i in range(0, len(rows), chunk):
        rollup.add_rows(schema.SPANS, rows[i : i + chunk])
    while rollup.fold(budget):
        pass
    got = stored(rollup.take_rows(10_000))
    assert len(rollup) == 0 and not rollup.pending

    expected: dict[tuple[str, str, str], list[float]] = {}
    for span_type, status, duration, inp, out in calls:
        for metric, value in (
            (schema.METRIC_SPAN_DURATION, duration),
            (schema.METRIC_LLM_INPUT_TOKENS, inp),
            (schema.METRIC_LLM_OUTPUT_TOKENS, out),
            (schema.METRIC_LLM_COST, None if inp is None else max(inp, 0) / 1_000_000),
        ):
            if value is not None:
                expected.setdefault((metric, span_type, status), []).append(value)
    assert set(got) == set(expected)
    for key, values in expected.items():
        want, have = reference(values), got[key]
        assert have["count"] == want["count"], key
        assert have["min"] == want["min"] and have["max"] == want["max"], key
        assert have["histogram"] == want["histogram"], key
        assert have["bins"] == want["bins"], key
        assert math.isclose(have["sum"], want["sum"], rel_tol=1e-9, abs_tol=1e-9), key


def test_open_rows_and_rows_without_duration_add_nothing() -> None:
    """An open span (no outcome yet) and a row with no duration carry no metric."""
    rollup = Rollup()
    rollup.add_rows(schema.SPANS, [span_row("llm", "open", 5.0, 1, 1)])
    no_duration = list(span_row("llm", "ok", 5.0, 1, 1))
    no_duration[COL["duration_ms"]] = None
    rollup.add_rows(schema.SPANS, [tuple(no_duration)])
    assert not rollup.pending and not rollup.fold(1) and len(rollup) == 0


def test_values_wait_until_a_group_is_full_or_folded_in_slices() -> None:
    """A dimension's values fold by themselves at FOLD_AT; fold(budget) does the rest a
    slice at a time and says whether more is pending."""
    rollup = Rollup()
    rollup.add_rows(schema.SPANS, [span_row("llm", "ok", 1.5, 3, 4)] * (FOLD_AT - 1))
    assert rollup.pending and len(rollup) == 0
    rollup.add_rows(schema.SPANS, [span_row("llm", "ok", 1.5, 3, 4)])
    assert not rollup.pending and len(rollup) == 4  # duration, input, output, cost
    rollup.add_rows(schema.SPANS, [span_row(f"t{i}", "ok", 2.0, None, None) for i in range(5)])
    assert rollup.fold(1) and rollup.fold(1)  # one group a call, while more wait
    assert not rollup.fold(100)
    assert len(rollup) == 9


def test_take_rows_hands_out_every_cell_once_in_slices() -> None:
    """take_rows(limit) returns at most ``limit`` rows a call, each cell once, until empty."""
    rollup = Rollup()
    rollup.add_rows(
        schema.SPANS,
        [span_row(f"type-{i}", "ok", float(i), i, i) for i in range(1, 21)],
    )
    assert not rollup.fold(10_000)
    cells = len(rollup)
    assert cells == 80  # 20 dimensions x (duration, input, output, cost)
    seen = []
    while len(rollup):
        part = rollup.take_rows(16)
        assert 0 < len(part) <= 16
        seen.extend((r[METRIC["metric"]], r[METRIC["span_type"]]) for r in part)
    assert len(seen) == len(set(seen)) == cells
