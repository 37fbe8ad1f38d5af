"""The ORM design tracewriter replaces: SQLAlchemy 2.0 async, one session and commit per event.

Owns a declarative mapping of ``observability.spans`` and the loop that writes one row per
session commit, as an application that logs through its ORM would. Imported only by the
benchmark (SQLAlchemy is in the ``bench`` extra, never a dependency of the library).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import decimal
import time
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import DateTime, Float, Integer, Numeric, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tracewriter._schema import SPAN_COLUMNS


class _Base(DeclarativeBase):
    pass


class SpanRecord(_Base):
    """``observability.spans`` as an ORM user would map it."""

    __tablename__ = "spans"
    __table_args__ = {"schema": "observability"}  # noqa: RUF012 - SQLAlchemy's own convention

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    timestamp: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    trace_id: Mapped[str] = mapped_column(Text)
    span_id: Mapped[str] = mapped_column(Text)
    parent_span_id: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    span_type: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_input_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[str | None] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(Text)
    kb_id: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    price_source: Mapped[str | None] = mapped_column(Text)
    price_version: Mapped[str | None] = mapped_column(Text)
    # "metadata" is reserved on declarative classes: the attribute takes another name.
    attributes: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)


_ATTRIBUTES = tuple("attributes" if c == "metadata" else c for c in SPAN_COLUMNS)


def _url(dsn: str) -> str:
    rest = dsn.strip().split("://", 1)[1]
    return f"postgresql+asyncpg://{rest}"


async def write_per_event(
    dsn: str, rows: Sequence[tuple[Any, ...]], *, seconds: float, concurrency: int = 1
) -> dict[str, Any]:
    """Write ``rows`` one ``add()`` + ``commit()`` each until done or ``seconds`` pass."""
    # The app holds its values as Python objects; the ORM encodes the JSON itself.
    values = [
        dict(zip(_ATTRIBUTES, (*row[:-1], orjson.loads(row[-1]) if row[-1] else None), strict=True))
        for row in rows
    ]
    engine = create_async_engine(_url(dsn), pool_size=max(concurrency, 1), max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        # Connect and warm the mapper outside the timing.
        async with engine.connect():
            pass
        SpanRecord(**values[0])
        todo = iter(values)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            for value in todo:
                async with sessions() as session:
                    session.add(SpanRecord(**value))
                    await session.commit()
                done += 1
                if time.perf_counter() >= deadline:
                    return

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await engine.dispose()
    return {"rows": done, "seconds": elapsed, "rows_per_s": done / elapsed}
