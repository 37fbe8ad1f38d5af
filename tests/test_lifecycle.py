"""The lifecycle contract: every provider is started, flushed and closed in both modes, a
provider must declare that lifecycle, and stats() tells the truth about a dead flusher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from tracewriter import (
    ConfigurationError,
    Event,
    ObservabilityService,
    PostgresProvider,
    Provider,
    WriterConfig,
)
from tracewriter.testing import InMemorySink

pytestmark = pytest.mark.timeout(60)


class LifecycleProvider(Provider):
    """A second provider that notes each lifecycle call and the event loop it ran on."""

    name = "lifecycle"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.calls: list[str] = []
        self.loops: set[int] = set()

    def record(self, event: Event) -> None:
        self.events.append(event)

    def _note(self, call: str) -> None:
        self.calls.append(call)
        self.loops.add(id(asyncio.get_running_loop()))

    async def start(self) -> None:
        self._note("start")

    async def flush(self, timeout: float | None = None) -> bool:
        self._note("flush")
        return True

    async def close(self, timeout: float | None = None) -> None:
        self._note("close")


def record_a_request(svc: ObservabilityService) -> str:
    ctx = svc.start_trace("sync.request", kb_id="kb-1")
    with svc.span(ctx, "retrieve", "retrieval"):
        svc.log_llm_call(None, model="small", input_tokens=3)
    svc.end_trace(ctx)
    return ctx.trace_id


def test_the_synchronous_lifecycle_starts_flushes_and_closes_every_provider(db_dsn: str) -> None:
    """`with svc:` and flush_sync() start, flush and close a second provider as well as
    PostgreSQL, all on one event loop, and PostgreSQL still writes every row."""
    second = LifecycleProvider()
    with ObservabilityService(
        db_dsn, thread_mode=True, flush_interval=0.05, providers=[second]
    ) as svc:
        assert second.calls == ["start"]
        trace_id = record_a_request(svc)
        assert svc.flush_sync(timeout=30)
        assert second.calls == ["start", "flush"]
    assert second.calls == ["start", "flush", "close"]
    assert len(second.loops) == 1  # what a provider binds to its loop in start() still works
    assert len(second.events) == 5
    stats = svc.stats()
    assert stats is not None and stats.balances() and stats.written == 5 and not stats.running

    async def spans() -> int:
        conn = await asyncpg.connect(db_dsn)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM observability.spans WHERE trace_id = $1", trace_id
            )
            return count
        finally:
            await conn.close()

    assert asyncio.run(spans()) == 2


def test_without_a_database_the_synchronous_lifecycle_still_runs_every_provider() -> None:
    """With no DSN, `with svc:` starts, flushes and closes the providers it was given."""
    first, second = LifecycleProvider(), LifecycleProvider()
    with ObservabilityService(providers=[first, second]) as svc:
        record_a_request(svc)
        assert svc.flush_sync()
    assert first.calls == second.calls == ["start", "flush", "close"]
    assert len(first.events) == len(second.events) == 5


def test_a_provider_that_does_not_declare_the_lifecycle_is_refused() -> None:
    """An object with only name and record() is refused at construction, naming the setting
    and the members a provider must have."""

    class RecordOnly:
        name = "record-only"

        def record(self, event: Event) -> None:
            pass

    with pytest.raises(ConfigurationError, match=r"^providers: .*tracewriter\.Provider"):
        ObservabilityService(providers=[RecordOnly()])  # type: ignore[list-item]


class TaskKiller(BaseException):
    """Not an Exception: nothing in the flusher catches it, so its task dies."""


class DyingSink(InMemorySink):
    """An in-memory sink whose first COPY raises TaskKiller; later calls work."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def forget(self) -> None:
        return None

    async def copy_rows(self, table: str, rows: Sequence[Any], *, dedupe: bool) -> None:
        if self.armed:
            self.armed = False
            raise TaskKiller("the flusher task dies here")
        await super().copy_rows(table, rows, dedupe=dedupe)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_stats_stop_saying_running_once_the_flusher_task_has_died() -> None:
    """When the flusher task dies for real, stats().running turns false, the death is logged
    and counted, and close() still writes what was recorded with a balanced ledger."""
    sink = DyingSink()
    writer = PostgresProvider(WriterConfig(flush_interval=0.01), sink=sink)
    svc = ObservabilityService(providers=[writer])
    await svc.start()
    assert writer.stats().running
    with capture_logs() as logs:
        svc.log_llm_call(None, model="m", input_tokens=1)
        await asyncio.wait_for(until(lambda: not writer.stats().running), timeout=10)
    stats = writer.stats()
    assert not stats.running and stats.internal_errors == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["flusher_task_died"]
    await svc.close(timeout=5)
    stats = writer.stats()
    assert stats.balances() and stats.written == 1 and len(sink.rows("spans")) == 1


async def test_a_blocking_call_on_the_writers_own_loop_is_refused_not_deadlocked(
    db_dsn: str,
) -> None:
    """flush_sync() and close_sync() called on the loop a loop-mode writer runs on log
    `sync_call_on_running_loop` and return at once, leaving the writer running."""
    svc = ObservabilityService(db_dsn, flush_interval=0.05)
    await svc.start()
    with capture_logs() as logs:
        assert svc.flush_sync(timeout=1) is False
        svc.close_sync(timeout=1)
    refused = [e["call"] for e in logs if e["event"] == "sync_call_on_running_loop"]
    assert refused == ["flush_sync", "close_sync"]
    stats = svc.stats()
    assert stats is not None and stats.running
    await svc.close()
