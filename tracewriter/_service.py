"""The API an application calls: ``ObservabilityService`` and its ``span()`` scope.

Owns the recording calls (``start_trace``, ``end_trace``, ``span``, ``log_*``), configuration
and the lifecycle of the providers it fans out to. Every recording call is plain (not async),
builds one event — a plain tuple laid out as :class:`~tracewriter._records.Event` — and hands
it to each provider, each call guarded:
nothing here raises into the application, and nothing waits on I/O. Exceptions raised by the
application's own code inside ``span()`` propagate unchanged.
"""

from __future__ import annotations

import datetime as _dt
import gc
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from time import monotonic, time_ns
from types import TracebackType
from typing import Any, Final, TypeVar

from tracewriter._config import WriterConfig, redact_dsn, redact_text
from tracewriter._context import (
    TraceContext,
    make_context,
    reset_context,
    tracewriter_current_context,
)
from tracewriter._handles import Facts, SpanHandle, end_event, merge_facts
from tracewriter._ids import new_span_id, new_trace_id
from tracewriter._logging import RateLimitedLog, get_logger
from tracewriter._policy import Policy
from tracewriter._provider import LoopThread, PostgresProvider, Provider, WriterStats
from tracewriter._records import (
    NO_DETAIL,
    EventKind,
    EventTuple,
    clean_text,
    snapshot_metadata,
)
from tracewriter.errors import ConfigurationError

__all__ = ["ObservabilityService", "get_instance", "reset_instance"]

_log = get_logger("service")
_T = TypeVar("_T")
# The context variable's own methods: on the recording path a wrapper's frame costs more
# than the lookup (current_context() is the public spelling of _current).
_current: Final = tracewriter_current_context.get
_set_current: Final = tracewriter_current_context.set
_reset_current: Final = tracewriter_current_context.reset
_fromtimestamp: Final = _dt.datetime.fromtimestamp
_UTC: Final = _dt.UTC
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MICROSECOND: Final = _dt.timedelta(microseconds=1)

_TRACE_START: Final = EventKind.TRACE_START
_TRACE_END: Final = EventKind.TRACE_END
_SPAN_START: Final = EventKind.SPAN_START
_SPAN_END: Final = EventKind.SPAN_END
_SPAN: Final = EventKind.SPAN
_CHAT: Final = EventKind.CHAT
_DOCUMENT: Final = EventKind.DOCUMENT


def _ns_of(timestamp: _dt.datetime | None) -> int:
    if timestamp is None:
        return time_ns()
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=_dt.UTC)
    return ((timestamp - _EPOCH) // _MICROSECOND) * 1000


def _child_of(parent: TraceContext | None, start_ns: int, mono: float) -> TraceContext:
    """The context of a span starting now under ``parent``; with no parent, a root span of a
    new trace (no parent span id: nothing is recorded that would point at a span never written).
    """
    if parent is None:
        trace_id, parent_id = new_trace_id(), None
        user_id = session_id = kb_id = None
    else:
        trace_id, parent_id = parent.trace_id, parent.span_id
        user_id, session_id, kb_id = parent.user_id, parent.session_id, parent.kb_id
    return make_context(
        trace_id,
        new_span_id(),
        parent_id,
        user_id,
        session_id,
        kb_id,
        _fromtimestamp(start_ns / 1e9, _UTC),  # time_ns() is always in range
        mono,
    )


class _SpanScope:
    """What ``span()`` returns: a ``with`` / ``async with`` scope that yields the span id."""

    __slots__ = (
        "_child",
        "_facts",
        "_meta",
        "_mono",
        "_name",
        "_parent",
        "_start_ns",
        "_svc",
        "_token",
        "_type",
    )

    def __init__(
        self,
        svc: ObservabilityService,
        parent: TraceContext | None,
        name: str,
        span_type: str | None,
        metadata: Any,
    ) -> None:
        self._svc = svc
        self._parent = parent
        self._name = name
        self._type = span_type
        self._meta = metadata
        self._child: TraceContext | None = None
        self._token: Any = None
        self._start_ns = 0
        self._mono = 0.0
        self._facts: Facts | None = None

    def set(
        self,
        *,
        status: str | None = None,
        error: BaseException | str | None = None,
        model: str | None = None,
        provider: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_input_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        metadata: Any = None,
    ) -> None:
        """Facts the span ends with, known only inside the block (a streamed call's usage).

        The keywords of :meth:`SpanHandle.end`; recorded when the block exits. A later call's
        arguments replace an earlier one's, except those it leaves None. If the block raises,
        the status and error are the exception's; the model, tokens and metadata are kept.
        Never raises.
        """
        try:
            facts = (status, error, model, provider, input_tokens, output_tokens,
                     cached_input_tokens, reasoning_tokens,
                     None if metadata is None else snapshot_metadata(metadata))  # fmt: skip
            earlier = self._facts  # usually None: set() once, when the stream's usage arrives
            self._facts = facts if earlier is None else merge_facts(earlier, facts)
        except Exception as exc:
            self._svc._internal_error("span_set", exc)

    def __enter__(self) -> str:
        try:
            self._start_ns = time_ns()
            self._mono = monotonic()
            child = _child_of(self._parent or _current(), self._start_ns, self._mono)
            self._child = child
            meta = self._meta
            self._svc._emit(
                (_SPAN_START, self._start_ns, None, child.trace_id, child.span_id,
                child.parent_span_id, self._name, self._type, None, None, None, None,
                child.user_id, child.session_id, child.kb_id,
                None if meta is None else snapshot_metadata(meta),
                None, None, None, None, None, None)
            )  # fmt: skip
            self._token = _set_current(child)
            return child.span_id
        except Exception as exc:
            self._svc._internal_error("span_enter", exc)
            return self._child.span_id if self._child is not None else new_span_id()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            child = self._child
            if child is not None and self._facts is not None:
                self._svc._emit(
                    end_event(child, self._start_ns, self._mono, self._name, self._type,
                              self._facts, exc_type, exc)
                )  # fmt: skip
            elif child is not None:
                duration = (monotonic() - self._mono) * 1000.0
                failed = exc_type is not None
                self._svc._emit(
                    (_SPAN_END, self._start_ns, time_ns(), child.trace_id, child.span_id,
                    child.parent_span_id, self._name, self._type,
                    "error" if failed else "ok", duration,
                    exc_type.__qualname__ if exc_type is not None else None,
                    str(exc) if failed else None,
                    child.user_id, child.session_id, child.kb_id, None,
                    None, None, None, None, None, None)
                )  # fmt: skip
        except Exception as err:  # str(exc) of a hostile exception, say
            self._svc._internal_error("span_exit", err)
        finally:
            token = self._token
            if token is not None:
                self._token = None
                try:
                    _reset_current(token)
                except (ValueError, RuntimeError):  # another context, or used: the slow way
                    reset_context(token)  # never raises
        # Returning None lets the application's exception propagate unchanged.

    async def __aenter__(self) -> str:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class ObservabilityService:
    """Records traces, spans, LLM calls, chat messages and document events.

    With a DSN (argument or ``TRACEWRITER_DSN``) it creates a :class:`PostgresProvider` first;
    ``providers`` are called after it, in order. ``writer_options`` are the fields of
    :class:`~tracewriter._config.WriterConfig` (``flush_interval``, ``max_batch_rows``,
    ``max_buffer_rows``, ``pool_size``, ``open_row_grace``, ``thread_mode``, …); each falls back
    to its ``TRACEWRITER_*`` environment variable. Invalid configuration raises
    :class:`~tracewriter.errors.ConfigurationError` here, naming the setting.

    Use ``await start()`` / ``await close()`` or ``async with``; in ``thread_mode`` also
    ``start_sync()`` / ``close_sync()`` or plain ``with``, from code with no event loop. Either
    way every provider is started, flushed and closed.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        providers: Iterable[Provider] = (),
        config: WriterConfig | None = None,
        **writer_options: Any,
    ) -> None:
        if config is not None and (dsn is not None or writer_options):
            raise ConfigurationError("config: pass either config= or dsn/writer options, not both")
        self.config = (
            config if config is not None else WriterConfig.from_env(dsn=dsn, **writer_options)
        )
        self.config.validate()
        self.postgres: PostgresProvider | None = (
            PostgresProvider(self.config) if self.config.dsn else None
        )
        chain: list[Provider] = [self.postgres] if self.postgres is not None else []
        for provider in providers:
            if not isinstance(provider, Provider):
                raise ConfigurationError(
                    f"providers: {provider!r} is not a tracewriter.Provider (subclass it for "
                    "the defaults, or define name, record, reject, start, flush, close and "
                    "use_policy)"
                )
            chain.append(provider)
        self._providers: tuple[Provider, ...] = tuple(chain)
        # What gets stored is a policy of the service, the same for every provider: each gets
        # a Policy of its own (sampling keeps per-trace state) from the same settings.
        for provider in chain:
            provider.use_policy(Policy.of(self.config))
        # With PostgreSQL the only provider (the usual case) events go straight to it: no loop,
        # no per-provider guard (its record() is a locked append; the recording method's own
        # guard still catches anything). Otherwise each provider is called, each guarded.
        self._emit: Callable[[EventTuple], None] = (
            self.postgres.record
            if self.postgres is not None and len(chain) == 1
            else self._emit_all
        )
        self.provider_failures: Counter[str] = Counter()
        self._failure_logs: dict[str, RateLimitedLog] = {}
        self.internal_errors = 0
        self.duplicate_span_ends = 0  # SpanHandle.end called again: ignored, counted here
        self.rejected = 0
        self._rejected_log = RateLimitedLog(_log, "event_rejected")
        self._internal_log = RateLimitedLog(_log, "recording_failed", level="error")
        # Where the synchronous lifecycle runs the providers' coroutines: one loop for all
        # three calls, so what a provider binds to its loop in start() still works in close().
        self._sync_loop: LoopThread | None = None
        self._started_once = False  # start() has returned once (and collected, see start())

    def __repr__(self) -> str:
        names = [p.name for p in self._providers]
        return f"ObservabilityService(dsn={redact_dsn(self.config.dsn)!r}, providers={names})"

    # --- fan-out ------------------------------------------------------------------------------

    def _emit_all(self, event: EventTuple) -> None:
        for provider in self._providers:
            try:
                provider.record(event)
            except Exception as exc:
                self._provider_failed(provider, exc)

    def _provider_failed(self, provider: Provider, exc: BaseException) -> None:
        name = str(provider.name)
        self.provider_failures[name] += 1
        log = self._failure_logs.get(name)
        if log is None:
            log = self._failure_logs[name] = RateLimitedLog(_log, "provider_failed")
        log.hit(
            provider=name,
            error=redact_text(f"{type(exc).__name__}: {exc}"[:300], self.config.dsn),
            failures=self.provider_failures[name],
        )

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.internal_errors += 1
        self._internal_log.hit(where=where, error=repr(type(exc)))

    def _reject(self, reason: str, **context: Any) -> None:
        self.rejected += 1
        for provider in self._providers:
            try:
                provider.reject()
            except Exception as exc:
                self._provider_failed(provider, exc)
        self._rejected_log.hit(reason=reason, **context)

    # --- recording: plain methods, never raise, never wait ----------------------------------

    def start_trace(
        self,
        name: str,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        kb_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TraceContext:
        """Start a trace; returns its root context (pass it to spans and ``end_trace``)."""
        try:
            ctx = TraceContext.new_root(user_id=user_id, session_id=session_id, kb_id=kb_id)
            self._emit(
                (_TRACE_START, _ns_of(ctx.timestamp), None, ctx.trace_id, ctx.span_id, None,
                name, None, None, None, None, None, user_id, session_id, kb_id,
                None if metadata is None else snapshot_metadata(metadata),
                None, None, None, None, None, None)
            )  # fmt: skip
            return ctx
        except Exception as exc:
            self._internal_error("start_trace", exc)
            return TraceContext.new_root()

    def end_trace(
        self,
        ctx: TraceContext,
        *,
        status: str = "ok",
        error_message: str | None = None,
        duration_ms: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """End the trace ``ctx`` started; the duration comes from a monotonic clock if not given."""
        try:
            if duration_ms is None and ctx.start_monotonic is not None:
                duration_ms = (monotonic() - ctx.start_monotonic) * 1000.0
            self._emit(
                (_TRACE_END, _ns_of(ctx.timestamp), time_ns(), ctx.trace_id, ctx.span_id,
                None, None, None, status, duration_ms, None, error_message,
                ctx.user_id, ctx.session_id, ctx.kb_id,
                None if metadata is None else snapshot_metadata(metadata),
                None, None, None, None, None, None)
            )  # fmt: skip
        except Exception as exc:
            self._internal_error("end_trace", exc)

    def span(
        self,
        ctx: TraceContext | None,
        name: str,
        span_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> _SpanScope:
        """A child span of ``ctx`` (or of the current context) for a ``with``/``async with`` block.

        The block sees the child as the current context; its duration is measured with
        ``time.monotonic()``; if it raises, the span is recorded with status ``error`` and the
        exception's type and message, and the exception propagates unchanged.
        """
        return _SpanScope(self, ctx, name, span_type, metadata)

    def start_span(
        self,
        ctx: TraceContext | None,
        name: str,
        span_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SpanHandle:
        """Start a child span of ``ctx`` (or of the current context) that ends when told.

        For spans that outlive a block: a streamed call, or a callback framework's
        ``on_llm_start`` / ``on_llm_end``. Returns a :class:`SpanHandle` carrying the span id
        and the span's own context; end it once with ``handle.end(...)``, from any task or
        thread, giving what is known only then (status, error, model, provider, tokens). It
        does not change the current context. Never raises.
        """
        try:
            start_ns = time_ns()
            mono = monotonic()
            child = _child_of(ctx or _current(), start_ns, mono)
            self._emit(
                (_SPAN_START, start_ns, None, child.trace_id, child.span_id,
                child.parent_span_id, name, span_type, None, None, None, None,
                child.user_id, child.session_id, child.kb_id,
                None if metadata is None else snapshot_metadata(metadata),
                None, None, None, None, None, None)
            )  # fmt: skip
            return SpanHandle(self, child, start_ns, mono, name, span_type)
        except Exception as exc:
            self._internal_error("start_span", exc)
            return SpanHandle(self, TraceContext.new_root(), time_ns(), monotonic(), name, None)

    def log_llm_call(
        self,
        ctx: TraceContext | None,
        *,
        model: str,
        provider: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_input_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        duration_ms: float | None = None,
        status: str = "ok",
        error_message: str | None = None,
        name: str = "llm.call",
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a finished LLM call as a complete span; returns its span id, always."""
        span_id = new_span_id()
        try:
            parent = ctx or _current()
            end_ns = time_ns()
            start_ns = end_ns
            # The row's timestamp is the call's start; 0 < d < 1e12 is also false for NaN.
            if type(duration_ms) in (float, int) and 0 < duration_ms < 1e12:  # type: ignore[operator]
                start_ns = end_ns - int(duration_ms * 1_000_000)  # type: ignore[operator]
            if parent is not None:
                trace_id, parent_id = parent.trace_id, parent.span_id
                user_id, session_id, kb_id = parent.user_id, parent.session_id, parent.kb_id
            else:  # no context: the call is a root span of a trace of its own
                trace_id, parent_id = new_trace_id(), None
                user_id = session_id = kb_id = None
            self._emit(
                (_SPAN, start_ns, end_ns, trace_id, span_id, parent_id, name,
                "llm", status, duration_ms, None, error_message, user_id, session_id, kb_id,
                None if metadata is None else snapshot_metadata(metadata),
                model, provider, input_tokens, output_tokens, cached_input_tokens,
                reasoning_tokens)
            )  # fmt: skip
        except Exception as exc:
            self._internal_error("log_llm_call", exc)
        return span_id

    def log_chat_message(
        self,
        ctx: TraceContext | None,
        *,
        role: str,
        content: str,
        token_count: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one chat message (full content, and a 500-character preview)."""
        try:
            c = ctx or _current()
            self._emit(
                (_CHAT, time_ns(), None, c.trace_id if c else "", c.span_id if c else None,
                None, None, None, None, None, None, None,
                c.user_id if c else None, c.session_id if c else None,
                c.kb_id if c else None,
                None if metadata is None else snapshot_metadata(metadata),
                role, content, token_count, None, None, None)
            )  # fmt: skip
        except Exception as exc:
            self._internal_error("log_chat_message", exc)

    def log_document_event(
        self,
        ctx: TraceContext | None,
        *,
        document_id: str,
        event_type: str,
        status: str = "ok",
        duration_ms: float | None = None,
        chunk_count: int | None = None,
        error_message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a document-ingestion event; the context must carry a ``kb_id``.

        Without one the event is refused: a warning is logged, the rejection counted, and
        nothing is written.
        """
        try:
            c = ctx or _current()
            kb_id = c.kb_id if c is not None else None
            if c is None or not kb_id:
                self._reject("document event without kb_id", event_type=clean_text(event_type, 64))
                return
            end_ns = time_ns()
            self._emit(
                (_DOCUMENT, end_ns, end_ns, c.trace_id, None, None, None, None,
                status, duration_ms, None, error_message, c.user_id,
                c.session_id, kb_id,
                None if metadata is None else snapshot_metadata(metadata),
                document_id, event_type, chunk_count, None, None, None)
            )  # fmt: skip
        except Exception as exc:
            self._internal_error("log_document_event", exc)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every provider; a configuration problem (DSN, password, schema) raises here.

        The first call that succeeds ends with one full collection of the cycle collector, on
        the caller's thread (13 ms here without the price table, 30-45 ms with it; a collector
        the application disabled is left alone). Start-up leaves tens of thousands of new
        long-lived objects (the price table alone is ~31,000, the pool and its connections
        more); left to CPython, they are promoted by a full collection during the first
        seconds of traffic, which measured 27-40 ms inside the loop-lag benchmark's run.
        Collected here, they are in the oldest generation before the first request, and the
        next full collection waits until the long-lived objects grow by a quarter again. An
        application that wants no full collection to walk them at all can call
        ``gc.freeze()`` after this returns (see the README).
        """
        for provider in self._providers:
            await provider.start()
        if not self._started_once:
            self._started_once = True  # a second start() has nothing new to promote
            if gc.isenabled():
                gc.collect()

    async def flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded so far; True if every provider finished in time."""
        ok = True
        for provider in self._providers:
            try:
                ok = bool(await provider.flush(timeout)) and ok
            except Exception as exc:
                self._provider_failed(provider, exc)
                ok = False
        return ok

    async def close(self, timeout: float | None = None) -> None:
        """Flush within ``timeout`` and close every provider; never raises for a provider."""
        for provider in self._providers:
            try:
                await provider.close(timeout)
            except Exception as exc:
                self._provider_failed(provider, exc)

    # The synchronous lifecycle runs the methods above on a loop of its own thread.

    def start_sync(self) -> None:
        """:meth:`start` from code with no event loop (requires ``thread_mode`` for PostgreSQL)."""
        if self.postgres is not None and not self.config.thread_mode:
            raise ConfigurationError("thread_mode: start_sync() needs thread_mode=True")
        self._sync_run(self.start())

    def flush_sync(self, timeout: float | None = None) -> bool:
        """:meth:`flush` from code with no event loop (thread mode)."""
        if self._would_deadlock("flush_sync"):
            return False
        return self._sync_run(self.flush(timeout))

    def close_sync(self, timeout: float | None = None) -> None:
        """:meth:`close` from code with no event loop (thread mode)."""
        if self._would_deadlock("close_sync"):
            return
        try:
            self._sync_run(self.close(timeout))
        finally:
            if self._sync_loop is not None:
                self._sync_loop.stop()
                self._sync_loop = None

    def _sync_run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._sync_loop is None or not self._sync_loop.alive:  # first use, or after a fork
            self._sync_loop = LoopThread("tracewriter-lifecycle")
        return self._sync_loop.call(coro)

    def _would_deadlock(self, call: str) -> bool:
        return self.postgres is not None and self.postgres.sync_call_would_deadlock(call)

    def stats(self) -> WriterStats | None:
        """The PostgreSQL writer's counters (None without a DSN)."""
        return self.postgres.stats() if self.postgres is not None else None

    async def __aenter__(self) -> ObservabilityService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __enter__(self) -> ObservabilityService:
        self.start_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_sync()

    # --- spans recorded elsewhere (kept last: tracewriter.otel is its caller) ----------------

    def record_span(  # noqa: PLR0917 - positional on purpose: once per OpenTelemetry span
        self,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        name: str | None,
        start_ns: int,
        end_ns: int,
        span_type: str | None = None,
        status: str = "ok",
        error_type: str | None = None,
        error_message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        llm: tuple[Any, ...] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        kb_id: str | None = None,
        trace_metadata: Mapping[str, Any] | None = None,
        *,
        trace: bool = False,
    ) -> None:
        """Record a span that started and ended elsewhere, with its own ids and wall-clock times.

        This is how :class:`tracewriter.otel.TracewriterSpanProcessor` hands an ended
        OpenTelemetry span to the same fan-out, buffer and ledger as every other call: one
        complete span event (``start_ns``/``end_ns`` in nanoseconds since the epoch; ``llm`` is
        ``(model, provider, input_tokens, output_tokens, cached_input_tokens,
        reasoning_tokens)``). With ``trace=True`` the span is also its trace's root, and a
        start and an end event give the trace row (``trace_metadata`` its metadata). Nothing
        is validated here — the background path does that, as for every call — and nothing
        raises.
        """
        try:
            duration = (end_ns - start_ns) / 1e6 if end_ns is not None else None
            self._emit(
                (_SPAN, start_ns, end_ns, trace_id, span_id, parent_span_id, name, span_type,
                status, duration, error_type, error_message, user_id, session_id, kb_id,
                None if metadata is None else snapshot_metadata(metadata), *(llm or NO_DETAIL))
            )  # fmt: skip
            if trace:
                self._emit(
                    (_TRACE_START, start_ns, None, trace_id, span_id, None, name, None, None,
                    None, None, None, user_id, session_id, kb_id,
                    None if trace_metadata is None else snapshot_metadata(trace_metadata),
                    None, None, None, None, None, None)
                )  # fmt: skip
                self._emit(
                    (_TRACE_END, start_ns, end_ns, trace_id, span_id, None, None, None,
                    status, duration, error_type, error_message, user_id, session_id, kb_id,
                    None, None, None, None, None, None, None)
                )  # fmt: skip
        except Exception as exc:
            self._internal_error("record_span", exc)


_instance: ObservabilityService | None = None
_instance_lock = threading.Lock()


def get_instance(**options: Any) -> ObservabilityService:
    """A process-wide service built from ``TRACEWRITER_*`` settings (and ``options``) on first use.

    The caller still starts and closes it. Explicit construction is preferred; this is a
    convenience for code that cannot pass a service around.
    """
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = ObservabilityService(**options)
        return _instance


def reset_instance() -> ObservabilityService | None:
    """Forget the process-wide service and return it (the caller closes it)."""
    global _instance
    with _instance_lock:
        previous, _instance = _instance, None
    return previous
