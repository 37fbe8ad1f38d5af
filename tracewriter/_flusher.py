"""The flusher: the one background task that drains the buffer into a sink.

Owns timing (every ``flush_interval``, early when a batch is full, at once on ``flush()``),
feeding taken events to the :class:`~tracewriter._assembler.Assembler` in slices of about a
millisecond (it builds rows and coalesces starts with ends), retries with
exponential backoff and jitter, isolation of rows the database refuses (split the batch until
they are alone, then dead-letter them), the metric roll-ups of what was written, and the
accounting of every event taken from the buffer. It talks to a :class:`~tracewriter._sink.Sink`
and knows no SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tracewriter._assembler import Assembler, Pending
from tracewriter._buffer import Buffer
from tracewriter._config import WriterConfig
from tracewriter._cost import CostCalculator
from tracewriter._graveyard import bury
from tracewriter._logging import RateLimitedLog, get_logger
from tracewriter._policy import Policy
from tracewriter._records import (
    EventTuple,
    InvalidEvent,
    Row,
    build,
    clean_text,
    priced_builders,
)
from tracewriter._rollup import Rollup
from tracewriter._sink import (
    DeadLetter,
    Sink,
    SinkError,
    SyncStatus,
)
from tracewriter._slices import pause

__all__ = ["Flusher", "FlusherSettings", "FlusherStats"]

_log = get_logger("flusher")

# Work done between yields to the event loop the flusher shares with the application: about
# 0.2 ms each (~5 µs an event assembled and priced, ~0.5 µs a row's metrics collected plus a
# fold of FOLD_AT values now and then, ~0.2 µs a value folded, ~15 µs a roll-up cell turned
# into a row and encoded). A yield costs one loop iteration (~10 µs); slices of 256 events
# (1.3 ms) were what a 1 ms ticker on the loop saw, at its p99, on a quiet machine.
_BUILD_CHUNK: Final = 32
_ROLLUP_CHUNK: Final = 256
_FOLD_BUDGET: Final = 1024  # roll-up values folded per slice
_METRIC_BATCH_ROWS: Final = 16  # roll-up rows per upsert statement, each its own claimed batch
_MAX_PENDING_DEAD_LETTERS: Final = 10_000
_MAX_PENDING_METRIC_BATCHES: Final = 16_000  # ~1,000 flushes of ~16 cells


_DEFAULTS: Final = WriterConfig()


@dataclass(frozen=True, slots=True)
class FlusherSettings:
    """The part of the writer configuration the flusher uses; the defaults are WriterConfig's
    (the one home of every default), for tests and benchmarks that build a flusher alone."""

    flush_interval: float = _DEFAULTS.flush_interval
    max_batch_rows: int = _DEFAULTS.max_batch_rows
    open_row_grace: float = _DEFAULTS.open_row_grace
    retry_initial_backoff: float = _DEFAULTS.retry_initial_backoff
    retry_max_backoff: float = _DEFAULTS.retry_max_backoff
    partition_check_interval: float = _DEFAULTS.partition_check_interval
    provider_name: str = _DEFAULTS.provider_name
    dead_letter_max_chars: int = _DEFAULTS.dead_letter_max_chars
    redact: object = _DEFAULTS.redact
    capture_content: str = _DEFAULTS.capture_content
    sample_rate: float = _DEFAULTS.sample_rate
    sample_follow_parent: bool = _DEFAULTS.sample_follow_parent


@dataclass(slots=True)
class FlusherStats:
    """What the flusher did, beyond the buffer's ledger."""

    flushes: int = 0
    retries: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)
    end_upserts: int = 0
    last_flush_duration: float | None = None
    last_flush_at: _dt.datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    internal_errors: int = 0
    held_open: int = 0
    calls_priced: int = 0
    calls_unpriced: int = 0
    redaction_failures: int = 0


class _Batch:
    """Rows of one table to write together, their event weights, and whether a retry must
    de-duplicate (set after a retriable failure: the write may have committed)."""

    __slots__ = ("ambiguous", "rows", "weights")

    def __init__(self, rows: list[Row], weights: bytearray) -> None:
        self.rows = rows
        self.weights = weights
        self.ambiguous = False


WriteOp = Callable[[str, Sequence[Row], bool], Awaitable[None]]


def _retriable(exc: BaseException) -> bool:
    """The one decision between retrying a write later and isolating its rows now."""
    return isinstance(exc, SinkError) and exc.retriable


def _server_reachable(exc: BaseException) -> bool:
    """Whether the server answered the failed write (a SQLSTATE outside class 08): then it
    can take the status row that reports the failure."""
    sqlstate = getattr(exc, "sqlstate", None)
    return not isinstance(exc, SinkError) or bool(sqlstate and not sqlstate.startswith("08"))


class Flusher:
    """Drains ``buffer`` into ``sink``. Run :meth:`run` as one task; call the rest from its loop."""

    def __init__(
        self,
        buffer: Buffer,
        sink: Sink,
        settings: FlusherSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        cost: CostCalculator | None = None,
    ) -> None:
        self._buffer = buffer
        self._sink = sink
        self._settings = settings
        self._clock = clock
        # LLM calls are priced where their rows are built; the calculator counts what it
        # could not price (stats() reports it).
        self.cost = cost
        if cost is None:
            self._assembler = Assembler(open_row_grace=settings.open_row_grace, build=build)
        else:
            build_priced, builders = priced_builders(cost, build)
            self._assembler = Assembler(
                open_row_grace=settings.open_row_grace, build=build_priced, builders=builders
            )
        self._policy = Policy.of(settings)
        self._inserts: dict[str, list[_Batch]] = {}
        self._ends: dict[str, list[_Batch]] = {}
        self._metric_batches: list[tuple[str, list[Row]]] = []
        self._dead_letters: list[DeadLetter] = []
        self._rollup = Rollup()
        self._status_sent = 0
        self._status_failed = 0
        self._dropped_reported = 0
        self._unbuilt: deque[EventTuple] = deque()
        self._stats = FlusherStats()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False
        self._next_maintenance = 0.0
        self._rejected_log = RateLimitedLog(_log, "event_rejected")
        self._retry_log = RateLimitedLog(_log, "flush_failed", level="warning")
        self._status_log = RateLimitedLog(_log, "sync_status_failed", level="warning")
        self._dead_letter_log = RateLimitedLog(_log, "batch_dead_lettered", level="warning")
        self._dead_letter_dropped_log = RateLimitedLog(_log, "dead_letter_dropped", level="error")
        self._metrics_dropped_log = RateLimitedLog(_log, "metric_rollup_dropped", level="warning")
        # The failure streak not yet written to provider_sync_status: (error, when, length).
        self._unreported_failure: tuple[str, _dt.datetime, int] | None = None

    # --- control ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a flush now (from the flusher's loop; other threads use call_soon_threadsafe)."""
        self._wake.set()

    def stats(self) -> FlusherStats:
        """A copy of the counters of flushes, retries and errors, with what is held open now."""
        cost = self.cost
        return dataclasses.replace(
            self._stats,
            rows_written=dict(self._stats.rows_written),
            held_open=self._assembler.held,
            calls_priced=0 if cost is None else cost.stats.priced,
            calls_unpriced=0 if cost is None else cost.stats.unpriced,
            redaction_failures=self._policy.redaction_failures,
        )

    def note_task_died(self) -> None:
        """Count the death of the task running :meth:`run` (a bug, or a BaseException)."""
        self._stats.internal_errors += 1

    def has_pending(self) -> bool:
        """Whether any taken event is still unwritten (held open, or waiting for a retry)."""
        return bool(
            self._assembler.pending_events()  # held starts, and rows of a cut-short build
            or self._unbuilt
            or any(self._inserts.values())
            or any(self._ends.values())
            or self._metric_batches
            or self._dead_letters
        )

    async def run(self) -> None:
        """Flush on the interval until :meth:`stop`; never raises out of a failed flush."""
        while not self._stopping:
            if self._stats.consecutive_failures:
                # Backing off: a full batch is no reason to hammer a server that is away.
                await self._wait(self._stopped, self._backoff())
            else:
                await self._wait(self._wake, self._settings.flush_interval)
                self._wake.clear()
            if self._stopping:
                break
            await self.flush_once(force=False)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout)

    def rebind(self) -> None:
        """Use a new event loop from now on (the one the flusher ran on has ended)."""
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False

    def stop(self) -> None:
        """Make :meth:`run` return after the flush in progress, if any."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    async def flush_once(self, *, force: bool) -> bool:
        """One flush cycle; ``force`` writes held open rows now. Returns True when all is written.

        Safe to cancel at any await: every event taken from the buffer stays in the flusher's
        own state until it is settled, so :meth:`abandon` can still account for it.
        """
        async with self._lock:
            started = self._clock()
            try:
                await self._build(force=force)
                await self._write_pending()
            except Exception as exc:
                if not _retriable(exc):  # a bug must not kill the task: log, count, carry on
                    self._stats.internal_errors += 1
                    _log.exception("flusher_cycle_crashed")
                self._note_failure(exc)
                if _server_reachable(exc):  # else writing the status would fail the same way
                    await self._record_status(succeeded=False)
                return False
            finally:
                self._stats.flushes += 1
                self._stats.last_flush_duration = self._clock() - started
                self._stats.last_flush_at = _dt.datetime.now(_dt.UTC)
            self._stats.consecutive_failures = 0
            await self._record_status(succeeded=True)
            return not self.has_pending()

    async def drain(self, timeout: float, *, until_empty: bool = False) -> bool:
        """Flush (forcing open rows out) until what was recorded before the call is written.

        One forced cycle that writes everything it took is enough: events recorded after it
        began are not waited for, so a steady producer cannot keep ``flush()`` from returning.
        With ``until_empty`` (closing, the buffer refusing new events) it also waits until the
        buffer is empty. Returns False if ``timeout`` runs out first.
        """
        deadline = self._clock() + timeout
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            try:
                done = await asyncio.wait_for(self.flush_once(force=True), timeout=remaining)
            except TimeoutError:
                return False
            if done and not (until_empty and len(self._buffer)):
                return True
            if not done:
                pause = min(self._backoff(), deadline - self._clock())
                if pause > 0:
                    await asyncio.sleep(pause)

    def abandon(self) -> int:
        """Close the buffer and count everything not yet written as dropped at close."""
        self._buffer.close()
        leftover = self._buffer.take()
        events = len(leftover) + len(self._unbuilt) + self._assembler.clear()
        for queues in (self._inserts, self._ends):
            events += sum(sum(b.weights) for q in queues.values() for b in q)
        self._unbuilt.clear()
        self._inserts.clear()
        self._ends.clear()
        if events:
            self._buffer.settle(dropped_at_close=events)
        return events

    # --- assembling ---------------------------------------------------------------------------

    async def _build(self, *, force: bool) -> None:
        """Turn taken events into rows (the assembler's work), a slice at a time."""
        taken = self._buffer.take()
        self._unbuilt.extend(taken)
        bury(taken)  # the events, freed after the next collection rather than one by one
        assembler = self._assembler
        now = self._clock()
        # Redaction and content capture happen here, per slice, before any row is built: a
        # row (hence a dead letter, a log line, a roll-up) never sees the original text.
        prepare = self._policy.prepare if self._policy.changes_events else None
        unbuilt = self._unbuilt
        while unbuilt:
            if prepare is None:
                assembler.add(unbuilt, now, _BUILD_CHUNK)
            else:
                popleft = unbuilt.popleft
                count = min(_BUILD_CHUNK, len(unbuilt))
                assembler.add(deque([prepare(popleft()) for _ in range(count)]), now, count)
            self._settle_rejected()
            if self._unbuilt:
                await pause()  # assembling is CPU work on the host's loop: share it
        # Open rows past their grace (or all of them when forced) are written open now.
        assembler.release(now, force=force)
        inserts, ends = assembler.take()
        if self._policy.samples:
            self._sample_out(inserts, ends)
        self._batch_up(self._inserts, inserts)
        self._batch_up(self._ends, ends)

    def _sample_out(self, inserts: dict[str, Pending], ends: dict[str, Pending]) -> None:
        """Take the rows of unsampled traces out of the batch; they still feed the roll-ups.

        Errors are noted across every table first, so that a trace row assembled in the same
        flush as its failed span is kept with it.
        """
        policy = self._policy
        for fresh in (inserts, ends):
            for table, pending in fresh.items():
                policy.note_errors(table, pending.rows)
        keeps = policy.keeps_row
        sampled_out = 0
        for fresh in (inserts, ends):
            for table, pending in fresh.items():
                kept_rows: list[Row] = []
                kept_weights = bytearray()
                dropped_rows: list[Row] = []
                for row, weight in zip(pending.rows, pending.weights, strict=True):
                    if keeps(table, row):
                        kept_rows.append(row)
                        kept_weights.append(weight)
                    else:
                        dropped_rows.append(row)
                        sampled_out += weight
                if dropped_rows:
                    self._rollup.add_rows(table, dropped_rows)
                    pending.rows, pending.weights = kept_rows, kept_weights
        if sampled_out:
            self._buffer.settle(sampled_out=sampled_out)

    def _settle_rejected(self) -> None:
        rejected = self._assembler.take_rejected()
        if not rejected:
            return
        self._buffer.settle(rejected_invalid=len(rejected))
        for exc, kind in rejected:
            reason = str(exc) if isinstance(exc, InvalidEvent) else repr(type(exc))
            self._rejected_log.hit(reason=reason, kind=clean_text(kind, 32))

    def _batch_up(self, queues: dict[str, list[_Batch]], fresh: dict[str, Pending]) -> None:
        size = self._settings.max_batch_rows
        for table, pending in fresh.items():
            batches = queues.setdefault(table, [])
            rows, weights = pending.rows, pending.weights
            if len(rows) <= size:
                batches.append(_Batch(rows, weights))
                continue
            for i in range(0, len(rows), size):
                batches.append(_Batch(rows[i : i + size], weights[i : i + size]))

    # --- writing ------------------------------------------------------------------------------

    async def _write_pending(self) -> None:
        if self._clock() >= self._next_maintenance:
            await self._sink.maintain()
            self._next_maintenance = self._clock() + self._settings.partition_check_interval
        # New rows before ends, so an end never overtakes the open row it completes. New rows
        # go in parallel, every batch of every table at once (the pool bounds it): the server
        # ingests one COPY while the next is being encoded. Ends go table by table in order.
        await self._gather(
            self._drain_batch(t, q, b, self._copy) for t, q in self._inserts.items() for b in q
        )
        await self._gather(self._drain_queue(t, q, self._upsert) for t, q in self._ends.items())
        # The roll-up goes out in batches of a few cells, each upserted (and claimed, for
        # exactly-once) on its own: turning a flush's cells into rows and encoding them is
        # CPU work on the host's loop, so it is sliced like the rest. Cells not yet taken stay
        # in the roll-up if this is cancelled between slices.
        while self._rollup.pending:
            if self._rollup.fold(_FOLD_BUDGET):
                await pause()  # a slice of CPU work, not a wait for a condition
        while len(self._rollup):
            if len(self._metric_batches) >= _MAX_PENDING_METRIC_BATCHES:
                self._metric_batches.pop(0)
                self._metrics_dropped_log.hit(reason="too many unwritten roll-ups")
            self._metric_batches.append(
                (str(uuid.uuid4()), self._rollup.take_rows(_METRIC_BATCH_ROWS))
            )
            if len(self._rollup):
                await pause()
        while self._metric_batches:
            batch_id, rows = self._metric_batches[0]
            try:
                await self._sink.upsert_metrics(batch_id, rows)
            except SinkError as exc:
                if _retriable(exc):
                    raise
                _log.error("metric_rollup_refused", error=str(exc), rows=len(rows))
            self._metric_batches.pop(0)
        if self._dead_letters:
            letters = list(self._dead_letters)
            await self._sink.write_dead_letters(letters)
            del self._dead_letters[: len(letters)]

    async def _gather(self, coros: Iterable[Awaitable[None]]) -> None:
        results = await asyncio.gather(*coros, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _copy(self, table: str, rows: Sequence[Row], dedupe: bool) -> None:
        await self._sink.copy_rows(table, rows, dedupe=dedupe)

    async def _upsert(self, table: str, rows: Sequence[Row], dedupe: bool) -> None:
        await self._sink.upsert_ends(table, rows)
        self._stats.end_upserts += 1

    async def _drain_batch(
        self, table: str, batches: list[_Batch], batch: _Batch, op: WriteOp
    ) -> None:
        await self._write_isolating(table, batch, op)
        batches.remove(batch)
        bury(batch)  # its rows, likewise

    async def _drain_queue(self, table: str, batches: list[_Batch], op: WriteOp) -> None:
        while batches:
            await self._write_isolating(table, batches[0], op)
            bury(batches.pop(0))

    async def _write_isolating(self, table: str, batch: _Batch, op: WriteOp) -> None:
        """Write ``batch``; on a data error split it until the refused rows stand alone."""
        stack = [(batch.rows, batch.weights)]
        while stack:
            rows, weights = stack.pop()
            try:
                # A lone row always goes the de-duplicating way: if it was written by an
                # earlier ambiguous attempt, it must count as written, not as refused.
                await op(table, rows, batch.ambiguous or len(rows) == 1)
            except BaseException as exc:
                if isinstance(exc, SinkError) and not _retriable(exc):  # refused for its data
                    if len(rows) == 1:
                        self._dead_letter(table, rows[0], weights[0], exc)
                    else:
                        half = len(rows) // 2
                        stack.append((rows[half:], weights[half:]))
                        stack.append((rows[:half], weights[:half]))
                    continue
                # Retriable, a bug, or cancelled mid-write: keep what is unwritten.
                batch.rows = rows + [r for p in reversed(stack) for r in p[0]]
                batch.weights = weights + b"".join(p[1] for p in reversed(stack))
                batch.ambiguous = True
                raise
            self._written(table, rows, weights)
            if len(rows) <= _ROLLUP_CHUNK:
                self._rollup.add_rows(table, rows)
                continue
            for i in range(0, len(rows), _ROLLUP_CHUNK):
                if i:
                    await pause()
                self._rollup.add_rows(table, rows[i : i + _ROLLUP_CHUNK])

    def _written(self, table: str, rows: list[Row], weights: bytearray) -> None:
        self._buffer.settle(written={table: sum(weights)})
        self._stats.rows_written[table] = self._stats.rows_written.get(table, 0) + len(rows)
        self._status_sent += len(rows)

    def _dead_letter(self, table: str, row: Row, events: int, exc: SinkError) -> None:
        limit = self._settings.dead_letter_max_chars
        letter = DeadLetter(
            table=table,
            row_text=clean_text(repr(row), limit) or "",
            error=clean_text(str(exc), 1000) or type(exc).__name__,
            sqlstate=exc.sqlstate,
        )
        self._status_failed += 1
        if len(self._dead_letters) >= _MAX_PENDING_DEAD_LETTERS:
            # The dead-letter table is not being written (it is the refused rows that keep
            # coming, faster than it is): this row is lost, and counted as what it is.
            self._buffer.settle(dropped=events)
            self._dead_letter_dropped_log.hit(table=table, pending=len(self._dead_letters))
            return
        self._dead_letters.append(letter)
        self._buffer.settle(dead_lettered=events)
        self._dead_letter_log.hit(table=table, sqlstate=exc.sqlstate, error=letter.error[:200])

    # --- failure and status -------------------------------------------------------------------

    def _backoff(self) -> float:
        failures = max(self._stats.consecutive_failures, 1)
        base = self._settings.retry_initial_backoff * 2.0 ** min(failures - 1, 30)
        cap = min(base, self._settings.retry_max_backoff)
        return cap * random.uniform(0.5, 1.0)  # jitter, so many writers do not retry in step

    def _note_failure(self, exc: BaseException) -> None:
        self._stats.consecutive_failures += 1
        self._stats.retries += 1
        self._stats.last_error = clean_text(str(exc) or type(exc).__name__, 1000)
        self._unreported_failure = (
            self._stats.last_error or type(exc).__name__,
            _dt.datetime.now(_dt.UTC),
            self._stats.consecutive_failures,
        )
        self._retry_log.hit(
            error=self._stats.last_error,
            sqlstate=getattr(exc, "sqlstate", None),
            failures=self._stats.consecutive_failures,
        )

    async def _record_status(self, *, succeeded: bool) -> None:
        """Write this provider's row in provider_sync_status: the deltas since the last one,
        and the failure streak not yet written (after an outage, the outage's)."""
        dropped_total = self._buffer.snapshot().dropped_overflow
        failure = self._unreported_failure
        status = SyncStatus(
            provider=self._settings.provider_name,
            flushed_at=self._stats.last_flush_at or _dt.datetime.now(_dt.UTC),
            succeeded=succeeded,
            error=failure[0] if failure else None,
            error_at=failure[1] if failure else None,
            consecutive_failures=failure[2] if failure else 0,
            rows_sent=self._status_sent,
            rows_failed=self._status_failed,
            rows_dropped=dropped_total - self._dropped_reported,
        )
        try:
            await self._sink.record_sync_status(status)
        except Exception as exc:  # best effort: the deltas and the streak go with the next one
            self._status_log.hit(error=clean_text(str(exc) or type(exc).__name__, 300))
            return
        self._status_sent -= status.rows_sent
        self._status_failed -= status.rows_failed
        self._dropped_reported = dropped_total
        if self._unreported_failure is failure:
            self._unreported_failure = None
