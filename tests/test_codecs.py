"""The writer's timestamptz codec against asyncpg's default, through a real server.

The writer's pool encodes and decodes ``timestamptz`` with ``tracewriter._codecs`` (cheaper per
row); whatever a caller or a row hands it, the server must receive the same instant, and a read
must return the same value, as with asyncpg's own codec.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracewriter import ObservabilityService
from tracewriter import _pgsink as pgsink
from tracewriter._codecs import decode_timestamptz, encode_timestamptz

UTC = dt.UTC


async def _pair(dsn: str) -> tuple[asyncpg.Connection, asyncpg.Connection]:
    default = await asyncpg.connect(dsn)
    ours = await asyncpg.connect(dsn)
    await ours.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=encode_timestamptz,
        decoder=decode_timestamptz,
        format="tuple",
    )
    for conn in (default, ours):
        await conn.execute("SET TimeZone = 'UTC'")
    return default, ours


@pytest.fixture
async def conns(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    default, ours = await _pair(db_dsn)
    try:
        yield default, ours
    finally:
        await default.close()
        await ours.close()


async def _sent(conn: asyncpg.Connection, value: Any) -> tuple[str, str | None]:
    """What the server made of ``value`` as a timestamptz parameter (or the error's type)."""
    try:
        return "ok", await conn.fetchval("SELECT $1::timestamptz::text", value)
    except Exception as exc:  # the same refusal either way is the requirement
        return type(exc).__name__, None


async def _read(conn: asyncpg.Connection, text: str) -> tuple[str, Any]:
    try:
        value = await conn.fetchval("SELECT $1::text::timestamptz", text)
    except Exception as exc:
        return type(exc).__name__, None
    return "ok", (value, value.tzinfo)


EDGES: list[Any] = [
    dt.datetime(2026, 12, 1, 17, 30, 0, 123456, tzinfo=UTC),  # a row's timestamp
    dt.datetime(2000, 1, 1, tzinfo=UTC),
    dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    dt.datetime(1970, 1, 1, tzinfo=UTC),
    dt.datetime(1, 1, 1, tzinfo=UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # asyncpg sends infinity
    dt.datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC),
    dt.datetime.max,  # naive max and min: the infinities
    dt.datetime.min,
    dt.datetime(2026, 6, 1, 12, 0),  # naive: local time
    dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(-dt.timedelta(hours=11))),
    dt.date(2026, 6, 1),  # a date: local midnight
    dt.date(2000, 1, 1),
    "2026-06-01",  # refused by both
    1_700_000_000,
    None,
]


@pytest.fixture(params=["UTC", "Asia/Kolkata", "America/New_York"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The process's local time zone (naive datetimes and dates are local time to asyncpg)."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


async def test_every_edge_value_reaches_the_server_as_asyncpgs_default_sends_it(
    conns: tuple[asyncpg.Connection, asyncpg.Connection], local_zone: str
) -> None:
    default, ours = conns
    for value in EDGES:
        expected = await _sent(default, value)
        assert await _sent(ours, value) == expected, value
    # The infinities, a refusal and local time really are among them (the list tests what it
    # says): a naive value is read in the zone the process runs in.
    assert (await _sent(default, dt.datetime.max))[1] == "infinity"
    assert (await _sent(default, "2026-06-01"))[0] == "DataError"
    # (asyncpg takes a date at the zone's offset of today, not of that date: so do we.)
    offset = dt.datetime.now(UTC).astimezone().utcoffset()
    assert offset is not None and (offset == dt.timedelta(0)) == (local_zone == "UTC")
    midnight = dt.datetime(2026, 6, 1, tzinfo=UTC) - offset
    assert (await _sent(default, dt.date(2026, 6, 1)))[1] == f"{midnight:%Y-%m-%d %H:%M:%S}+00"


async def test_reads_return_what_asyncpgs_default_returns(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    default, ours = conns
    texts = [
        "2026-12-01 17:30:00.123456+00",
        "1999-12-31 23:59:59.999999+00",
        "2000-01-01 00:00:00+00",
        "0001-01-01 00:00:00+00",
        "9999-12-31 23:59:59.999999+00",
        "2026-06-01 12:00:00+05:30",
        "infinity",
        "-infinity",
        "10000-01-01 00:00:00+00",  # past Python's datetime: refused both ways
        "4713-01-01 00:00:00+00 BC",
    ]
    for text in texts:
        assert await _read(ours, text) == await _read(default, text), text


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    value=st.one_of(
        st.datetimes(timezones=st.just(UTC)),
        st.datetimes(timezones=st.timezones()),
        st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
        st.dates(),
    )
)
def test_any_datetime_is_sent_as_asyncpgs_default_sends_it(db_dsn: str, value: Any) -> None:
    async def check() -> None:
        default, ours = await _pair(db_dsn)
        try:
            assert await _sent(ours, value) == await _sent(default, value)
        finally:
            await default.close()
            await ours.close()

    asyncio.run(check())


async def test_the_writer_copies_its_rows_through_the_codec(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's connections get the codec: every row's timestamp goes through it, and the
    rows read back (with asyncpg's default) at the instants recorded."""
    encoded: list[object] = []

    def spy(value: object) -> tuple[int]:
        encoded.append(value)
        return encode_timestamptz(value)

    monkeypatch.setattr(pgsink, "encode_timestamptz", spy)
    svc = ObservabilityService(db_dsn, flush_interval=0.05)
    await svc.start()
    ctx = svc.start_trace("codec", user_id="u-codec")
    for i in range(5):
        svc.log_llm_call(ctx, model="m", input_tokens=i, output_tokens=1, duration_ms=2.0)
    svc.end_trace(ctx)
    assert await svc.flush(timeout=10)
    await svc.close()
    conn = await asyncpg.connect(db_dsn)
    try:
        stamps = await conn.fetch(
            'SELECT "timestamp" FROM observability.spans WHERE trace_id = $1', ctx.trace_id
        )
        trace_stamp = await conn.fetchval(
            'SELECT "timestamp" FROM observability.traces WHERE trace_id = $1', ctx.trace_id
        )
    finally:
        await conn.close()
    assert len(stamps) == 5
    written = {r[0] for r in stamps} | {trace_stamp}
    assert written <= set(encoded)  # each row's timestamp passed through the codec
    assert all(type(v) is dt.datetime and v.tzinfo is UTC for v in written)
