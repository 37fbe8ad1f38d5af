"""The trace context: who is being traced, where in the tree we are, and how it travels.

Owns `TraceContext` (ids, identity fields, start time), the W3C Trace Context ``traceparent``
header format in both directions, and the `contextvars.ContextVar` that carries the current
context through nested code and across ``await``. It knows nothing of providers, buffers or the
database, does no I/O, and never raises on bad input: an invalid header gives no context.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from time import monotonic
from typing import Any, Final

from tracewriter._ids import (
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    is_valid_span_id,
    is_valid_trace_id,
    new_span_id,
    new_trace_id,
)

__all__ = [
    "TraceContext",
    "current_context",
    "is_valid_span_id",
    "is_valid_trace_id",
    "make_context",
    "reset_context",
    "tracewriter_current_context",
    "use_context",
]

# `[0-9a-f]`, not `\d` or IGNORECASE: the spec allows lowercase ASCII hex only.
# The fixed 55-character prefix shared by every version: version-trace_id-parent_id-flags.
_match_traceparent = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").match

# The sampled flag of each trace continued from a traceparent header, for the writer's sampling
# decision (``sample_follow_parent``), which runs later in the background and sees only events.
# Kept here rather than in TraceContext so that neither the context nor the event layout on the
# hot path grows a field; bounded, oldest forgotten first.
_REMOTE_FLAGS: dict[str, bool] = {}
_REMOTE_FLAGS_MAX: Final = 100_000


def _note_remote_flag(trace_id: str, sampled: bool) -> None:
    flags = _REMOTE_FLAGS
    if len(flags) >= _REMOTE_FLAGS_MAX:
        # Another thread may evict at the same moment: then there is nothing to do.
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):
            del flags[next(iter(flags))]
    flags[trace_id] = sampled


def remote_sampled_flag(trace_id: str) -> bool | None:
    """The sampled flag of the traceparent ``trace_id`` was continued from, or None."""
    return _REMOTE_FLAGS.get(trace_id)


_TRACEPARENT_LEN: Final = 55
# Optional whitespace as RFC 9110 defines it (SP / HTAB). An HTTP stack strips it from field
# values, and the W3C test suite (test_traceparent_ows_handling) expects a header with leading
# or trailing OWS to be accepted; anything else around or inside the value is invalid.
_OWS: Final = " \t"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Where a piece of work sits in a trace, and on whose behalf it runs.

    ``trace_id`` (32 lowercase hex) names the whole trace, ``span_id`` (16 lowercase hex) this
    span, ``parent_span_id`` the span that contains it (None for a root, or the remote caller's
    span for a context taken from a ``traceparent`` header). ``user_id``, ``session_id`` and
    ``kb_id`` are carried unchanged to every child. ``timestamp`` is the UTC wall-clock start
    that gets stored; ``start_monotonic`` is `time.monotonic` at the start, used only to compute
    durations.

    Construction does not validate (it is on the hot path); call `is_valid` where ids come from
    outside.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    kb_id: str | None = None
    timestamp: datetime | None = None
    start_monotonic: float | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new_root(
        cls,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        kb_id: str | None = None,
    ) -> TraceContext:
        """Start a fresh trace: new trace and span ids, no parent, started now."""
        return _build(
            cls,
            new_trace_id(),
            new_span_id(),
            None,
            user_id,
            session_id,
            kb_id,
            _now(),
            monotonic(),
        )

    def child_context(self) -> TraceContext:
        """Return a context for a span inside this one, started now.

        It keeps the trace id and the identity fields, takes a new span id and names this span
        as its parent.
        """
        return _build(
            type(self),
            self.trace_id,
            new_span_id(),
            self.span_id,
            self.user_id,
            self.session_id,
            self.kb_id,
            _now(),
            monotonic(),
        )

    def is_valid(self) -> bool:
        """Return whether the ids have the W3C format (the parent may be None)."""
        return (
            is_valid_trace_id(self.trace_id)
            and is_valid_span_id(self.span_id)
            and (self.parent_span_id is None or is_valid_span_id(self.parent_span_id))
        )

    def to_traceparent(self, sampled: bool = True) -> str:
        """Return the ``traceparent`` header (version 00) naming this span as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if sampled else '00'}"

    @classmethod
    def from_traceparent(
        cls,
        header: object,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        kb_id: str | None = None,
    ) -> TraceContext | None:
        """Continue a remote trace from a W3C ``traceparent`` header, or return None.

        The result has the header's trace id, a new span id, the header's parent id (the remote
        caller's span) as ``parent_span_id``, the given identity fields, and starts now.

        Validation follows W3C Trace Context: version two lowercase hex digits, ``ff`` invalid;
        trace id 32 and parent id 16 lowercase hex digits, neither all zeros; flags two lowercase
        hex digits (the sampled bit is remembered for the writer's sampling decision, see
        :func:`remote_sampled_flag`). Version ``00`` must be
        exactly 55 characters; a higher version may be longer provided the flags are followed by
        ``-`` (only its first four fields are read). Leading and trailing spaces and tabs (HTTP
        optional whitespace) are ignored. Anything else, including a value that is not a
        ``str``, gives None; this method never raises.
        """
        if not isinstance(header, str):
            return None
        value = header.strip(_OWS)
        match = _match_traceparent(value)
        if match is None:
            return None
        version, trace_id, parent_id, flags = match.groups()
        # Version 00 is exactly the prefix; a later version may append fields after a "-".
        if len(value) != _TRACEPARENT_LEN and (version == "00" or value[_TRACEPARENT_LEN] != "-"):
            return None
        if version == "ff" or trace_id == ZERO_TRACE_ID or parent_id == ZERO_SPAN_ID:
            return None
        _note_remote_flag(trace_id, bool(int(flags, 16) & 1))
        return _build(
            cls, trace_id, new_span_id(), parent_id, user_id, session_id, kb_id, _now(), monotonic()
        )


# A frozen dataclass's __init__ sets each field through object.__setattr__ by name: 1.3 µs for
# these eight fields, most of the cost of child_context() on the span hot path. Calling the slot
# descriptors directly builds the same object in 0.65 µs. The unpacking fails at import if the
# fields change, and a test checks the result equals the __init__ one.
(
    _set_trace_id,
    _set_span_id,
    _set_parent_span_id,
    _set_user_id,
    _set_session_id,
    _set_kb_id,
    _set_timestamp,
    _set_start_monotonic,
) = (getattr(TraceContext, f.name).__set__ for f in fields(TraceContext))
_new_object = object.__new__


def make_context(  # noqa: PLR0917 - positional on purpose: it is on the span hot path
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    user_id: str | None,
    session_id: str | None,
    kb_id: str | None,
    timestamp: datetime | None,
    start_monotonic: float | None,
) -> TraceContext:
    """Build a `TraceContext` from its fields, positionally and without ``__init__``'s cost."""
    # The setters inline, not through _build: one call less on the span hot path.
    ctx: Any = _new_object(TraceContext)
    _set_trace_id(ctx, trace_id)
    _set_span_id(ctx, span_id)
    _set_parent_span_id(ctx, parent_span_id)
    _set_user_id(ctx, user_id)
    _set_session_id(ctx, session_id)
    _set_kb_id(ctx, kb_id)
    _set_timestamp(ctx, timestamp)
    _set_start_monotonic(ctx, start_monotonic)
    return ctx  # type: ignore[no-any-return]


def _build(  # noqa: PLR0917 - positional on purpose: it is on the span hot path
    cls: type[TraceContext],
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    user_id: str | None,
    session_id: str | None,
    kb_id: str | None,
    timestamp: datetime | None,
    start_monotonic: float | None,
) -> TraceContext:
    """Build a `TraceContext` (or subclass) without the frozen ``__init__``'s overhead."""
    ctx: Any = _new_object(cls)
    _set_trace_id(ctx, trace_id)
    _set_span_id(ctx, span_id)
    _set_parent_span_id(ctx, parent_span_id)
    _set_user_id(ctx, user_id)
    _set_session_id(ctx, session_id)
    _set_kb_id(ctx, kb_id)
    _set_timestamp(ctx, timestamp)
    _set_start_monotonic(ctx, start_monotonic)
    return ctx  # type: ignore[no-any-return]


tracewriter_current_context: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "tracewriter_current_context", default=None
)
"""The context of the innermost active span (or trace) in this task or thread, or None."""


def current_context() -> TraceContext | None:
    """Return the current trace context of this task or thread, or None outside any."""
    return tracewriter_current_context.get()


def use_context(ctx: TraceContext | None) -> contextvars.Token[TraceContext | None]:
    """Make ``ctx`` the current context; pass the returned token to `reset_context`."""
    return tracewriter_current_context.set(ctx)


def reset_context(token: contextvars.Token[TraceContext | None]) -> None:
    """Restore the context that was current before the `use_context` call that gave ``token``.

    Never raises. A token already used is ignored. A token made in another
    `contextvars.Context` (a ``with`` block entered in one task and left in another) cannot be
    reset there, so the previous value is set instead.
    """
    try:
        tracewriter_current_context.reset(token)
    except ValueError:
        previous = token.old_value
        tracewriter_current_context.set(None if previous is token.MISSING else previous)
    except RuntimeError:
        pass
