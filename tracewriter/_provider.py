"""Providers: where the service sends events. ``PostgresProvider`` is the one this library is for.

Owns the ``Provider`` contract, the lifecycle of one writer — a buffer, a flusher and a sink
wired together — and where it runs: as a task on the event loop that started it (default), or
on a :class:`LoopThread` of its own (``thread_mode``, for synchronous applications). Each
lifecycle step is written once, as a coroutine on the writer's loop; the synchronous entry
points only choose the loop to run it on. It also owns what happens at a fork (the child gets
a fresh, unstarted writer and never touches the parent's pool or buffer) and at interpreter
exit (a bounded best-effort flush of a writer nobody closed).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import Field, dataclass, field, fields
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from tracewriter._buffer import Buffer, LedgerSnapshot
from tracewriter._config import WriterConfig, redact_dsn
from tracewriter._cost import CostCalculator
from tracewriter._flusher import Flusher, FlusherSettings
from tracewriter._logging import get_logger
from tracewriter._native import is_native
from tracewriter._pgsink import PostgresSink
from tracewriter._policy import Policy
from tracewriter._records import EventTuple
from tracewriter._sink import Sink
from tracewriter._slices import writer_thread
from tracewriter.errors import ConfigurationError, WriterClosedError

__all__ = ["LoopThread", "PostgresProvider", "Provider", "WriterStats"]

_log = get_logger("provider")
T = TypeVar("T")


@runtime_checkable
class Provider(Protocol):
    """Anything the service sends events to.

    ``record`` is called on the application's hot path: it must return at once and should not
    raise (the service guards it anyway). The service calls every other member too, for every
    provider, in the asynchronous and the synchronous lifecycle alike. Subclass ``Provider`` to
    inherit the do-nothing defaults below and define only ``name``, ``record`` and what you
    need; a class that does not subclass it must define every member (the service checks).
    """

    name: str

    def record(self, event: EventTuple) -> None:
        """Take one event: a plain tuple laid out as :class:`~tracewriter._records.Event`."""

    def reject(self) -> None:
        """Count one event the service refused before building it (a bad argument)."""

    async def start(self) -> None:
        """Get ready for events; a configuration problem raises here."""

    async def flush(self, timeout: float | None = None) -> bool:
        """Deliver what was recorded so far; True when all of it arrived within ``timeout``."""
        return True

    async def close(self, timeout: float | None = None) -> None:
        """Deliver what it can within ``timeout``, then release what it holds."""

    def use_policy(self, policy: Policy) -> None:
        """Take the service's redaction, content capture and sampling, to apply off the hot
        path before anything leaves the process (the default ignores it: a provider that
        exports events must not, see :class:`tracewriter.otlp.OtlpProvider`)."""


@dataclass(frozen=True, slots=True)
class WriterStats(LedgerSnapshot):
    """A consistent snapshot of a writer's counters.

    Events are counted, not rows: a span whose start and end were coalesced is two events
    written as one row. At every moment ``enqueued == written + dropped_overflow +
    dead_lettered + rejected_invalid + sampled_out + buffered + in_flight``; ``sampled_out``
    counts events of unsampled traces (``sample_rate``), which still feed the metric roll-ups.
    ``redaction_failures`` counts fields replaced by ``[redaction_failed]`` because a
    redactor raised. ``dropped_overflow`` counts every
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
    redaction_failures: int = 0
    running: bool = False
    # LLM calls given a cost_usd, and those with a model and token counts left without one
    # (unknown model, inconsistent counts, no price data). Not events: not in the ledger.
    calls_priced: int = 0
    calls_unpriced: int = 0


class LoopThread:
    """An event loop running on a daemon thread of its own, for callers that have no loop.

    A thread-mode writer runs on one; the service keeps one for the synchronous lifecycle of
    its providers. :meth:`call` blocks the calling thread while a coroutine runs there.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        # A fork copies the object but not the thread: the child must make its own.
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        writer_thread()  # slices of work here hand the GIL to the application's threads
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def alive(self) -> bool:
        """Whether the loop runs (or is about to) in this process."""
        return self._pid == os.getpid() and self._thread.is_alive() and not self.loop.is_closed()

    def here(self) -> bool:
        """Whether the caller runs on this thread (where blocking on the loop would deadlock)."""
        return self._thread is threading.current_thread()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (``TimeoutError`` after ``timeout``;
        the coroutine then carries on there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop once what is running yields, and wait for the thread (not from it)."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.here() and self._pid == os.getpid():
            self._thread.join(timeout)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# The WriterStats fields the flusher's own counters fill: all but the ledger's and running.
_FLUSHER_FIELDS: Final = tuple(
    f
    for f in fields(WriterStats)
    if f.name not in {"running", *(g.name for g in fields(LedgerSnapshot))}
)


def _same_named(wanted: Iterable[Field[Any]], source: object) -> dict[str, Any]:
    """The values of ``source``'s attributes named like the ``wanted`` dataclass fields."""
    return {f.name: getattr(source, f.name) for f in wanted}


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
        # Every flusher setting is the configuration's setting of the same name.
        settings = FlusherSettings(**_same_named(fields(FlusherSettings), cfg))
        cost = CostCalculator(prices=cfg.prices) if cfg.price_calls else None
        self._flusher = Flusher(self._buffer, self._sink, settings, cost=cost)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: LoopThread | None = None
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

    def use_policy(self, policy: Policy) -> None:
        """Nothing to take: this writer's flusher applies the policy its own configuration
        describes (the service's, since the service builds both from one config)."""

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the writer has started and not closed."""
        return self._started

    async def start(self) -> None:
        """Connect, check the schema and start flushing; configuration errors raise here."""
        if self._refuse_start():
            return
        if self.config.thread_mode:
            # The writer gets its own thread and loop; waiting for it must not block this one.
            await asyncio.to_thread(self.start_sync)
        else:
            await self._run_here("loop")

    def start_sync(self, timeout: float | None = None) -> None:
        """Start on a thread and loop of the writer's own, from code without an event loop;
        returns once connected."""
        if self._refuse_start():
            return
        thread = LoopThread("tracewriter-writer")
        limit = self.config.connect_timeout + 5 if timeout is None else timeout
        try:
            thread.call(self._run_here("thread"), limit)
        except BaseException:
            thread.stop()
            raise
        self._thread = thread

    def _refuse_start(self) -> bool:
        """Raise if closed; True if there is nothing to do (already started)."""
        if self._closed:
            raise WriterClosedError("this writer has been closed")
        return self._started

    async def _run_here(self, mode: str) -> None:
        """On the loop that becomes the writer's: connect, then run the flusher as its task."""
        cost = self._flusher.cost
        if cost is not None:  # importing the price database takes ~0.3 s: not on this loop
            await asyncio.to_thread(cost.load)
        await self._sink.open()
        loop = asyncio.get_running_loop()
        self._attach(loop)
        self._task = loop.create_task(self._flusher.run(), name="tracewriter-flusher")
        self._task.add_done_callback(self._on_task_done)
        self._started = True
        _log.info("writer_started", mode=mode, dsn=redact_dsn(self.config.dsn), native=is_native())

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
            self._flusher.note_task_died()
            _log.error("flusher_task_died", error=repr(exc))

    async def flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded so far; True when it all reached the database in time."""
        if not self._started or self._closed:
            return False
        limit = self.config.command_timeout if timeout is None else timeout
        return await self._on_writer_loop(self._flusher.drain(limit))

    def flush_sync(self, timeout: float | None = None) -> bool:
        """:meth:`flush` from code without a running event loop (thread mode)."""
        limit = self.config.command_timeout if timeout is None else timeout
        if self.sync_call_would_deadlock("flush_sync"):
            return False
        return self._blocking(self.flush(limit), limit + 5)

    async def close(self, timeout: float | None = None) -> None:
        """Flush what is buffered within ``timeout``, then close; leftovers count as dropped."""
        if self._closed:
            return
        limit = self.config.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if not self._started:
            self._drop_unstarted()
        elif await self._ensure_writer_loop(limit):
            await self._on_writer_loop(self._shutdown(max(deadline - time.monotonic(), 0)))
        self._finish_close()

    def close_sync(self, timeout: float | None = None) -> None:
        """:meth:`close` from code without a running event loop (thread mode, or at exit)."""
        if self._closed or self.sync_call_would_deadlock("close_sync"):
            return
        limit = self.config.close_timeout if timeout is None else timeout
        try:
            self._blocking(self.close(limit), limit + 5)
        except Exception as exc:
            _log.warning("writer_close_failed", error=repr(exc), timeout=limit)
            loop = self._loop
            if loop is None or not loop.is_running():  # nothing is closing it any more
                self._flusher.abandon()
            self._finish_close()
        if self._thread is not None:
            self._thread.stop()

    def sync_call_would_deadlock(self, call: str) -> bool:
        """Whether this thread runs the writer's loop, which a blocking ``call`` would freeze
        (logged as ``sync_call_on_running_loop``)."""
        loop = self._loop
        if loop is None or running_loop() is not loop:
            return False
        _log.warning("sync_call_on_running_loop", call=call, hint="await the async method instead")
        return True

    def _blocking(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run one lifecycle step from code without a running loop: on the writer's loop while
        it runs (on its own thread), else on a fresh loop here (the writer's loop has ended)."""
        loop = self._loop
        if loop is not None and loop.is_running():
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
        with asyncio.Runner() as runner:
            _resolve_inline(runner.get_loop())
            return runner.run(coro)

    async def _on_writer_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return await asyncio.wrap_future(future)

    async def _ensure_writer_loop(self, timeout: float) -> bool:
        """Make sure the writer's loop runs; if it has ended, make this loop the writer's.

        After an exit that follows ``asyncio.run``, say, the pool belongs to the dead loop, so a
        fresh one is opened here for the final flush. False (everything dropped) if it cannot.
        """
        loop = self._loop
        if loop is not None and loop.is_running():
            return True
        self._flusher.rebind()
        self._attach(asyncio.get_running_loop())
        _INHERITED.append(self._sink.forget())
        try:
            await asyncio.wait_for(self._sink.open(), timeout=timeout)
        except Exception as exc:
            _log.warning("exit_flush_failed", error=repr(exc))
            self._flusher.abandon()
            return False
        return True

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

    def _finish_close(self) -> None:
        if self._closed:  # close_sync gave up waiting, and the close it started has finished
            return
        self._closed = True
        self._started = False
        if self._thread is not None and not self._thread.here():
            self._thread.stop()
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

    # --- observation --------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        """Counters now; the accounting identity holds for every snapshot."""
        flusher = _same_named(_FLUSHER_FIELDS, self._flusher.stats())
        return WriterStats(
            **_same_named(fields(LedgerSnapshot), self._buffer.snapshot()),
            **flusher,
            # A flusher task that died (a bug, a BaseException) is not running, started or not.
            running=self._started and self._task is not None and not self._task.done(),
        )

    # --- process events -----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        _INHERITED.append(
            (self._sink, self._buffer, self._flusher, self._task, self._loop, self._thread)
        )
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
