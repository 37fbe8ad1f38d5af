"""``tracewriter demo``: a simulated RAG service writing into PostgreSQL, then read back.

Owns the simulation (users, requests, the document-ingestion stream, injected failures), its
measurements (the latency of every recording call, the event loop's lag) and the report it
prints. It drives the library only through :class:`~tracewriter.ObservabilityService`, as an
application would, and reads the rows back through :mod:`tracewriter.cli._query`, drawn by
:mod:`tracewriter.cli._render`. What a run does and prints is described in the README
("What `make demo` prints").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tracewriter import ObservabilityService, TraceContext, WriterStats
from tracewriter.cli import _query
from tracewriter.cli._render import render_stats, render_trace

__all__ = ["DEFAULT_DURATION", "DemoReport", "run_demo"]

DEFAULT_DURATION: Final = 20.0
DEFAULT_USERS: Final = 50
DEFAULT_DOCS_PER_SECOND: Final = 20.0
DEFAULT_FAILURE_RATE: Final = 0.03
DEFAULT_TIME_SCALE: Final = 0.02

EVENT_KINDS: Final = (
    "trace_start",
    "trace_end",
    "span_start",
    "span_end",
    "llm_call",
    "chat_message",
    "document_event",
)
EVENT_TABLES: Final = ("traces", "spans", "chat_messages", "document_events")

_FLUSH_TIMEOUT: Final = 60.0
_CLOSE_TIMEOUT: Final = 10.0
_TICK: Final = 0.001
_REFRESH: Final = 0.25


# --- the simulated world -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    name: str
    provider: str
    ttft_ms: float  # time to first token, median
    ms_per_token: float  # decoding speed
    caches: bool = False  # prompt caching reports cached input tokens
    reasons: bool = False  # reasoning tokens


_ANSWER_MODELS: Final = (
    (_Model("gpt-4o", "openai", 450, 11.0, caches=True), 40),
    (_Model("claude-3-5-sonnet", "anthropic", 600, 13.0, caches=True), 30),
    (_Model("gemini-1.5-pro", "google", 700, 9.0), 20),
    (_Model("o3-mini", "openai", 900, 7.0, caches=True, reasons=True), 10),
)
_REWRITE_MODEL: Final = _Model("gpt-4o-mini", "openai", 280, 6.0, caches=True)
_GUARD_MODEL: Final = _Model("claude-3-5-haiku", "anthropic", 300, 5.0)
_EMBED_MODEL: Final = "text-embedding-3-small"
_RERANK_MODEL: Final = "rerank-v3.5"

_KNOWLEDGE_BASES: Final = ("handbook", "support", "legal", "eng-wiki")

_QUESTIONS: Final = (
    "How many vacation days do new employees get in their first year?",
    "What is the refund policy for annual subscriptions cancelled mid-term?",
    "Which clauses in the MSA cover data residency in the EU?",
    "How do I rotate the database credentials for the staging cluster?",
    "Summarise the incident review for last month's checkout outage.",
    "What's the difference between the Pro and Team plans?",
    "Can contractors access the internal wiki, and how is it provisioned?",
    "Where is the runbook for failing over the primary Postgres instance?",
    "What does our SOC 2 report say about access reviews?",
    "How do I expense a conference ticket?",
)
_ANSWER_OPENERS: Final = (
    "According to the {kb} documents, ",
    "Based on the retrieved passages, ",
    "Short answer: ",
    "Here is what the {kb} knowledge base says: ",
)
_ANSWER_SENTENCES: Final = (
    "The relevant policy was last updated in March and applies to all regions.",
    "Section 4.2 states the exception explicitly, with two conditions attached.",
    "You will need approval from your manager before the request is processed.",
    "The runbook lists the steps in order; do not skip the verification step.",
    "This is covered in the onboarding guide under 'Accounts and access'.",
    "If the amount exceeds the limit, finance reviews it within five business days.",
    "The contract allows termination with 30 days' written notice.",
    "Two of the retrieved documents disagree; the newer one takes precedence.",
    "See the linked source passages for the exact wording [1][2].",
)
_LLM_ERRORS: Final = (
    "429 Too Many Requests: rate limit reached for requests per minute",
    "503 Service Unavailable: the model is overloaded, retry later",
    "400 context_length_exceeded: prompt is too long for this model",
    "504 Gateway Timeout: upstream did not respond within 30 s",
)
_DOC_ERRORS: Final = {
    "upload": "checksum mismatch after upload (expected sha256 differs)",
    "parse": "PDFSyntaxError: xref table not found; file may be truncated",
    "embed": "413 Payload Too Large: embedding batch exceeds 300k tokens",
}
_DOC_KINDS: Final = (("pdf", 60), ("docx", 20), ("md", 15), ("html", 5))


class EmbeddingServiceError(RuntimeError):
    """The simulated embedding service failed (raised inside the ``embed_query`` span)."""


class RerankTimeoutError(TimeoutError):
    """The simulated reranker timed out (raised inside the ``rerank`` span)."""


class LLMCallError(RuntimeError):
    """The simulated answer LLM call returned an error status."""


# --- measuring each recording call ---------------------------------------------------------------


class _Recorder:
    """The service's recording calls, each timed with ``perf_counter_ns`` and counted by kind."""

    __slots__ = ("kinds", "latencies_ns", "svc")

    def __init__(self, svc: ObservabilityService) -> None:
        self.svc = svc
        self.latencies_ns: list[int] = []
        self.kinds: Counter[str] = Counter()

    def start_trace(
        self, name: str, *, user_id: str, session_id: str | None, kb_id: str, metadata: Any
    ) -> TraceContext:
        t0 = time.perf_counter_ns()
        ctx = self.svc.start_trace(
            name, user_id=user_id, session_id=session_id, kb_id=kb_id, metadata=metadata
        )
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["trace_start"] += 1
        return ctx

    def end_trace(
        self, ctx: TraceContext, *, status: str, error_message: str | None, duration_ms: float
    ) -> None:
        t0 = time.perf_counter_ns()
        self.svc.end_trace(ctx, status=status, error_message=error_message, duration_ms=duration_ms)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["trace_end"] += 1

    @contextlib.contextmanager
    def span(
        self, ctx: TraceContext | None, name: str, span_type: str, metadata: Mapping[str, Any]
    ) -> Iterator[str]:
        """``svc.span()``, entered and left by hand so that each of the two calls is timed."""
        scope = self.svc.span(ctx, name, span_type, metadata)
        t0 = time.perf_counter_ns()
        span_id = scope.__enter__()
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["span_start"] += 1
        try:
            yield span_id
        except BaseException as exc:
            t0 = time.perf_counter_ns()
            scope.__exit__(type(exc), exc, exc.__traceback__)
            self.latencies_ns.append(time.perf_counter_ns() - t0)
            self.kinds["span_end"] += 1
            raise
        t0 = time.perf_counter_ns()
        scope.__exit__(None, None, None)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["span_end"] += 1

    def llm(self, ctx: TraceContext, **kwargs: Any) -> str:
        t0 = time.perf_counter_ns()
        span_id = self.svc.log_llm_call(ctx, **kwargs)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["llm_call"] += 1
        return span_id

    def chat(self, ctx: TraceContext, *, role: str, content: str, token_count: int) -> None:
        t0 = time.perf_counter_ns()
        self.svc.log_chat_message(ctx, role=role, content=content, token_count=token_count)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["chat_message"] += 1

    def document(self, ctx: TraceContext, **kwargs: Any) -> None:
        t0 = time.perf_counter_ns()
        self.svc.log_document_event(ctx, **kwargs)
        self.latencies_ns.append(time.perf_counter_ns() - t0)
        self.kinds["document_event"] += 1

    def expected_rows(self) -> dict[str, int]:
        """The rows the recorded events make: a span's start and end are one row."""
        k = self.kinds
        return {
            "traces": k["trace_start"],
            "spans": k["span_start"] + k["llm_call"],
            "chat_messages": k["chat_message"],
            "document_events": k["document_event"],
        }


class _LoopLag:
    """A 1 ms ticker on the event loop; how late each tick wakes up is the loop's lag."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="demo-loop-lag")

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            t0 = clock()
            await asyncio.sleep(_TICK)
            self.lags.append(max(clock() - t0 - _TICK, 0.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[max(math.ceil(q * len(ordered)) - 1, 0)])


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoReport:
    """What a demo run did, and what it found in the database afterwards.

    ``expected_rows`` follows from the recorded events (a span's start and end make one row);
    ``rows_in_db`` is ``count(*)`` of this run's rows; ``rows_written`` is the writer's own
    count of row writes: its inserts, plus the end-updates of rows it had to write open (a
    span or trace still open after ``open_row_grace``), so it can exceed ``rows_in_db``.
    """

    run_id: str
    kb_prefix: str
    requests: int
    failed_requests: int
    documents: int
    failed_documents: int
    events_by_kind: dict[str, int]
    expected_rows: dict[str, int]
    rows_written: dict[str, int]
    rows_in_db: dict[str, int]
    elapsed_s: float
    events_per_s: float
    rows_per_s: float
    enqueue_p50_us: float
    enqueue_p99_us: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    flushed: bool
    stats: WriterStats
    showcase_trace_id: str | None

    @property
    def dropped(self) -> int:
        """Events the writer dropped (buffer overflow, or unwritten at close)."""
        return self.stats.dropped_overflow

    @property
    def dead_lettered(self) -> int:
        """Events the database refused."""
        return self.stats.dead_lettered

    @property
    def rows_match(self) -> bool:
        """Whether the database holds exactly the rows the recorded events make."""
        return all(self.rows_in_db.get(t) == n for t, n in self.expected_rows.items())

    @property
    def ok(self) -> bool:
        """Nothing dropped or refused, the ledger balances and the rows are all there."""
        return (
            self.flushed
            and self.dropped == 0
            and self.dead_lettered == 0
            and self.stats.rejected_invalid == 0
            and self.stats.balances()
            and self.rows_match
        )


# --- the simulation -----------------------------------------------------------------------------


@dataclass(slots=True)
class _User:
    user_id: str
    session_id: str
    kb_id: str
    requests: int = 0


class _Budget:
    """Hands out request tickets until the count is used up or the deadline has passed."""

    def __init__(self, requests: int | None, deadline: float | None) -> None:
        self.left = requests
        self.deadline = deadline

    def take(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        return True


class _Simulation:
    def __init__(
        self,
        rec: _Recorder,
        *,
        rng: random.Random,
        run_id: str,
        users: int,
        docs_per_second: float,
        failure_rate: float,
        time_scale: float,
    ) -> None:
        self.rec = rec
        self.rng = rng
        self.run_id = run_id
        self.kb_prefix = f"demo-{run_id}-"
        self.kbs = [self.kb_prefix + name for name in _KNOWLEDGE_BASES]
        self.n_users = users
        self.docs_per_second = docs_per_second
        self.failure_rate = failure_rate
        self.time_scale = time_scale
        self.requests = 0
        self.failed_requests = 0
        self.documents = 0
        self.failed_documents = 0
        self.showcase_trace_id: str | None = None
        self.requests_done = asyncio.Event()

    # --- chat requests --------------------------------------------------------------------

    async def run_users(self, budget: _Budget, *, showcase: bool) -> None:
        users = [
            _User(
                f"user-{i:04d}",
                f"sess-{self.run_id}-{i:04d}-0",
                self.kbs[i % len(self.kbs)],
            )
            for i in range(self.n_users)
        ]
        tasks = [asyncio.create_task(self._user_loop(u, budget)) for u in users]
        if showcase and budget.take():
            tasks.append(asyncio.create_task(self._showcase(users[0])))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.requests_done.set()

    async def _showcase(self, user: _User) -> None:
        self.showcase_trace_id = await self.request(user, scale=1.0, showcase=True)

    async def _user_loop(self, user: _User, budget: _Budget) -> None:
        # Users start spread out, as they would arrive.
        await asyncio.sleep(self.rng.uniform(0, 0.05))
        while budget.take():
            await self.request(user, scale=self.time_scale)
            user.requests += 1
            if user.requests % 8 == 0:  # a new conversation now and then
                stem = user.session_id.rsplit("-", 1)[0]
                user.session_id = f"{stem}-{user.requests // 8}"
            await asyncio.sleep(self.rng.uniform(0, 0.01))

    def _failure(self) -> str | None:
        if self.rng.random() >= self.failure_rate:
            return None
        return self.rng.choices(("llm", "rerank", "embedding"), weights=(5, 3, 2))[0]

    async def request(self, user: _User, *, scale: float, showcase: bool = False) -> str:
        """One chat request as one trace; returns its trace id."""
        rng, rec = self.rng, self.rec
        started = time.monotonic()
        question = rng.choice(_QUESTIONS)
        ctx = rec.start_trace(
            "chat.request",
            user_id=user.user_id,
            session_id=user.session_id,
            kb_id=user.kb_id,
            metadata={"endpoint": "/v1/chat/completions", "app_version": "2.14.0"},
        )
        failure = None if showcase else self._failure()
        compressed_ms = 0.0  # realistic minus slept time of the calls simulated faster
        status, error = "ok", None
        try:
            q_tokens = len(question) // 4 + 1
            rec.chat(ctx, role="user", content=question, token_count=q_tokens)
            if showcase or rng.random() < 0.4:
                compressed_ms += await self._llm(
                    ctx, "llm.rewrite_query", _REWRITE_MODEL, scale,
                    input_tokens=rng.randint(180, 420), output_tokens=rng.randint(12, 48),
                )  # fmt: skip
            top_k = 8
            with rec.span(ctx, "retrieve", "retrieval", {"top_k": top_k, "index": "hnsw"}):
                with rec.span(
                    None, "embed_query", "embedding", {"model": _EMBED_MODEL, "dimensions": 1536}
                ):
                    await asyncio.sleep(rng.uniform(0.008, 0.030))
                    if failure == "embedding":
                        raise EmbeddingServiceError("embedding service unavailable (HTTP 503)")
                await asyncio.sleep(rng.uniform(0.004, 0.015))  # the vector search itself
                with rec.span(
                    None, "rerank", "rerank", {"model": _RERANK_MODEL, "candidates": 50,
                                               "top_n": top_k},
                ):  # fmt: skip
                    await asyncio.sleep(rng.uniform(0.015, 0.060))
                    if failure == "rerank":
                        raise RerankTimeoutError(f"{_RERANK_MODEL} timed out after 2000 ms")
            model = rng.choices(
                [m for m, _ in _ANSWER_MODELS], weights=[w for _, w in _ANSWER_MODELS]
            )[0]
            if showcase:
                model = _ANSWER_MODELS[0][0]
            context_tokens = top_k * rng.randint(250, 480)
            out_tokens = int(rng.lognormvariate(math.log(260), 0.45))
            compressed_ms += await self._llm(
                ctx, "llm.generate", model, scale,
                input_tokens=context_tokens + q_tokens + rng.randint(350, 700),
                output_tokens=out_tokens, error=failure == "llm",
            )  # fmt: skip
            if showcase or rng.random() < 0.25:
                compressed_ms += await self._llm(
                    ctx, "llm.guardrail", _GUARD_MODEL, scale,
                    input_tokens=out_tokens + q_tokens + rng.randint(150, 300),
                    output_tokens=rng.randint(3, 12),
                )  # fmt: skip
            kb_name = user.kb_id.removeprefix(self.kb_prefix)
            answer = rng.choice(_ANSWER_OPENERS).format(kb=kb_name) + " ".join(
                rng.choice(_ANSWER_SENTENCES) for _ in range(max(out_tokens // 16, 1))
            )
            rec.chat(ctx, role="assistant", content=answer, token_count=out_tokens)
        except (EmbeddingServiceError, RerankTimeoutError, LLMCallError) as exc:
            status, error = "error", f"{type(exc).__name__}: {exc}"
        measured = (time.monotonic() - started) * 1000.0
        rec.end_trace(ctx, status=status, error_message=error, duration_ms=measured + compressed_ms)
        self.requests += 1
        self.failed_requests += status == "error"
        return ctx.trace_id

    async def _llm(
        self,
        ctx: TraceContext,
        name: str,
        model: _Model,
        scale: float,
        *,
        input_tokens: int,
        output_tokens: int,
        error: bool = False,
    ) -> float:
        """Simulate one LLM call and record it; return its realistic minus its slept time."""
        rng = self.rng
        if error:
            realistic = rng.uniform(150, 1200)
            output_tokens = 0
        else:
            ttft = model.ttft_ms * rng.lognormvariate(0, 0.35)
            realistic = ttft + output_tokens * model.ms_per_token * rng.uniform(0.8, 1.3)
        started = time.monotonic()
        await asyncio.sleep(realistic * scale / 1000.0)
        slept = (time.monotonic() - started) * 1000.0
        # At full scale the measured time is the truth; compressed, the simulated one is.
        duration = slept if scale >= 1.0 else realistic
        cached = None
        if model.caches and not error and rng.random() < 0.5:
            cached = min(input_tokens, 1024 * rng.randint(1, 3))
        reasoning = int(output_tokens * rng.uniform(1.5, 4.0)) if model.reasons else None
        # As OpenTelemetry counts them (and OpenAI bills them): output includes the reasoning.
        billed_output = output_tokens + (reasoning or 0)
        message = rng.choice(_LLM_ERRORS) if error else None
        self.rec.llm(
            ctx,
            model=model.name,
            provider=model.provider,
            input_tokens=input_tokens,
            output_tokens=billed_output,
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
            duration_ms=duration,
            status="error" if error else "ok",
            error_message=message,
            name=name,
            metadata={"temperature": 0.2, "stream": True},
        )
        if error:
            raise LLMCallError(f"{model.name}: {message}")
        return duration - slept

    # --- document ingestion -----------------------------------------------------------------

    async def run_documents(self) -> None:
        """Start documents at ``docs_per_second`` until the requests are done; await them."""
        if self.docs_per_second <= 0:
            return
        tasks: set[asyncio.Task[None]] = set()
        number = 0
        while not self.requests_done.is_set():
            number += 1
            task = asyncio.create_task(self._ingest(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            gap = self.rng.expovariate(self.docs_per_second)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.requests_done.wait(), timeout=gap)
        if tasks:
            await asyncio.gather(*tasks)

    async def _ingest(self, number: int) -> None:
        rng, rec = self.rng, self.rec
        kind = rng.choices([k for k, _ in _DOC_KINDS], weights=[w for _, w in _DOC_KINDS])[0]
        pages = max(1, int(rng.lognormvariate(math.log(12), 0.9)))
        size = pages * rng.randint(25_000, 140_000)
        document_id = f"doc-{number:05d}.{kind}"
        ctx = rec.start_trace(
            "document.ingest",
            user_id=f"uploader-{rng.randint(1, 12):02d}",
            session_id=None,
            kb_id=rng.choice(self.kbs),
            metadata={"document_id": document_id, "bytes": size, "pages": pages},
        )
        fail_at = None
        if rng.random() < self.failure_rate:
            fail_at = rng.choice(("upload", "parse", "parse", "embed"))
        chunks = 0
        total = 0.0
        status, error = "ok", None
        for stage in ("upload", "parse", "chunk", "embed", "index"):
            if stage == "upload":
                realistic = 40 + size / 40_000 * rng.uniform(0.7, 1.6)
            elif stage == "parse":
                realistic = pages * rng.uniform(15, 70)
            elif stage == "chunk":
                chunks = max(1, int(pages * rng.uniform(2.0, 5.0)))
                realistic = 5 + pages * rng.uniform(0.8, 2.0)
            elif stage == "embed":
                realistic = math.ceil(chunks / 64) * rng.uniform(120, 420)
            else:
                realistic = 20 + chunks * rng.uniform(0.4, 1.2)
            await asyncio.sleep(realistic * self.time_scale / 1000.0)
            total += realistic
            failed = stage == fail_at
            rec.document(
                ctx,
                document_id=document_id,
                event_type=stage,
                status="error" if failed else "ok",
                duration_ms=realistic,
                chunk_count=chunks if stage in ("chunk", "embed", "index") else None,
                error_message=_DOC_ERRORS.get(stage) if failed else None,
            )
            if failed:
                status, error = "error", f"{stage} failed: {_DOC_ERRORS[stage]}"
                break
        rec.end_trace(ctx, status=status, error_message=error, duration_ms=total)
        self.documents += 1
        self.failed_documents += status == "error"


# --- live progress ---------------------------------------------------------------------------


class _Progress:
    """The live panel: elapsed time, requests, events/s and the writer's counters."""

    def __init__(
        self,
        svc: ObservabilityService,
        sim: _Simulation,
        lag: _LoopLag,
        *,
        duration: float | None,
        requests: int | None,
    ) -> None:
        self.svc = svc
        self.sim = sim
        self.lag = lag
        self.duration = duration
        self.total_requests = requests
        self.started = time.monotonic()
        self._last = (self.started, 0)
        self.rate = 0.0

    def sample(self) -> None:
        stats = self.svc.stats()
        now = time.monotonic()
        enqueued = stats.enqueued if stats is not None else 0
        then, before = self._last
        if now - then >= 0.2:
            self.rate = (enqueued - before) / (now - then)
            self._last = (now, enqueued)

    def render(self) -> RenderableType:
        stats = self.svc.stats()
        elapsed = time.monotonic() - self.started
        if self.duration is not None:
            total, done = self.duration, min(elapsed, self.duration)
            where = f"{elapsed:5.1f} s of {self.duration:.0f} s"
        else:
            total = float(self.total_requests or 1)
            done = float(self.sim.requests)
            where = f"{self.sim.requests:,} of {self.total_requests:,} requests"
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="dim")
        grid.add_column(justify="right")
        grid.add_column(justify="right", style="dim")
        grid.add_column(justify="right")
        grid.add_column(justify="right", style="dim")
        grid.add_column(justify="right")
        s = stats
        dropped = s.dropped_overflow if s else 0
        grid.add_row(
            "requests", f"{self.sim.requests:,} ({self.sim.failed_requests} failed)",
            "documents", f"{self.sim.documents:,}",
            "events/s", Text(f"{self.rate:,.0f}", style="bold"),
        )  # fmt: skip
        grid.add_row(
            "enqueued", f"{s.enqueued:,}" if s else "—",
            "buffered", f"{s.buffered + s.in_flight:,}" if s else "—",
            "written", Text(f"{s.written:,}" if s else "—", style="green"),
        )  # fmt: skip
        recent = self.lag.lags[-2000:]
        grid.add_row(
            "dropped", Text(f"{dropped:,}", style="bold red" if dropped else "green"),
            "flushes", f"{s.flushes:,}" if s else "—",
            "loop lag p99", f"{_quantile(recent, 0.99) * 1000:.2f} ms",
        )  # fmt: skip
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=total, completed=done, width=40), Text(where, style="dim"))
        return Panel(
            Group(bar, grid),
            title="tracewriter demo — simulated RAG service",
            title_align="left",
            border_style="cyan",
            width=80,
        )


# --- running it -------------------------------------------------------------------------------


async def run_demo(
    dsn: str,
    *,
    duration: float | None = None,
    requests: int | None = None,
    users: int = DEFAULT_USERS,
    docs_per_second: float = DEFAULT_DOCS_PER_SECOND,
    failure_rate: float = DEFAULT_FAILURE_RATE,
    seed: int | None = None,
    time_scale: float = DEFAULT_TIME_SCALE,
    thread_mode: bool = False,
    live: bool = True,
    showcase: bool = True,
    console: Console | None = None,
) -> DemoReport:
    """Simulate the RAG service against the migrated database at ``dsn``; print and return
    the report.

    Runs for ``duration`` seconds, or ``requests`` requests (one of them, with ``showcase``,
    in real time for the waterfall); neither means :data:`DEFAULT_DURATION` seconds. ``live``
    shows a progress panel on ``console`` (default: a new one on stdout). Raises
    :class:`~tracewriter.errors.TracewriterError` (one line, password redacted) when the
    database cannot be used.
    """
    if duration is None and requests is None:
        duration = DEFAULT_DURATION
    if requests is not None and requests < 1:
        raise ValueError(f"requests: must be >= 1, got {requests}")
    if users < 1:
        raise ValueError(f"users: must be >= 1, got {users}")
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate: must be within [0, 1], got {failure_rate}")
    if not 0.0 < time_scale <= 1.0:
        raise ValueError(f"time_scale: must be within (0, 1], got {time_scale}")
    console = console or Console()
    run_id = secrets.token_hex(3)
    rng = random.Random(seed)
    wall_start = _dt.datetime.now(_dt.UTC)

    svc = ObservabilityService(dsn, thread_mode=thread_mode)
    await svc.start()
    rec = _Recorder(svc)
    sim = _Simulation(
        rec,
        rng=rng,
        run_id=run_id,
        users=users,
        docs_per_second=docs_per_second,
        failure_rate=failure_rate,
        time_scale=time_scale,
    )
    lag = _LoopLag()
    try:
        started = time.monotonic()
        budget = _Budget(requests, started + duration if duration is not None else None)
        progress = _Progress(svc, sim, lag, duration=duration, requests=requests)
        lag.start()
        work = asyncio.gather(sim.run_users(budget, showcase=showcase), sim.run_documents())
        if live:
            with Live(
                progress.render(), console=console, auto_refresh=False, transient=False
            ) as view:
                while not work.done():
                    await asyncio.wait({work}, timeout=_REFRESH)
                    progress.sample()
                    view.update(progress.render(), refresh=True)
        await work
        await lag.stop()
        simulated = time.monotonic() - started
        if not live:
            console.print(
                f"simulated {sim.requests:,} requests and {sim.documents:,} documents "
                f"in {simulated:.1f} s; flushing…"
            )
        flushed = await svc.flush(timeout=_FLUSH_TIMEOUT)
        elapsed = time.monotonic() - started
        stats = svc.stats()
    finally:
        await lag.stop()
        await svc.close(timeout=_CLOSE_TIMEOUT)
    assert stats is not None  # a DSN was given, so there is a PostgreSQL writer

    conn = await _query.connect(dsn)
    try:
        # LLM rows start before they were logged (start = end - duration): look back further.
        rows_in_db = await _query.count_rows(
            conn,
            dsn,
            kb_prefix=sim.kb_prefix,
            since=wall_start - _dt.timedelta(minutes=10),
        )
        window = _dt.timedelta(seconds=math.ceil(elapsed) + 180)
        model_stats = await _query.fetch_stats(conn, dsn, window, kb_prefix=sim.kb_prefix)
        tree = None
        if sim.showcase_trace_id is not None:
            tree = await _query.fetch_trace(conn, dsn, sim.showcase_trace_id)
    finally:
        await conn.close()

    lat_us = [ns / 1000.0 for ns in rec.latencies_ns]
    event_rows = sum(rows_in_db[t] for t in EVENT_TABLES)
    report = DemoReport(
        run_id=run_id,
        kb_prefix=sim.kb_prefix,
        requests=sim.requests,
        failed_requests=sim.failed_requests,
        documents=sim.documents,
        failed_documents=sim.failed_documents,
        events_by_kind={k: rec.kinds[k] for k in EVENT_KINDS},
        expected_rows=rec.expected_rows(),
        rows_written={t: stats.rows_written.get(t, 0) for t in EVENT_TABLES},
        rows_in_db=rows_in_db,
        elapsed_s=elapsed,
        events_per_s=stats.enqueued / elapsed if elapsed > 0 else 0.0,
        rows_per_s=event_rows / elapsed if elapsed > 0 else 0.0,
        enqueue_p50_us=_quantile(lat_us, 0.50),
        enqueue_p99_us=_quantile(lat_us, 0.99),
        loop_lag_p99_ms=_quantile(lag.lags, 0.99) * 1000.0,
        loop_lag_max_ms=max(lag.lags, default=0.0) * 1000.0,
        flushed=flushed,
        stats=stats,
        showcase_trace_id=sim.showcase_trace_id,
    )
    console.print()
    console.print(render_summary(report, users=users, width=console.width))
    console.print()
    if tree is not None:
        console.rule("[bold]One request, read back from the database[/]", align="left")
        console.print(render_trace(tree, width=console.width))
        console.print()
    console.rule("[bold]LLM calls by model and knowledge base, from metrics_aggregates[/]",
                 align="left")  # fmt: skip
    console.print(
        render_stats(
            _query.Stats(
                since=model_stats.since,
                models=model_stats.models,
                knowledge_bases=model_stats.knowledge_bases,
            ),
            window="this run",
        )
        if model_stats.models
        else Text("no LLM calls recorded", style="yellow")
    )
    if report.showcase_trace_id is not None:
        console.print(
            Text(
                f"\nSee it again: tracewriter trace {report.showcase_trace_id}"
                " (with --dsn or TRACEWRITER_DSN)",
                style="dim",
            )
        )
    return report


def render_summary(
    report: DemoReport, *, users: int | None = None, width: int | None = None
) -> RenderableType:
    """The end-of-run summary: events per kind, rows per table, throughput and latency."""
    stats = report.stats
    events = Table(title="Events recorded", title_justify="left", title_style="bold")
    events.add_column("kind")
    events.add_column("events", justify="right")
    for kind in EVENT_KINDS:
        events.add_row(kind.replace("_", " "), f"{report.events_by_kind.get(kind, 0):,}")
    events.add_section()
    events.add_row(Text("total (= enqueued)", style="bold"), f"{stats.enqueued:,}")

    rows = Table(
        title="Rows per table",
        title_justify="left",
        title_style="bold",
        caption="writes: the writer's inserts, plus end-updates of rows it wrote open",
        caption_justify="left",
    )
    rows.add_column("table")
    rows.add_column("expected", justify="right")
    rows.add_column("writes", justify="right")
    rows.add_column("in database", justify="right")
    for table in _query.COUNTED_TABLES:
        expected: int | None = report.expected_rows.get(table)
        written: int | None
        if table == "dead_letters":
            expected, written = 0, stats.dead_lettered
        elif table == "metrics_aggregates":
            written = stats.rows_written.get(table)
        else:
            written = report.rows_written.get(table)
        found = report.rows_in_db.get(table, 0)
        good = expected is None or found == expected
        rows.add_row(
            table,
            "—" if expected is None else f"{expected:,}",
            "—" if written is None else f"{written:,}",
            Text(f"{found:,}", style="green" if good else "bold red"),
        )

    def flag(value: int) -> Text:
        return Text(f"{value:,}", style="bold red" if value else "green")

    perf = Table(title="Writer", title_justify="left", title_style="bold")
    perf.add_column("measure")
    perf.add_column("value", justify="right")
    workload = f"{report.requests:,} requests ({report.failed_requests} failed)"
    if users is not None:
        workload += f", {users} users"
    perf.add_row("workload", workload)
    perf.add_row("documents", f"{report.documents:,} ({report.failed_documents} failed)")
    perf.add_row("wall time (to last row)", f"{report.elapsed_s:.1f} s")
    perf.add_row("sustained rows/s", Text(f"{report.rows_per_s:,.0f}", style="bold"))
    perf.add_row("events/s", f"{report.events_per_s:,.0f}")
    perf.add_row(
        "enqueue p50 / p99",
        f"{report.enqueue_p50_us:.1f} / {report.enqueue_p99_us:.1f} µs",
    )
    perf.add_row(
        "loop lag p99 / max",
        f"{report.loop_lag_p99_ms:.2f} / {report.loop_lag_max_ms:.1f} ms",
    )
    perf.add_row("flushes / retries", f"{stats.flushes:,} / {stats.retries:,}")
    perf.add_row("dropped", flag(report.dropped))
    perf.add_row("dead letters", flag(report.dead_lettered))
    perf.add_row("rejected as invalid", flag(stats.rejected_invalid))
    balanced = stats.balances()
    perf.add_row(
        "ledger balances",
        Text("yes" if balanced else "NO", style="green" if balanced else "bold red"),
    )

    top: RenderableType
    if width is None or width >= 96:
        side_by_side = Table.grid(padding=(0, 3))
        side_by_side.add_row(events, rows)
        top = side_by_side
    else:
        top = Group(events, Text(), rows)
    verdict = (
        Text("✓ every recorded event is in the database; nothing dropped", style="bold green")
        if report.ok
        else Text("✗ the rows do not add up — see the tables above", style="bold red")
    )
    return Group(top, Text(), perf, Text(), verdict)
