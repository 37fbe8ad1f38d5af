"""A mergeable quantile sketch of bounded relative error, and its database encoding.

Owns the bucket mapping that ``observability.sketch_quantile`` (sql/0004.sketch.sql) reads back,
so the constants below have a twin there; ``tests/test_sketch.py`` checks that both agree. It
knows nothing of rows, metrics or SQL connections: the roll-up feeds it values, the sink sends
:meth:`Sketch.encode`'s list as a ``bigint[]``.

The mapping (DDSketch, Masson et al., VLDB 2019): a value ``v > 0`` goes to bucket
``k = ceil(log(v) / log(GAMMA))``, the interval ``(GAMMA**(k-1), GAMMA**k]``, and is read back as
``2 * GAMMA**k / (GAMMA + 1)``. Every value in the bucket is within ``ALPHA`` of that estimate,
relative to itself, so a quantile is within ``ALPHA`` (1 %) of the exact value of the same rank,
whatever the distribution. Merging two sketches adds their bucket counts: exact, associative and
commutative, which is what makes per-minute rows, models and processes mergeable in SQL.

Range: all finite positive doubles have a bucket, so 0.1 ms .. 1 h latencies (867 possible
buckets) and 1 .. 10 million tokens (806) need no configuration. Only occupied buckets are
stored: a minute's roll-up cell of a few hundred calls holds tens to a few hundred buckets.

Zero and negative values: durations and token counts are never negative, so ``v <= 0`` (a zero
duration at clock resolution, a call with no output, or a clock step) is counted in one *zero
bucket* that reads back as 0 (-inf too). NaN and +inf carry no position and are ignored; the
caller's count/sum columns should skip them as well.

Encoding: one ``bigint`` per occupied bucket, ``key * 2**44 + count`` (the key in the signed
high 20 bits, the count in the low 44), sorted by key — which is the sort order of the integers
themselves. One plain ``bigint[]`` column, 8 bytes a bucket, merged in SQL by unnesting,
splitting with ``>> 44`` and ``& (2**44 - 1)``, and summing per key. The zero bucket has the
smallest key, so it sorts first. A count saturates at ``2**44 - 1`` (17.6 trillion in one 1 %
bucket) rather than spill into the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = [
    "ALPHA",
    "COUNT_BITS",
    "GAMMA",
    "ZERO_KEY",
    "Sketch",
    "bucket_key",
    "bucket_value",
    "decode",
    "encode",
    "merge_encoded",
    "quantile_of",
    "to_sql_text",
]

# 1 % keeps read-back percentiles inside the 2 % promise with room for float noise at bucket
# edges, at about 115 buckets per factor of 10 of spread.
ALPHA: Final = 0.01
GAMMA: Final = (1.0 + ALPHA) / (1.0 - ALPHA)
# Divided by, not multiplied with its inverse: the same IEEE operations as the SQL twin
# (ceil(ln(v) / ln(gamma))), so both put a value on a bucket edge in the same bucket.
_LOG_GAMMA: Final = math.log(GAMMA)
# 2 * GAMMA**k / (GAMMA + 1) == GAMMA**k * (1 - ALPHA): the value whose error to both ends of
# the bucket is ALPHA.
_ESTIMATE_FACTOR: Final = 2.0 / (GAMMA + 1.0)

COUNT_BITS: Final = 44
_COUNT_MASK: Final = (1 << COUNT_BITS) - 1
_KEY_BITS: Final = 64 - COUNT_BITS
# The smallest key: below every bucket of a positive double (log(5e-324) / log(GAMMA) ≈ -37,400).
ZERO_KEY: Final = -(1 << (_KEY_BITS - 1))

_log: Final = math.log
_ceil: Final = math.ceil
_isnan: Final = math.isnan
_INF: Final = math.inf


def bucket_key(value: float) -> int | None:
    """The bucket of ``value``: ZERO_KEY for ``value <= 0``, None for NaN and +inf."""
    if value > 0.0:
        if value < _INF:
            return _ceil(_log(value) / _LOG_GAMMA)
        return None
    if not _isnan(value):
        return ZERO_KEY
    return None


def bucket_value(key: int) -> float:
    """The value a bucket reads back as (0 for the zero bucket)."""
    if key == ZERO_KEY:
        return 0.0
    try:
        return float(GAMMA**key * _ESTIMATE_FACTOR)
    except OverflowError:  # the bucket of the largest doubles
        return math.inf


def encode(bins: Mapping[int, int]) -> list[int]:
    """``{key: count}`` as the sorted ``bigint`` list the database stores (zero counts dropped)."""
    return [
        (key << COUNT_BITS) | min(count, _COUNT_MASK)
        for key, count in sorted(bins.items())
        if count > 0
    ]


def decode(packed: Iterable[int]) -> dict[int, int]:
    """The ``{key: count}`` of an encoded sketch (duplicate keys are summed, as SQL does)."""
    bins: dict[int, int] = {}
    for element in packed:
        key = element >> COUNT_BITS
        bins[key] = bins.get(key, 0) + (element & _COUNT_MASK)
    return bins


def merge_encoded(*sketches: Iterable[int] | None) -> list[int]:
    """The merge of encoded sketches; None counts as empty, as in ``observability.sketch_add``."""
    bins: dict[int, int] = {}
    for packed in sketches:
        if packed is None:
            continue
        for key, count in decode(packed).items():
            bins[key] = bins.get(key, 0) + count
    return encode(bins)


def to_sql_text(packed: Iterable[int]) -> str:
    """The ``bigint[]`` literal of an encoded sketch, for an ``unnest($n::text[])`` parameter.

    A batch of sketches is an array of arrays of unequal length, which PostgreSQL has no type
    for; each travels as text and is cast back with ``::bigint[]`` per row.
    """
    return "{" + ",".join(map(str, packed)) + "}"


def quantile_of(bins: Mapping[int, int], q: float) -> float | None:
    """The ``q``-quantile (0..1, clamped) of ``{key: count}``; None when it is empty.

    The rank convention is ``percentile_disc``'s: the value at position ``ceil(q * n)`` (at
    least 1) of the sorted values, so the two can be compared directly.
    """
    total = sum(bins.values())
    if total <= 0 or _isnan(q):
        return None
    q = min(max(q, 0.0), 1.0)
    # The epsilon keeps float noise (0.3 * 10 = 3.0000000000000004) from skipping a rank; the
    # SQL function uses the same one.
    rank = max(1, _ceil(q * total - 1e-9))
    running = 0
    for key in sorted(bins):
        running += bins[key]
        if running >= rank:
            return bucket_value(key)
    return bucket_value(max(bins))  # unreachable: running ends at total >= rank


class Sketch:
    """A DDSketch of non-negative measures: ``add``, ``merge``, ``quantile``, ``encode``.

    Plain ``{key: count}`` underneath (ints only), so a sketch waiting in a retry queue gives
    the cycle collector nothing to walk once encoded.
    """

    __slots__ = ("bins",)

    def __init__(self, bins: Mapping[int, int] | None = None) -> None:
        self.bins: dict[int, int] = dict(bins) if bins else {}

    @classmethod
    def from_encoded(cls, packed: Iterable[int]) -> Sketch:
        """A sketch from its database encoding."""
        sketch = cls()
        sketch.bins = decode(packed)
        return sketch

    def add(self, value: float) -> None:
        """Count one value (``<= 0`` in the zero bucket; NaN and +inf ignored)."""
        # bucket_key inlined: this runs for every metric of every row the flusher writes.
        if value > 0.0:
            if value >= _INF:
                return
            key = _ceil(_log(value) / _LOG_GAMMA)
        elif not _isnan(value):
            key = ZERO_KEY
        else:
            return
        bins = self.bins
        bins[key] = bins.get(key, 0) + 1

    def merge(self, other: Sketch) -> None:
        """Add ``other``'s counts to this sketch."""
        bins = self.bins
        for key, count in other.bins.items():
            bins[key] = bins.get(key, 0) + count

    def copy(self) -> Sketch:
        """An independent copy."""
        return Sketch(self.bins)

    @property
    def count(self) -> int:
        """How many values were added (NaN and +inf excluded)."""
        return sum(self.bins.values())

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile, within ALPHA of the exact value of the same rank; None if empty."""
        return quantile_of(self.bins, q)

    def encode(self) -> list[int]:
        """The sorted ``bigint`` list stored in ``metrics_aggregates.sketch``."""
        return encode(self.bins)

    def __len__(self) -> int:
        return len(self.bins)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return encode(self.bins) == encode(other.bins)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Sketch(count={self.count}, buckets={len(self.bins)})"
