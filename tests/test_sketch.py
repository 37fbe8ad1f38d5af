"""The DDSketch in Python: relative error, merging, encoding, edge values (no database)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewriter._sketch import (
    ALPHA,
    COUNT_BITS,
    GAMMA,
    ZERO_KEY,
    Sketch,
    bucket_key,
    bucket_value,
    decode,
    encode,
    merge_encoded,
    quantile_of,
    to_sql_text,
)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

# Latencies from 0.1 ms to an hour, token counts to 10 million, and far beyond both.
positive = st.floats(min_value=1e-4, max_value=1e9, allow_nan=False, allow_infinity=False)
measures = st.one_of(positive, st.just(0.0), st.integers(min_value=0, max_value=10_000_000))
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact_quantile(values: list[float], q: float) -> float:
    """``percentile_disc(q)``: the value at position ceil(q * n), at least the first."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def within(estimate: float | None, exact: float, tolerance: float) -> bool:
    """Whether ``estimate`` is within ``tolerance`` of ``exact``, relative to ``exact``."""
    assert estimate is not None
    return abs(estimate - exact) <= tolerance * abs(exact)


def sketch_of(values: list[float]) -> Sketch:
    """A sketch with ``values`` added in order."""
    s = Sketch()
    for v in values:
        s.add(v)
    return s


@SETTINGS
@given(st.lists(measures, min_size=1, max_size=300))
def test_every_quantile_is_within_alpha_of_the_exact_value(values: list[float]) -> None:
    """Whatever the values, each quantile is within ALPHA (1 %) of percentile_disc's answer."""
    s = sketch_of(values)
    for q in QUANTILES:
        # ALPHA plus float noise at a bucket edge: still far inside the 2 % promise.
        assert within(s.quantile(q), exact_quantile(values, q), ALPHA + 1e-9), q


@SETTINGS
@given(st.lists(st.lists(measures, max_size=60), min_size=3, max_size=3))
def test_merge_is_associative_commutative_and_equals_the_sketch_of_all_values(
    parts: list[list[float]],
) -> None:
    """(a+b)+c, a+(b+c), c+b+a and the sketch of the concatenation are the same sketch."""
    a, b, c = (sketch_of(p) for p in parts)
    left = a.copy()
    left.merge(b)
    left.merge(c)
    bc = b.copy()
    bc.merge(c)
    right = a.copy()
    right.merge(bc)
    backwards = c.copy()
    backwards.merge(b)
    backwards.merge(a)
    whole = sketch_of([v for p in parts for v in p])
    assert left == right == backwards == whole
    assert merge_encoded(a.encode(), b.encode(), c.encode()) == whole.encode()
    assert whole.count == sum(len(p) for p in parts)


@SETTINGS
@given(st.dictionaries(st.integers(-40_000, 40_000), st.integers(1, 2**44 - 1), max_size=50))
def test_encoding_round_trips_and_is_sorted_by_key(bins: dict[int, int]) -> None:
    """decode(encode(bins)) == bins, and the integers sort in key order (zero bucket first)."""
    bins = {**bins, ZERO_KEY: 3}
    packed = encode(bins)
    assert decode(packed) == bins
    assert packed == sorted(packed)
    assert packed[0] >> COUNT_BITS == ZERO_KEY
    assert all(-(2**63) <= e < 2**63 for e in packed)  # fits a bigint


def test_bucket_mapping_covers_latencies_and_token_counts() -> None:
    """0.1 ms .. 1 h and 1 .. 10M tokens map to keys whose values are within ALPHA of them."""
    for v in (1e-4, 0.1, 1.0, 4096.0, 11_585.0, 3_600_000.0, 1.0, 2**19, 10_000_000.0):
        key = bucket_key(v)
        assert key is not None
        assert GAMMA ** (key - 1) < v <= GAMMA**key * (1 + 1e-12)
        assert within(bucket_value(key), v, ALPHA + 1e-12)
    assert bucket_key(3_600_000.0) - bucket_key(0.1) < 900  # type: ignore[operator]


def test_zero_and_negative_values_count_in_the_zero_bucket_and_read_back_as_zero() -> None:
    """0, -5 and -inf are counted as 0; NaN and +inf are not counted at all."""
    s = Sketch()
    for v in (0.0, -5.0, -math.inf, math.nan, math.inf, 7.0):
        s.add(v)
    assert s.count == 4
    assert s.bins[ZERO_KEY] == 3
    assert s.quantile(0.5) == 0.0
    assert within(s.quantile(1.0), 7.0, ALPHA)
    assert bucket_key(math.nan) is None
    assert bucket_key(math.inf) is None
    assert bucket_key(-math.inf) == ZERO_KEY


def test_extreme_doubles_have_buckets_and_never_raise() -> None:
    """The smallest and largest positive doubles get keys inside the encoding's key range."""
    for v in (5e-324, 2.2e-308, 1.7976931348623157e308):
        key = bucket_key(v)
        assert key is not None and ZERO_KEY < key < -ZERO_KEY
        assert decode(encode({key: 1})) == {key: 1}
    assert bucket_value(bucket_key(1.7976931348623157e308)) > 1e308  # type: ignore[arg-type]


def test_an_empty_sketch_has_no_quantile_and_an_empty_encoding() -> None:
    """No values: quantile None, encode [], SQL literal '{}'; NaN q has no answer either."""
    s = Sketch()
    assert s.quantile(0.5) is None
    assert s.encode() == []
    assert to_sql_text(s.encode()) == "{}"
    assert sketch_of([1.0]).quantile(math.nan) is None


def test_q_outside_zero_one_is_clamped() -> None:
    """q below 0 reads the minimum and above 1 the maximum, as histogram_quantile does."""
    s = sketch_of([1.0, 10.0, 100.0])
    assert s.quantile(-1) == s.quantile(0.0)
    assert s.quantile(2) == s.quantile(1.0)


def test_counts_saturate_instead_of_spilling_into_the_key() -> None:
    """A count past 2**44 - 1 is stored as 2**44 - 1, and the key stays intact."""
    packed = encode({5: 2**50})
    assert decode(packed) == {5: 2**44 - 1}


def test_log_normal_and_pareto_percentiles_stay_within_two_percent() -> None:
    """Seeded log-normal latencies and Pareto token counts: p50/p95/p99 within 2 % (in fact 1 %)."""
    rng = random.Random(15)
    latencies = [rng.lognormvariate(6.5, 1.2) for _ in range(20_000)]
    tokens = [int(200 * rng.paretovariate(1.1)) for _ in range(20_000)]
    for values in (latencies, tokens):
        s = sketch_of(values)
        for q in (0.5, 0.95, 0.99):
            assert within(s.quantile(q), exact_quantile(values, q), 0.02)
            assert within(s.quantile(q), exact_quantile(values, q), ALPHA + 1e-9)


def test_sql_text_is_a_bigint_array_literal() -> None:
    """to_sql_text gives PostgreSQL's array syntax for the sorted encoding."""
    packed = encode({-3: 1, 2: 5})
    assert to_sql_text(packed) == "{" + f"{packed[0]},{packed[1]}" + "}"


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_quantile_of_a_mapping_matches_the_sketch_method(q: float) -> None:
    """The module function and the method agree (the SQL twin is checked in test_sketch_sql)."""
    s = sketch_of([float(i) for i in range(1, 1000)])
    assert quantile_of(s.bins, q) == s.quantile(q)
