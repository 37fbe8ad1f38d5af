"""How the PostgreSQL sink classifies the errors a server (or a Citus coordinator) returns."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tracewriter._config import WriterConfig
from tracewriter._pgsink import PostgresSink, classify_error
from tracewriter._sink import DataSinkError, RetriableSinkError


def error(cls: type[asyncpg.PostgresError], message: str) -> asyncpg.PostgresError:
    """An asyncpg server error of class ``cls`` (which fixes its SQLSTATE) saying ``message``."""
    return cls(message)


@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (asyncpg.CheckViolationError, DataSinkError),
        (asyncpg.NotNullViolationError, DataSinkError),
        (asyncpg.NullValueNotAllowedError, DataSinkError),  # Citus: NULL distribution column
        (asyncpg.QueryCanceledError, RetriableSinkError),
        (asyncpg.AdminShutdownError, RetriableSinkError),
        (asyncpg.InternalServerError, RetriableSinkError),  # unknown, until a path resolves it
    ],
)
def test_server_errors_are_classified_by_sqlstate(
    cls: type[asyncpg.PostgresError], kind: type[Exception]
) -> None:
    """Data and integrity classes (22, 23) are data errors; the rest are retried."""
    classified = classify_error(error(cls, "x"))
    assert type(classified) is kind and classified.sqlstate == cls.sqlstate


async def test_an_internal_error_from_the_end_upsert_is_isolated_not_retried_forever() -> None:
    """XX000 from the end-upsert (INSERT ... SELECT, which reports a Citus worker's own state)
    comes back as a data error, so the flusher splits the batch instead of retrying it as is
    forever; any other server error keeps its classification."""
    sink = PostgresSink(WriterConfig(dsn="postgresql://nobody@127.0.0.1:1/none"))
    raised: list[asyncpg.PostgresError] = []

    async def execute(sql: str, *args: Any) -> None:
        raise raised[-1]

    sink._execute = execute  # type: ignore[method-assign]  # a fault no server gives on demand
    raised.append(error(asyncpg.InternalServerError, "cache lookup failed"))
    with pytest.raises(DataSinkError) as internal:
        await sink.upsert_ends("spans", [])
    assert internal.value.sqlstate == "XX000"
    raised.append(error(asyncpg.AdminShutdownError, "terminating connection"))
    with pytest.raises(RetriableSinkError):
        await sink.upsert_ends("spans", [])
