"""OpenTelemetry out: ``OtlpProvider`` sends every event to a collector as OTLP/HTTP protobuf.

Owns the conversion of our events to OTLP and their delivery: a bounded queue filled on the
caller's thread (one locked append), drained by one background task on the event loop that
``start()`` ran on, in batches, with retries and backoff, counted in its own :meth:`stats`.
Nothing here can slow the PostgreSQL path or the caller: ``record`` never waits, a full queue
drops and counts, and the network is only touched by the background task, through asyncio
streams that ``close(timeout)`` can cancel (a thread blocked in a socket could not be).

What becomes what:

- a trace (its start and end) is a root span; a span (its start and end, paired here) and an
  LLM call are spans, the LLM call with the GenAI attributes (``gen_ai.operation.name``,
  ``gen_ai.request.model``, ``gen_ai.provider.name``, ``gen_ai.usage.*``) and kind CLIENT;
  ``metadata`` keys become attributes.
- chat messages and document events are OTLP **log records** (``/v1/logs``), correlated by
  trace and span id: a chat message is the GenAI event ``gen_ai.<role>.message`` with the
  content as its body, a document event is ``tracewriter.document_event``. Not span events: a
  span event must travel inside its span, and a message is often logged after its span was
  sent (or belongs to the trace's root, sent last), so span events would mean holding spans
  back for messages that may never come. Log records are self-contained, are how the GenAI
  semantic conventions model messages, and a backend that takes traces only can be spared
  them with ``export_logs=False``.

It reads events only by position, through the index constants below, and metadata only
through :func:`event_metadata`, so it works whether metadata arrives as a dict or as JSON.
It needs the ``otel`` extra (``pip install tracewriter[otel]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

try:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
    from opentelemetry.proto.common.v1.common_pb2 import (
        AnyValue,
        ArrayValue,
        InstrumentationScope,
        KeyValue,
        KeyValueList,
    )
    from opentelemetry.proto.logs.v1.logs_pb2 import (
        LogRecord,
        ResourceLogs,
        ScopeLogs,
        SeverityNumber,
    )
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "tracewriter.otlp needs the otel extra: pip install 'tracewriter[otel]'"
    ) from exc

from tracewriter._logging import RateLimitedLog, get_logger
from tracewriter._policy import Policy
from tracewriter._provider import Provider
from tracewriter._records import (
    CONTENT_CHARS,
    DETAIL,
    DURATION_MS,
    END_NS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    KB_ID,
    KIND,
    METADATA,
    NAME,
    PARENT_SPAN_ID,
    SESSION_ID,
    SPAN_ID,
    SPAN_TYPE,
    START_NS,
    STATUS,
    TRACE_ID,
    USER_ID,
    EventKind,
    clean_float,
    clean_int_any,
    clean_text,
)
from tracewriter._records import event_metadata as _decoded_metadata
from tracewriter._slices import pause
from tracewriter.errors import ConfigurationError

__all__ = ["OtlpProvider", "OtlpStats", "event_metadata"]

_log = get_logger("otlp")


_SCOPE: Final = InstrumentationScope(name="tracewriter")
_MAX_U64: Final = 2**64 - 1
_INT64: Final = 2**63
_MAX_DEPTH: Final = 8
_MAX_RESPONSE: Final = 1 << 20
_RETRIABLE_STATUS: Final = frozenset({429, 502, 503, 504})
_GENAI_ROLES: Final = frozenset({"system", "user", "assistant", "tool"})
_HEX: Final = frozenset("0123456789abcdef")
_LOG_KINDS: Final = frozenset({EventKind.CHAT, EventKind.DOCUMENT})


def event_metadata(value: object) -> dict[str, Any] | None:
    """An event's metadata as a dict, whether it came as a dict, a mapping or JSON text/bytes.

    Anything that is not an object once decoded is wrapped as ``{"value": ...}``, as the
    PostgreSQL path stores it. Never raises.
    """
    if value is None:
        return None
    if type(value) is dict:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    decoded: Any = _decoded_metadata(value)  # the writer's own decoding of JSON text
    if type(value) is str and decoded is None and value.strip() != "null":
        decoded = value  # not JSON: keep the text rather than lose it
    elif isinstance(decoded, Mapping) and type(decoded) is not dict:
        try:
            return dict(decoded)
        except Exception:
            return {"value": clean_text(decoded)}
    return decoded if isinstance(decoded, dict) else {"value": decoded}


def _id_bytes(value: object, length: int) -> bytes | None:
    """The W3C id as bytes, or None when it is not ``length`` lowercase hex digits, not zero."""
    if type(value) is not str or len(value) != length or not _HEX.issuperset(value):
        return None
    raw = bytes.fromhex(value)
    return raw if any(raw) else None


def _u64(value: object) -> int:
    ns = clean_int_any(value)
    return 0 if ns < 0 else min(ns, _MAX_U64)


@dataclass(frozen=True, slots=True)
class OtlpStats:
    """A snapshot of the exporter's counters, in events (a start and its end are two).

    At every moment ``received == sent + dropped + failed + rejected_invalid + sampled_out +
    queued + held + in_flight``; ``sampled_out``: events of traces the service's sampling left
    out (see ``sample_rate``). ``sent``: delivered (the collector answered 2xx); ``dropped``:
    never sent (queue full, recorded after ``close()``, an open span evicted or still open at
    close, unsent when the close deadline passed); ``failed``: the collector refused them or
    every retry failed; ``rejected_invalid``: spans whose ids are not W3C ids; ``held``: span
    and trace starts waiting for their end. ``partially_rejected`` counts the spans and log
    records a collector reported rejecting inside an accepted request; ``internal_errors`` the
    events and batches our own conversion failed on (a bug to report: they are counted as
    invalid or failed, and the exporter goes on).
    """

    received: int
    sent: int
    dropped: int
    failed: int
    rejected_invalid: int
    sampled_out: int
    queued: int
    held: int
    in_flight: int
    requests: int
    retries: int
    partially_rejected: int
    internal_errors: int
    last_error: str | None
    running: bool

    def balances(self) -> bool:
        """Whether every received event is accounted for exactly once."""
        return self.received == (
            self.sent
            + self.dropped
            + self.failed
            + self.rejected_invalid
            + self.sampled_out
            + self.queued
            + self.held
            + self.in_flight
        )


class _ExportError(Exception):
    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


class _Item:
    """One OTLP span or log record being built, and how many events it stands for."""

    __slots__ = ("message", "weight")

    def __init__(self, message: Span | LogRecord, weight: int) -> None:
        self.message = message
        self.weight = weight


class OtlpProvider(Provider):
    """Sends every event to an OpenTelemetry collector (or Jaeger, Tempo, Phoenix) over OTLP/HTTP.

    ``endpoint`` is the collector's base URL; spans go to ``<endpoint>/v1/traces`` and log
    records to ``<endpoint>/v1/logs``. Pass it to the service::

        service = ObservabilityService(dsn, providers=[OtlpProvider("http://collector:4318")])

    The background task starts with ``await service.start()`` on that loop; events recorded
    before are queued (bounded). Every ``flush_interval`` seconds, or as soon as
    ``max_batch`` events wait, it sends one request per signal; a connection error, a timeout
    (``timeout`` seconds a request) or a 429/502/503/504 is retried up to ``max_retries``
    times with exponential backoff and jitter (honouring ``Retry-After``); another answer
    fails the batch. ``close(timeout)`` sends what it can within ``timeout`` and counts the
    rest as dropped. A span start waits (at most ``max_open_spans`` of them) for its end.
    """

    def __init__(
        self,
        endpoint: str = "http://localhost:4318",
        *,
        headers: Mapping[str, str] | None = None,
        service_name: str | None = None,
        resource_attributes: Mapping[str, Any] | None = None,
        export_logs: bool = True,
        max_queue: int = 8192,
        max_batch: int = 512,
        flush_interval: float = 1.0,
        timeout: float = 10.0,
        max_retries: int = 5,
        retry_initial_backoff: float = 0.5,
        retry_max_backoff: float = 30.0,
        max_open_spans: int = 10_000,
        max_value_chars: int = 32_768,
        name: str = "otlp",
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"endpoint: expected http(s)://host[:port], got {endpoint!r}")
        for setting, value in (
            ("max_queue", max_queue),
            ("max_batch", max_batch),
            ("max_open_spans", max_open_spans),
            ("max_value_chars", max_value_chars),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{setting}: must be a positive integer, got {value!r}")
        for setting, number in (
            ("flush_interval", flush_interval),
            ("timeout", timeout),
            ("retry_initial_backoff", retry_initial_backoff),
            ("retry_max_backoff", retry_max_backoff),
        ):
            if not isinstance(number, int | float) or not number > 0:
                raise ConfigurationError(f"{setting}: must be a positive number, got {number!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries: must be >= 0, got {max_retries!r}")
        extra = dict(headers or {})
        for key, header in extra.items():
            if any(c in f"{key}{header}" for c in "\r\n\x00") or ":" in key:
                raise ConfigurationError(f"headers: invalid header {key!r}")
        self.name = name
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        base = parts.path.rstrip("/")
        self._traces_path = f"{base}/v1/traces"
        self._logs_path = f"{base}/v1/logs"
        netloc = parts.netloc.rsplit("@", 1)[-1]  # never send (or log) URL credentials
        self._endpoint_repr = f"{parts.scheme}://{netloc}{base}"
        self._head_suffix = (
            f"Host: {netloc}\r\nContent-Type: application/x-protobuf\r\n"
            "User-Agent: tracewriter-otlp\r\nConnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        )
        self._export_logs = export_logs
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._flush_interval = float(flush_interval)
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._backoff = float(retry_initial_backoff)
        self._max_backoff = float(retry_max_backoff)
        self._max_open = max_open_spans
        self._max_chars = max_value_chars
        resource: dict[str, Any] = {
            "service.name": service_name or os.environ.get("OTEL_SERVICE_NAME") or "tracewriter",
            "telemetry.sdk.name": "tracewriter",
            "telemetry.sdk.language": "python",
        }
        resource.update(resource_attributes or {})
        self._resource = Resource(attributes=self._key_values(resource))

        self._lock = threading.Lock()
        self._queue: deque[Any] = deque()
        self._open: OrderedDict[tuple[str, object, object], Any] = OrderedDict()
        self._received = self._sent = self._dropped = self._failed = self._invalid = 0
        self._sampled_out = 0
        # The service's redaction, content capture and sampling (use_policy), applied in
        # _convert, off the hot path, so that nothing leaves the process that PostgreSQL
        # would not have stored.
        self._policy: Policy | None = None
        self._held = self._in_flight = 0
        self._requests = self._retries = self._partially_rejected = self._internal_errors = 0
        self._last_error: str | None = None
        self._lost_at_flush = 0
        self._closed = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_exit: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None
        self._drop_log = RateLimitedLog(_log, "otlp_dropped")
        self._fail_log = RateLimitedLog(_log, "otlp_export_failed")

    def __repr__(self) -> str:
        return f"OtlpProvider(endpoint={self._endpoint_repr!r}, running={self._task is not None})"

    def use_policy(self, policy: Policy) -> None:
        """Apply the service's redaction, content capture and sampling before exporting."""
        self._policy = policy

    # --- the hot path -------------------------------------------------------------------------

    def record(self, event: Any) -> None:
        """Queue one event: a locked append, no I/O; a full queue drops and counts it."""
        if not self._export_logs and event[KIND] in _LOG_KINDS:
            return
        with self._lock:
            self._received += 1
            if self._closed or len(self._queue) >= self._max_queue:
                self._dropped += 1
                dropped = self._dropped
                queued = -1
            else:
                self._queue.append(event)
                queued = len(self._queue)
        if queued < 0:
            self._drop_log.hit(dropped=dropped, reason="closed" if self._closed else "queue_full")
        elif queued == self._max_batch:
            self._wake()

    def reject(self) -> None:
        """Count one event the service refused before building it, as the PostgreSQL path does."""
        with self._lock:
            self._received += 1
            self._invalid += 1

    def _wake(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(wakeup.set)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task on the running loop (idempotent)."""
        if self._task is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="tracewriter-otlp")
        self._task.add_done_callback(self._on_task_done)
        _log.info("otlp_started", endpoint=self._endpoint_repr)

    def start_sync(self, timeout: float = 10.0) -> None:
        """Start on a dedicated thread with its own event loop, for programs without one.

        The service's ``start_sync()`` starts only its PostgreSQL writer: call this as well,
        and :meth:`close_sync` at the end.
        """
        if self._task is not None or self._closed:
            return
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def main() -> None:
            # The loop lives until close() has finished on it, not merely until the task ends.
            self._thread_exit = asyncio.Event()
            await self.start()
            ready.set_result(None)
            await self._thread_exit.wait()

        self._thread = threading.Thread(
            target=asyncio.run, args=(main(),), name="tracewriter-otlp", daemon=True
        )
        self._thread.start()
        ready.result(timeout=timeout)

    def flush_sync(self, timeout: float | None = None) -> bool:
        """:meth:`flush` from code without an event loop (after :meth:`start_sync`)."""
        loop = self._loop
        if self._thread is None or loop is None or not loop.is_running():
            return False
        limit = self._timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(self.flush(limit), loop)
        return future.result(timeout=limit + 5)

    def close_sync(self, timeout: float | None = None) -> None:
        """:meth:`close` from code without a running event loop."""
        limit = self._timeout if timeout is None else timeout
        loop, thread = self._loop, self._thread
        if thread is not None and loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self.close(limit), loop)
            try:
                future.result(timeout=limit + 5)
            except Exception as exc:
                _log.warning("otlp_close_failed", error=repr(exc))
            thread.join(timeout=5)
        else:
            asyncio.run(self.close(limit))

    def _on_other_loop(self) -> asyncio.AbstractEventLoop | None:
        """The exporter's own thread loop when the caller runs on a different one."""
        loop = self._loop
        if self._thread is None or loop is None or not loop.is_running():
            return None
        return None if loop is asyncio.get_running_loop() else loop

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._last_error = repr(task.exception())
            _log.error("otlp_task_died", error=self._last_error)

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued; True when every event that ended since the previous flush
        (or start) was delivered, and nothing is left queued or in flight, in time.

        Span starts still waiting for their end are not waited for.
        """
        other = self._on_other_loop()
        if other is not None:
            return await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self.flush(timeout), other)
            )
        if self._task is None or self._task.done():
            return False
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        self._wake()
        while True:
            with self._lock:
                idle = not self._queue and not self._in_flight
                lost = self._failed + self._dropped + self._invalid
            if idle:
                clean, self._lost_at_flush = lost == self._lost_at_flush, lost
                return clean
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(0.01, remaining))

    async def close(self, timeout: float | None = None) -> None:
        """Send what is queued within ``timeout`` (default: the request timeout), then stop.

        Events recorded from now on, span starts that never ended, and whatever is still
        unsent at the deadline are counted as dropped. Idempotent.
        """
        other = self._on_other_loop()
        if other is not None:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.close(timeout), other))
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
        limit = self._timeout if timeout is None else timeout
        task = self._task
        if task is not None and not task.done():
            self._stopping = True
            self._wake()
            done, _ = await asyncio.wait({task}, timeout=max(limit, 0))
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        with self._lock:
            left = len(self._queue) + self._held + self._in_flight
            self._dropped += left
            self._queue.clear()
            self._open.clear()
            self._held = self._in_flight = 0
        if self._thread_exit is not None:
            self._thread_exit.set()
        stats = self.stats()
        log = _log.warning if left else _log.info
        log(
            "otlp_closed",
            sent=stats.sent,
            dropped=stats.dropped,
            failed=stats.failed,
            dropped_at_close=left,
        )

    def stats(self) -> OtlpStats:
        """The counters now; the accounting identity holds for every snapshot."""
        with self._lock:
            return OtlpStats(
                received=self._received,
                sent=self._sent,
                dropped=self._dropped,
                failed=self._failed,
                rejected_invalid=self._invalid,
                sampled_out=self._sampled_out,
                queued=len(self._queue),
                held=self._held,
                in_flight=self._in_flight,
                requests=self._requests,
                retries=self._retries,
                partially_rejected=self._partially_rejected,
                internal_errors=self._internal_errors,
                last_error=self._last_error,
                running=self._task is not None and not self._task.done(),
            )

    # --- the background task ------------------------------------------------------------------

    async def _run(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=self._flush_interval)
                wakeup.clear()
            while True:
                with self._lock:
                    batch = [
                        self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))
                    ]
                    self._in_flight += len(batch)
                if not batch:
                    break
                try:
                    await self._export(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug of ours must not end the exporter
                    self._last_error = repr(exc)
                    self._internal_errors += 1
                    with self._lock:
                        self._failed += self._in_flight
                        self._in_flight = 0
                    _log.error("otlp_batch_failed", error=repr(exc))
            if self._stopping:
                return

    async def _export(self, batch: list[Any]) -> None:
        spans, logs = await self._convert(batch)
        if spans:
            request = ExportTraceServiceRequest(
                resource_spans=[
                    ResourceSpans(
                        resource=self._resource,
                        scope_spans=[ScopeSpans(scope=_SCOPE, spans=[i.message for i in spans])],
                    )
                ]
            )
            await self._deliver(self._traces_path, request.SerializeToString(), spans, "spans")
        if logs:
            logs_request = ExportLogsServiceRequest(
                resource_logs=[
                    ResourceLogs(
                        resource=self._resource,
                        scope_logs=[ScopeLogs(scope=_SCOPE, log_records=[i.message for i in logs])],
                    )
                ]
            )
            await self._deliver(self._logs_path, logs_request.SerializeToString(), logs, "logs")

    async def _deliver(self, path: str, body: bytes, items: list[_Item], signal: str) -> None:
        weight = sum(i.weight for i in items)
        attempt = 0
        while True:
            try:
                self._requests += 1
                status, headers, answer = await asyncio.wait_for(
                    self._post(path, body), timeout=self._timeout
                )
                if 200 <= status < 300:
                    self._count_partial(signal, answer)
                    with self._lock:
                        self._sent += weight
                        self._in_flight -= weight
                    return
                retry_after = _retry_after(headers.get("retry-after"))
                raise _ExportError(
                    f"HTTP {status}", retriable=status in _RETRIABLE_STATUS, retry_after=retry_after
                )
            except (_ExportError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                retriable = exc.retriable if isinstance(exc, _ExportError) else True
                message = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
                self._last_error = message
                if not retriable or attempt >= self._max_retries:
                    with self._lock:
                        self._failed += weight
                        self._in_flight -= weight
                    self._fail_log.hit(
                        signal=signal,
                        endpoint=self._endpoint_repr,
                        error=message,
                        events=weight,
                        attempts=attempt + 1,
                    )
                    return
                delay = min(self._backoff * 2**attempt, self._max_backoff)
                delay *= random.uniform(0.5, 1.0)
                if isinstance(exc, _ExportError) and exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self._max_backoff))
                attempt += 1
                self._retries += 1
                await asyncio.sleep(delay)

    def _count_partial(self, signal: str, answer: bytes) -> None:
        if not answer:
            return
        try:
            if signal == "spans":
                rejected = ExportTraceServiceResponse.FromString(answer).partial_success
                count = rejected.rejected_spans
            else:
                rejected_logs = ExportLogsServiceResponse.FromString(answer).partial_success
                count = rejected_logs.rejected_log_records
        except Exception:  # an answer we cannot read is still a 2xx
            return
        if count:
            self._partially_rejected += count
            self._fail_log.hit(signal=signal, endpoint=self._endpoint_repr, rejected=count)

    async def _post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 POST on a fresh connection; the caller bounds it with a timeout."""
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        try:
            head = f"POST {path} HTTP/1.1\r\n{self._head_suffix}Content-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise _ExportError(f"bad status line {status_line[:80]!r}", retriable=True)
            status = int(parts[1])
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            length = headers.get("content-length", "")
            if length.isdigit():
                answer = await reader.readexactly(min(int(length), _MAX_RESPONSE))
            else:
                answer = await reader.read(_MAX_RESPONSE)
            return status, headers, answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    # --- conversion ---------------------------------------------------------------------------

    async def _convert(self, batch: list[Any]) -> tuple[list[_Item], list[_Item]]:
        """Spans and log records for ``batch``, pairing starts with their ends."""
        spans: list[_Item] = []
        logs: list[_Item] = []
        # A span recorded whole (an OpenTelemetry span, an LLM call) by key, so that the trace
        # start and end the span processor sends for a root fold into it instead of
        # exporting the same span id twice.
        complete: dict[tuple[object, object], _Item] = {}
        opened = closed_pairs = evicted = invalid = sampled_out = 0
        policy = self._policy
        for n, recorded in enumerate(batch, 1):
            # Building protobuf messages costs some 15-40 µs an event: yield to the loop every
            # 16, so a 512-event batch never holds it for more than about a millisecond.
            if n % 16 == 0:
                await pause()
            start = None
            try:
                event = recorded if policy is None else policy.apply(recorded)
                if event is None:
                    sampled_out += 1
                    continue
                kind = event[KIND]
                if kind in _LOG_KINDS:
                    logs.append(_Item(self._log_record(event), 1))
                    continue
                if kind not in _SPAN_KINDS:  # as the PostgreSQL path refuses it
                    invalid += 1
                    continue
                key = (event[TRACE_ID], event[SPAN_ID])
                folded = complete.get(key) if kind in _TRACE_KINDS else None
                if folded is not None:
                    folded.weight += 1
                    continue
                if kind in _START_KINDS:
                    if _id_bytes(key[0], 32) is None or _id_bytes(key[1], 16) is None:
                        invalid += 1
                        continue
                    open_key = (kind, *key)
                    if open_key in self._open:  # a repeated start: the newer one waits
                        evicted += 1
                    self._open[open_key] = event
                    opened += 1
                    if len(self._open) > self._max_open:
                        self._open.popitem(last=False)
                        evicted += 1
                    continue
                if kind in _END_OF:
                    start = self._open.pop((_END_OF[kind], *key), None)
                    if start is not None:
                        closed_pairs += 1
                span = self._span(event, start)
                if span is None:
                    invalid += 1 + (start is not None)
                    continue
                item = _Item(span, 1 + (start is not None))
                spans.append(item)
                if kind == EventKind.SPAN:
                    complete[key] = item
            except Exception as exc:  # one unconvertible event must not take its batch
                invalid += 1 + (start is not None)
                self._internal_errors += 1
                self._last_error = f"convert: {type(exc).__name__}: {exc}"[:300]
        with self._lock:
            # A start moves from in flight to held, and a matched end brings its start back
            # into flight inside the span's weight (as folded trace events are); an evicted
            # start leaves held for dropped.
            self._in_flight += closed_pairs - opened - invalid - sampled_out
            self._held += opened - closed_pairs - evicted
            self._dropped += evicted
            self._invalid += invalid
            self._sampled_out += sampled_out
        if evicted:
            self._drop_log.hit(reason="open_span_evicted", dropped=evicted)
        return spans, logs

    def _span(self, event: Any, start: Any) -> Span | None:
        trace_id = _id_bytes(event[TRACE_ID], 32)
        span_id = _id_bytes(event[SPAN_ID], 16)
        if trace_id is None or span_id is None:
            return None
        first = start if start is not None else event
        kind = event[KIND]
        is_trace = kind == EventKind.TRACE_END
        parent = None if is_trace else _id_bytes(first[PARENT_SPAN_ID], 16)
        start_ns = _u64(first[START_NS])
        end_ns = _u64(event[END_NS]) if event[END_NS] is not None else 0
        if end_ns == 0:
            # NaN, inf and non-numbers give no duration; anything past ~30 years is cut there.
            duration = clean_float(event[DURATION_MS])
            end_ns = start_ns + int(min(max(duration, 0.0), 1e12) * 1e6) if duration else start_ns
        end_ns = min(max(end_ns, start_ns), _MAX_U64)
        name = first[NAME] or event[NAME] or ("trace" if is_trace else "span")
        attributes: dict[str, Any] = {}
        span_type = first[SPAN_TYPE] or event[SPAN_TYPE]
        if span_type:
            attributes["tracewriter.span_type"] = span_type
        if is_trace:
            attributes["tracewriter.trace"] = True
        span_kind = Span.SpanKind.SPAN_KIND_INTERNAL
        detail = event[DETAIL:]
        if kind == EventKind.SPAN and any(v is not None for v in detail):
            span_kind = Span.SpanKind.SPAN_KIND_CLIENT
            model, provider, input_t, output_t, cached_t, reasoning_t = (*detail, *(None,) * 6)[:6]
            if span_type == "llm":
                attributes["gen_ai.operation.name"] = "chat"
            for attr, value in (
                ("gen_ai.request.model", model),
                ("gen_ai.provider.name", provider),
                ("gen_ai.usage.input_tokens", input_t),
                ("gen_ai.usage.output_tokens", output_t),
                ("gen_ai.usage.cache_read.input_tokens", cached_t),
                ("gen_ai.usage.reasoning.output_tokens", reasoning_t),
            ):
                if value is not None:
                    attributes[attr] = value
        for attr, field_at in (
            ("user.id", USER_ID),
            ("session.id", SESSION_ID),
            ("tracewriter.kb_id", KB_ID),
        ):
            value = first[field_at] or event[field_at]
            if value is not None:
                attributes[attr] = value
        status_text = event[STATUS]
        if status_text == "error":
            status = Status(
                code=Status.StatusCode.STATUS_CODE_ERROR,
                message=clean_text(event[ERROR_MESSAGE], 1000) or "",
            )
            if event[ERROR_TYPE]:
                attributes["error.type"] = event[ERROR_TYPE]
        elif status_text in (None, "ok"):
            status = Status(code=Status.StatusCode.STATUS_CODE_OK)
        else:
            status = Status(code=Status.StatusCode.STATUS_CODE_UNSET)
            attributes["tracewriter.status"] = status_text
        self._merge_metadata(attributes, start[METADATA] if start is not None else None)
        self._merge_metadata(attributes, event[METADATA])
        return Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent or b"",
            name=clean_text(name, 1000) or "span",
            kind=span_kind,
            start_time_unix_nano=start_ns,
            end_time_unix_nano=end_ns,
            attributes=self._key_values(attributes),
            status=status,
        )

    def _log_record(self, event: Any) -> LogRecord:
        kind = event[KIND]
        detail = (*event[DETAIL:], None, None, None)
        attributes: dict[str, Any] = {}
        severity = SeverityNumber.SEVERITY_NUMBER_INFO
        if kind == EventKind.CHAT:
            role, content, token_count = detail[:3]
            role_text = clean_text(role, 64) or "unknown"
            event_name = (
                f"gen_ai.{role_text}.message" if role_text in _GENAI_ROLES else "gen_ai.message"
            )
            attributes["gen_ai.message.role"] = role_text
            if token_count is not None:
                attributes["tracewriter.token_count"] = token_count
            body = self._any(content if content is not None else "", limit=CONTENT_CHARS)
        else:
            document_id, event_type, chunk_count = detail[:3]
            event_name = "tracewriter.document_event"
            status = event[STATUS] or "ok"
            for attr, value in (
                ("tracewriter.document_id", document_id),
                ("tracewriter.event_type", event_type),
                ("tracewriter.status", status),
                ("tracewriter.duration_ms", event[DURATION_MS]),
                ("tracewriter.chunk_count", chunk_count),
                ("error.type", event[ERROR_TYPE]),
                ("tracewriter.error_message", event[ERROR_MESSAGE]),
            ):
                if value is not None:
                    attributes[attr] = value
            if status == "error":
                severity = SeverityNumber.SEVERITY_NUMBER_ERROR
            body = self._any(f"document {clean_text(event_type, 64)} {clean_text(status, 32)}")
        for attr, field_at in (
            ("user.id", USER_ID),
            ("session.id", SESSION_ID),
            ("tracewriter.kb_id", KB_ID),
        ):
            if event[field_at] is not None:
                attributes[attr] = event[field_at]
        self._merge_metadata(attributes, event[METADATA])
        ts = _u64(event[START_NS])
        return LogRecord(
            time_unix_nano=ts,
            observed_time_unix_nano=ts,
            severity_number=severity,
            severity_text="ERROR" if severity == SeverityNumber.SEVERITY_NUMBER_ERROR else "INFO",
            event_name=event_name,
            body=body,
            attributes=self._key_values(attributes),
            trace_id=_id_bytes(event[TRACE_ID], 32) or b"",
            span_id=_id_bytes(event[SPAN_ID], 16) or b"",
        )

    def _merge_metadata(self, attributes: dict[str, Any], metadata: object) -> None:
        """Metadata keys as attributes; the ones set from typed fields win."""
        meta = event_metadata(metadata)
        if meta:
            for key, value in meta.items():
                attributes.setdefault(key if type(key) is str else str(key), value)

    def _key_values(self, attributes: Mapping[str, Any]) -> list[KeyValue]:
        return [
            KeyValue(key=clean_text(key, 256) or "", value=self._any(value))
            for key, value in attributes.items()
            if value is not None
        ]

    def _any(self, value: object, depth: int = 0, limit: int | None = -1) -> AnyValue:
        """``value`` as an OTLP AnyValue: strings cut to ``max_value_chars``, nesting to 8."""
        if limit == -1:
            limit = self._max_chars
        if isinstance(value, bool):
            return AnyValue(bool_value=value)
        if isinstance(value, int):
            if -_INT64 <= value < _INT64:
                return AnyValue(int_value=value)
            return AnyValue(string_value=str(value))
        if isinstance(value, float):
            return AnyValue(double_value=value)
        if isinstance(value, str):
            return AnyValue(string_value=clean_text(value, limit) or "")
        if isinstance(value, bytes):
            return AnyValue(bytes_value=value if limit is None else value[:limit])
        if value is None:
            return AnyValue()
        if depth < _MAX_DEPTH:
            if isinstance(value, Mapping):
                return AnyValue(
                    kvlist_value=KeyValueList(
                        values=[
                            KeyValue(key=clean_text(k, 256) or "", value=self._any(v, depth + 1))
                            for k, v in value.items()
                        ]
                    )
                )
            if isinstance(value, list | tuple | set | frozenset):
                return AnyValue(
                    array_value=ArrayValue(values=[self._any(v, depth + 1) for v in value])
                )
        return AnyValue(string_value=clean_text(value, limit) or "")


_START_KINDS: Final = frozenset({EventKind.SPAN_START, EventKind.TRACE_START})
_SPAN_KINDS: Final = frozenset(
    {
        EventKind.SPAN_START,
        EventKind.SPAN_END,
        EventKind.SPAN,
        EventKind.TRACE_START,
        EventKind.TRACE_END,
    }
)
_TRACE_KINDS: Final = frozenset({EventKind.TRACE_START, EventKind.TRACE_END})
_END_OF: Final = {
    EventKind.SPAN_END: EventKind.SPAN_START,
    EventKind.TRACE_END: EventKind.TRACE_START,
}


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the backoff alone will do
    return seconds if seconds >= 0 else None
