"""How the writer's own connections send and read ``timestamptz``: asyncpg's values, less CPU.

Every row the writer copies carries a ``timestamptz``, and asyncpg's default binary encoder
spends 0.6-0.8 µs on each (it compares the value with two infinities, converts its zone and
subtracts a datetime, all through Python objects): a fifth of a span row's COPY encoding
(``python -m benchmarks.profile encode``). Registered on the writer's pool through asyncpg's
``tuple`` format, :func:`encode_timestamptz` turns the writer's own values — aware datetimes
in UTC, which every row builder makes — into microseconds since 2000 with integer arithmetic,
and takes every other value the way asyncpg's default would: naive datetimes as local time,
dates as local midnight, ``datetime.max``/``min`` (naive) as PostgreSQL's infinities, anything
else refused with asyncpg's TypeError. :func:`decode_timestamptz` returns what asyncpg's
default decoder returns. ``tests/test_codecs.py`` holds both to asyncpg's defaults through a
real server.

Pure and synchronous: no asyncpg import here (the sink registers the pair).
"""

from __future__ import annotations

import datetime as _dt
from typing import Final

__all__ = ["decode_timestamptz", "encode_timestamptz"]

_UTC: Final = _dt.UTC
_PG_EPOCH: Final = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)
# PostgreSQL's infinite timestamps on the wire, and what asyncpg maps them to and from: naive
# datetime.max and datetime.min (asyncpg/pgproto/codecs/datetime.pyx).
_PG_INFINITY: Final = 0x7FFFFFFFFFFFFFFF
_PG_NEGATIVE_INFINITY: Final = -0x8000000000000000
_INFINITY: Final = _dt.datetime(_dt.MAXYEAR, 12, 31, 23, 59, 59, 999999)
_NEGATIVE_INFINITY: Final = _dt.datetime(_dt.MINYEAR, 1, 1)
# The same instants in microseconds since 2000 (UTC): asyncpg sends those as infinities too.
_INFINITY_US: Final = 252_455_615_999_999_999
_NEGATIVE_INFINITY_US: Final = -63_082_281_600_000_000


def _on_the_wire(delta: _dt.timedelta) -> int:
    us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if us == _INFINITY_US:
        return _PG_INFINITY
    if us == _NEGATIVE_INFINITY_US:
        return _PG_NEGATIVE_INFINITY
    return us


def _local_timezone() -> _dt.timezone:
    offset = _dt.datetime.now(_UTC).astimezone().utcoffset()
    assert offset is not None  # astimezone() with no argument gives an aware datetime
    return _dt.timezone(offset)


def encode_timestamptz(value: object) -> tuple[int]:
    """``(microseconds since 2000-01-01 UTC,)`` for asyncpg's tuple format, as its default
    encoder would send ``value``."""
    if type(value) is _dt.datetime and value.tzinfo is _UTC:  # every row the writer builds
        return (_on_the_wire(value - _PG_EPOCH),)
    if not isinstance(value, _dt.datetime):
        if not isinstance(value, _dt.date):
            raise TypeError(
                "expected a datetime.date or datetime.datetime instance, "
                f"got {type(value).__name__!r}"
            )
        value = _dt.datetime(value.year, value.month, value.day, tzinfo=_local_timezone())
    # Aware values never equal a naive one: only naive max and min are the infinities here.
    if value == _INFINITY:
        return (_PG_INFINITY,)
    if value == _NEGATIVE_INFINITY:
        return (_PG_NEGATIVE_INFINITY,)
    # A naive value is local time, as asyncpg takes it (astimezone assumes so).
    return (_on_the_wire(value.astimezone(_UTC) - _PG_EPOCH),)


def decode_timestamptz(value: tuple[int]) -> _dt.datetime:
    """The aware UTC datetime asyncpg's default decoder returns (naive max/min for the
    infinities)."""
    us = value[0]
    if us == _PG_INFINITY:
        return _INFINITY
    if us == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return _PG_EPOCH + _dt.timedelta(microseconds=us)
