"""Providers: where the service sends events. ``PostgresProvider`` is the one this library is for.

Owns the lifecycle of one writer — a buffer, a flusher and a sink wired together — and where it
runs: as a task on the event loop that started it (default), or on a dedicated thread with its
own loop (``thread_mode``, for synchronous applications, and to keep COPY encoding off a
latency-critical loop). The flusher code is the same in both. It also owns what happens at a
fork (the child gets a fresh, unstarted writer and never touches the parent's pool or buffer)
and at interpreter exit (a bounded best-effort flush of a writer nobody closed).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from tracewriter._buffer import Buffer, LedgerSnapshot
from tracewriter._config import WriterConfig, redact_dsn
from tracewriter._flusher import Flusher, FlusherSettings
from tracewriter._logging import get_logger
from tracewriter._pgsink import PostgresSink
from tracewriter._records import EventTuple
from tracewriter._sink import Sink
from tracewriter.errors import ConfigurationError, WriterClosedError

__all__ = ["PostgresProvider", "Provider", "WriterStats"]

_log = get_logger("provider")
T = TypeVar("T")


@runtime_checkable
class Provider(Protocol):
    """Anything the service can send events to.

    ``record`` is called on the application's hot path: it must return at once and should not
    raise (the service guards it anyway). A provider may also define ``async start()``,
    ``async flush(timeout)``, ``async close(timeout)`` and ``stats()``; the service calls them
    when present.
    """

    name: str

    def record(self, event: EventTuple) -> None:
        """Take one event: a plain tuple laid out as :class:`~tracewriter._records.Event`."""


@dataclass(frozen=True, slots=True)
class WriterStats(LedgerSnapshot):
    """A consistent snapshot of a writer's counters.

    Events are counted, not rows: a span whose start and end were coalesced is two events
    written as one row. At every moment ``enqueued == written + dropped_overflow +
    dead_lettered + rejected_invalid + buffered + in_flight``. ``dropped_overflow`` counts every
    event dropped rather than written — for a full buffer, or because it arrived after
    ``close()`` or was still unwritten when the close deadline passed (``dropped_at_close``).
    """

    retries: int = 0
    flushes: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)
    end_upserts: int = 0
    held_open: int = 0
    last_flush_duration: float | None = None
    last_flush_at: Any = None
    last_error: str | None = None
    consecutive_failures: int = 0
    internal_errors: int = 0
    running: bool = False


# Writers alive in this process, for the fork and exit hooks.
_LIVE: weakref.WeakSet[PostgresProvider] = weakref.WeakSet()
# Pools inherited across a fork, or left behind by a loop that ended, are kept referenced
# forever, so that garbage collection never runs their finalisers against sockets that are
# the parent's (or that belong to a closed loop).
_INHERITED: list[object] = []


class PostgresProvider:
    """Writes events into PostgreSQL through a bounded buffer and a background flusher.

    ``sink`` replaces the PostgreSQL sink (tests use :class:`tracewriter.testing.InMemorySink`).
    Events recorded before :meth:`start` are buffered (bounded) and written once it runs.
    """

    name = "postgres"

    def __init__(self, config: WriterConfig, *, sink: Sink | None = None) -> None:
        if sink is None and not config.dsn:
            raise ConfigurationError("dsn: PostgresProvider needs a DSN (or TRACEWRITER_DSN)")
        self.config = config
        self._custom_sink = sink
        self.name = config.provider_name
        self._closed = False
        self._build_parts()
        _LIVE.add(self)

    def _build_parts(self) -> None:
        cfg = self.config
        self._sink: Sink = self._custom_sink or PostgresSink(cfg)
        self._buffer = Buffer(max_rows=cfg.max_buffer_rows, batch_rows=cfg.max_batch_rows)
        self._flusher = Flusher(
            self._buffer,
            self._sink,
            FlusherSettings(
                flush_interval=cfg.flush_interval,
                max_batch_rows=cfg.max_batch_rows,
                open_row_grace=cfg.open_row_grace,
                retry_initial_backoff=cfg.retry_initial_backoff,
                retry_max_backoff=cfg.retry_max_backoff,
                partition_check_interval=cfg.partition_check_interval,
                provider_name=cfg.provider_name,
                dead_letter_max_chars=cfg.dead_letter_max_chars,
            ),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_exit: asyncio.Future[None] | None = None
        self._started = False
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return (
            f"PostgresProvider(dsn={redact_dsn(self.config.dsn)!r}, "
            f"thread_mode={self.config.thread_mode}, started={self._started})"
        )

    # --- the hot path -------------------------------------------------------------------------

    def record(self, event: EventTuple) -> None:
        """Buffer one event: a locked append, no I/O; a full buffer drops and counts it."""
        self._buffer.put(event)

    def reject(self) -> None:
        """Count one event the service refused before building it (a bad argument)."""
        self._buffer.reject()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the writer is running."""
        return self._started

    async def start(self) -> None:
        """Connect, check the schema and start flushing; configuration errors raise here."""
        if self._closed:
            raise WriterClosedError("this writer has been closed")
        if self._started:
            return
        if self.config.thread_mode:
            await asyncio.to_thread(self.start_sync)
            return
        await self._sink.open()
        loop = asyncio.get_running_loop()
        self._attach(loop)
        self._task = loop.create_task(self._flusher.run(), name="tracewriter-flusher")
        self._task.add_done_callback(self._on_task_done)
        self._started = True
        _log.info("writer_started", mode="loop", dsn=redact_dsn(self.config.dsn))

    def start_sync(self, timeout: float | None = None) -> None:
        """Start in thread mode without an event loop; returns once connected."""
        if self._closed:
            raise WriterClosedError("this writer has been closed")
        if self._started:
            return
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="tracewriter-writer", daemon=True
        )
        self._thread.start()
        ready.result(timeout=timeout if timeout is not None else self.config.connect_timeout + 5)
        self._started = True
        _log.info("writer_started", mode="thread", dsn=redact_dsn(self.config.dsn))

    def _thread_main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._thread_body(loop, ready))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _thread_body(
        self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[None]
    ) -> None:
        try:
            await self._sink.open()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._attach(loop)
        self._task = loop.create_task(self._flusher.run(), name="tracewriter-flusher")
        self._task.add_done_callback(self._on_task_done)
        # The loop must outlive the flusher task: close() still drains on it afterwards.
        self._thread_exit = loop.create_future()
        ready.set_result(None)
        await self._thread_exit

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        flusher = self._flusher

        def wake() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(flusher.wake)

        self._buffer.on_batch_ready = wake

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is not None:
            self._flusher.stats.internal_errors += 1
            _log.error("flusher_task_died", error=repr(exc))

    async def flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded so far; True when it all reached the database in time."""
        if not self._started or self._closed:
            return False
        limit = self.config.command_timeout if timeout is None else timeout
        return await self._on_writer_loop(self._flusher.drain(limit))

    def flush_sync(self, timeout: float | None = None) -> bool:
        """:meth:`flush` for thread mode, from code without an event loop."""
        if not self._started or self._closed or self._loop is None:
            return False
        limit = self.config.command_timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(self._flusher.drain(limit), self._loop)
        return future.result(timeout=limit + 5)

    async def close(self, timeout: float | None = None) -> None:
        """Flush what is buffered within ``timeout``, then close; leftovers count as dropped."""
        if self._closed:
            return
        limit = self.config.close_timeout if timeout is None else timeout
        loop = self._loop
        if not self._started:
            self._drop_unstarted()
        elif loop is not None and loop.is_running():
            await self._on_writer_loop(self._shutdown(limit))
        else:  # started on a loop that has since ended: finish on this one
            await self._shutdown_on_new_loop(limit)
        self._finish_close()

    def close_sync(self, timeout: float | None = None) -> None:
        """:meth:`close` from code without a running event loop (thread mode, or at exit)."""
        if self._closed:
            return
        limit = self.config.close_timeout if timeout is None else timeout
        loop = self._loop
        if not self._started:
            self._drop_unstarted()
        elif loop is not None and loop.is_running():
            if self._thread is None or self._thread is threading.current_thread():
                # Blocking here would deadlock the loop that has to do the work.
                _log.warning("close_sync_on_running_loop", hint="await close() instead")
                return
            future = asyncio.run_coroutine_threadsafe(self._shutdown(limit), loop)
            try:
                future.result(timeout=limit + 5)
            except Exception as exc:
                _log.warning("writer_close_failed", error=repr(exc), timeout=limit)
        else:
            try:
                with asyncio.Runner() as runner:
                    _resolve_inline(runner.get_loop())
                    runner.run(self._shutdown_on_new_loop(limit))
            except Exception as exc:
                _log.warning("exit_flush_failed", error=repr(exc))
                self._flusher.abandon()
        self._finish_close()

    def _finish_close(self) -> None:
        self._closed = True
        self._started = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        stats = self.stats()
        _log.info(
            "writer_closed",
            written=stats.written,
            dropped_overflow=stats.dropped_overflow,
            dropped_at_close=stats.dropped_at_close,
            dead_lettered=stats.dead_lettered,
        )

    def _drop_unstarted(self) -> None:
        dropped = self._flusher.abandon()
        if dropped:
            _log.warning("writer_closed_unstarted", dropped=dropped)

    async def _shutdown(self, timeout: float) -> None:
        """On the writer's loop: stop the timer, drain within ``timeout``, close the sink.

        The buffer refuses new events from here on (they are counted as dropped), so a producer
        that keeps recording cannot hold the close open until its deadline.
        """
        deadline = time.monotonic() + timeout
        self._buffer.close()
        self._flusher.stop()
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            done, _ = await asyncio.wait({task}, timeout=max(deadline - time.monotonic(), 0))
            if not done:
                task.cancel()
        drained = await self._flusher.drain(max(deadline - time.monotonic(), 0), until_empty=True)
        dropped = self._flusher.abandon()
        if dropped or not drained:
            _log.warning("close_dropped_events", dropped=dropped, timeout=timeout)
        await self._sink.close(max(deadline - time.monotonic(), 0.1))
        if self._thread_exit is not None and not self._thread_exit.done():
            self._thread_exit.set_result(None)

    async def _shutdown_on_new_loop(self, timeout: float) -> None:
        """The writer's loop is gone (say, exit after ``asyncio.run``): finish on this loop.

        The old pool belongs to the dead loop, so a fresh one is opened for the final flush.
        """
        deadline = time.monotonic() + timeout
        self._flusher.rebind()
        if isinstance(self._sink, PostgresSink):
            _INHERITED.append(self._sink.forget())
            try:
                await asyncio.wait_for(self._sink.open(), timeout=timeout)
            except Exception as exc:
                _log.warning("exit_flush_failed", error=repr(exc))
                self._flusher.abandon()
                return
        await self._shutdown(max(deadline - time.monotonic(), 0))

    async def _on_writer_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(future)

    # --- observation --------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        """Counters now; the accounting identity holds for every snapshot."""
        ledger = self._buffer.snapshot()
        f = self._flusher.stats
        return WriterStats(
            **{name: getattr(ledger, name) for name in LedgerSnapshot.__dataclass_fields__},
            retries=f.retries,
            flushes=f.flushes,
            rows_written=dict(f.rows_written),
            end_upserts=f.end_upserts,
            held_open=f.held_open,
            last_flush_duration=f.last_flush_duration,
            last_flush_at=f.last_flush_at,
            last_error=f.last_error,
            consecutive_failures=f.consecutive_failures,
            internal_errors=f.internal_errors,
            running=self._started,
        )

    # --- process events -----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        _INHERITED.append((self._sink, self._buffer, self._flusher, self._task, self._loop))
        if isinstance(self._sink, PostgresSink):
            _INHERITED.append(self._sink.forget())
        self._build_parts()
        if self._closed:
            self._buffer.close()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_started", False) and not getattr(self, "_closed", True):
            _warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)


def _after_fork_in_child() -> None:
    for provider in list(_LIVE):
        provider._after_fork_in_child()


def _resolve_inline(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` resolve host names on its own thread instead of in an executor.

    At interpreter exit ``concurrent.futures`` refuses new work ("cannot schedule new futures
    after interpreter shutdown"), so every connection the exit flush opens to a DSN that names
    a host (``localhost``, ``db``) would fail and the buffered events be dropped. Blocking on a
    lookup is fine on a loop that only the writer uses.
    """

    async def getaddrinfo(
        host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        return socket.getaddrinfo(host, port, family, type, proto, flags)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


def _at_exit() -> None:
    for provider in list(_LIVE):
        if provider.started:
            try:
                loop = provider._loop
                if provider._thread is not None and loop is not None and not loop.is_closed():
                    _resolve_inline(loop)  # the writer's own loop, on its own thread
                provider.close_sync(provider.config.atexit_timeout)
            except Exception as exc:  # never let our exit hook break the interpreter's exit
                _log.warning("exit_flush_failed", error=repr(exc))


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
