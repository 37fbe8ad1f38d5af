"""Spans that outlive a block: the handle ``start_span()`` returns, and facts known at the end.

Owns :class:`SpanHandle` (a started span that any task or thread may end once) and the end
event both it and a ``span()`` scope build when they are given end-time facts — the model,
provider and token counts of a streamed LLM call, an outcome decided by a callback. Those
facts travel as the end event's kind fields, laid out as a complete LLM span's, so the
assembler merges them into the start's row when both land in one flush and the end-upsert
fills them in when the start was already written open.

Like every recording call it never raises into the caller and does no sanitising of its own:
the row builders clean what it passes on, off the hot path, exactly as for ``log_llm_call``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import monotonic, time_ns
from typing import Any, Final, Protocol

from tracewriter._context import TraceContext
from tracewriter._logging import RateLimitedLog, get_logger
from tracewriter._records import ERROR_MESSAGE_CHARS, EventKind, EventTuple, clean_text
from tracewriter._records import snapshot_metadata as _snapshot

__all__ = ["Facts", "SpanHandle", "end_event", "merge_facts"]

_log = get_logger("service")
_SPAN_END: Final = EventKind.SPAN_END


class Recorder(Protocol):
    """What a handle needs of the service that started it (the service is one): where events
    go, where a failure inside a recording call is counted, and the count of repeated ends."""

    _emit: Callable[[EventTuple], None]
    duplicate_span_ends: int

    def _internal_error(self, where: str, exc: BaseException) -> None: ...


# Counting repeated ends (rare) is the only thing under a lock; whether an end is the first is
# decided by list.pop() on the handle, one atomic operation with or without the GIL.
_repeat_lock: Final = threading.Lock()
_repeated_log: Final = RateLimitedLog(_log, "span_end_repeated")

# What a caller may say about a span's end, in this order:
# (status, error, model, provider, input_tokens, output_tokens, cached_input_tokens,
#  reasoning_tokens, metadata), as span scopes' set() keeps them: metadata already
#  snapshotted, the rest as given (end_event() makes them event values).
Facts = tuple[Any, ...]
_NO_FACTS: Final[Facts] = (None,) * 9


def merge_facts(earlier: Facts | None, later: Facts) -> Facts:
    """``later`` over ``earlier``, field by field: a later None keeps the earlier value."""
    if earlier is None:
        return later
    return tuple(e if v is None else v for e, v in zip(earlier, later, strict=True))


def _error_fields(error: object) -> tuple[str | None, str | None]:
    """``(error_type, error_message)`` from an exception, a message, or anything else."""
    if error is None:
        return None, None
    if type(error) is str:
        return None, error
    if isinstance(error, BaseException):
        try:
            message = str(error)
        except Exception:  # a hostile __str__: keep the type, say why the text is missing
            message = f"<unprintable {type(error).__name__}>"
        return type(error).__qualname__, message
    # Anything else becomes text now, so the event keeps only atomic values.
    return None, clean_text(error, ERROR_MESSAGE_CHARS)


def _outcome(status: object, error: object) -> tuple[object, str | None, str | None]:
    """``(status, error_type, error_message)``: status defaults to ``error`` when there is one."""
    error_type, error_message = _error_fields(error)
    if status is None:
        status = "ok" if error is None else "error"
    elif type(status) is not str:
        status = clean_text(status, 32)  # as text now, so the event keeps only atomic values
    return status, error_type, error_message


def end_event(  # noqa: PLR0917 - positional on purpose: it is on the end path
    child: TraceContext,
    start_ns: int,
    start_mono: float,
    name: object,
    span_type: object,
    facts: Facts | None,
    exc_type: type[BaseException] | None = None,
    exc: BaseException | None = None,
) -> EventTuple:
    """A span's end event carrying ``facts``; an exception (``exc_type``) outranks them.

    A block that raised ends with status ``error`` and that exception, whatever ``set()``
    said; the model, tokens and metadata it was given are kept either way.
    """
    duration = (monotonic() - start_mono) * 1000.0
    status, error, model, provider, tin, tout, tcached, treason, metadata = facts or _NO_FACTS
    if exc_type is not None:
        status = "error"
        error_type, error_message = (
            (exc_type.__qualname__, None) if exc is None else _error_fields(exc)
        )
    else:
        status, error_type, error_message = _outcome(status, error)
    # Six kind fields, None where not known: the end of a plain span is NO_DETAIL (see Event).
    return (_SPAN_END, start_ns, time_ns(), child.trace_id, child.span_id, child.parent_span_id,
            name, span_type, status, duration, error_type, error_message, child.user_id,
            child.session_id, child.kb_id, metadata, model, provider, tin, tout, tcached,
            treason)  # fmt: skip


class SpanHandle:
    """A started span, to be ended once with :meth:`end`, from any task or thread.

    ``span_id`` is the span's id; ``context`` is its own context — pass it to ``span()``,
    ``start_span()`` or ``log_llm_call()`` to record children under it. Starting a handle does
    not make it the current context: a span that outlives a block has no block to scope it to.
    A handle never ended is written as an open row (status ``open``) once ``open_row_grace``
    has passed, like a ``span()`` block still running at that point.
    """

    __slots__ = ("_mono", "_name", "_open", "_start_ns", "_svc", "_type", "context", "span_id")

    def __init__(  # noqa: PLR0917 - built only by ObservabilityService.start_span
        self,
        svc: Recorder,
        context: TraceContext,
        start_ns: int,
        start_mono: float,
        name: object,
        span_type: object,
    ) -> None:
        self._svc = svc
        self.context = context
        self.span_id: str = context.span_id
        self._start_ns = start_ns
        self._mono = start_mono
        self._name = name
        self._type = span_type
        self._open = [True]  # emptied by the first end()

    def __repr__(self) -> str:
        state = "open" if self._open else "ended"
        return f"SpanHandle(span_id={self.span_id!r}, name={self._name!r}, {state})"

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` has been called."""
        return not self._open

    def end(
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
        """End the span with what is known only now; never raises.

        ``status`` defaults to ``error`` when ``error`` (an exception or a message) is given,
        else ``ok``. ``model``, ``provider`` and the token counts fill the span's typed
        columns; ``metadata`` is merged over the start's. Values are cleaned as everywhere
        (text cut and stripped of NULs, integers clamped, non-numbers dropped). A second call
        records nothing: it is counted in ``duplicate_span_ends`` of the service and logged.
        """
        svc = self._svc
        try:
            try:
                self._open.pop()
            except IndexError:  # ended already
                with _repeat_lock:
                    svc.duplicate_span_ends += 1
                _repeated_log.hit(span_id=self.span_id, ends=svc.duplicate_span_ends)
                return
            # end_event() inlined: this is the other half of the hot path start_span() began.
            duration = (monotonic() - self._mono) * 1000.0
            if error is None and (status is None or type(status) is str):
                outcome: object = status or "ok"
                error_type = error_message = None
            else:
                outcome, error_type, error_message = _outcome(status, error)
            ctx = self.context
            svc._emit(
                (_SPAN_END, self._start_ns, time_ns(), ctx.trace_id, ctx.span_id,
                ctx.parent_span_id, self._name, self._type, outcome, duration, error_type,
                error_message, ctx.user_id, ctx.session_id, ctx.kb_id,
                None if metadata is None else _snapshot(metadata), model, provider,
                input_tokens, output_tokens, cached_input_tokens, reasoning_tokens)
            )  # fmt: skip
        except Exception as exc:
            svc._internal_error("span_handle_end", exc)
