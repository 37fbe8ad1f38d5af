"""Events as the API records them, and the sanitised row tuples the writer builds from them.

Owns the event layout (what the hot path appends: a plain tuple, its positions named once by
:class:`Event` and the index constants) and every conversion from caller-supplied
values to values PostgreSQL will accept: NUL characters stripped, lone surrogates replaced, text
truncated, integers clamped to the column range, NaN/inf dropped, metadata made JSON-serialisable
and encoded. It does no I/O and knows nothing of asyncpg or of the buffer. The hot path calls
only :func:`snapshot_metadata`; the assembler calls :func:`build` off the hot path.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import orjson

from tracewriter import _schema as schema
from tracewriter._cost import CostCalculator
from tracewriter._ids import (
    HEX_DIGITS,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    is_valid_span_id,
    is_valid_trace_id,
    random_uuid7_hex,
    row_id_for_valid_span,
)
from tracewriter._schema import Row

__all__ = [
    "BUILDERS",
    "DETAIL",
    "DURATION_MS",
    "END_NS",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "EVENT_LEN",
    "KB_ID",
    "KIND",
    "METADATA",
    "NAME",
    "NO_DETAIL",
    "PARENT_SPAN_ID",
    "SESSION_ID",
    "SPAN_ID",
    "SPAN_TYPE",
    "START_NS",
    "STATUS",
    "TRACE_ID",
    "USER_ID",
    "Event",
    "EventKind",
    "EventTuple",
    "InvalidEvent",
    "Row",
    "build",
    "clean_float",
    "clean_int",
    "clean_text",
    "coalesce",
    "encode_metadata",
    "end_table",
    "event_metadata",
    "metadata_text",
    "priced_builders",
    "sanitize_json",
    "snapshot_metadata",
    "timestamp_from_ns",
]


INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
ERROR_MESSAGE_CHARS: Final = 1000
PREVIEW_CHARS: Final = 500
SHORT_TEXT_CHARS: Final = 1000  # names, ids, types: anything that is a label, not a payload
CONTENT_CHARS: Final = 1_000_000
METADATA_BYTES: Final = 1_048_576
_MAX_JSON_DEPTH: Final = 64


class EventKind:
    """The kinds of :class:`Event`; plain strings so third-party providers can match on them."""

    TRACE_START: Final = "trace_start"
    TRACE_END: Final = "trace_end"
    SPAN_START: Final = "span_start"
    SPAN_END: Final = "span_end"
    SPAN: Final = "span"  # a complete span in one event (an LLM call)
    CHAT: Final = "chat"
    DOCUMENT: Final = "document"


class Event(NamedTuple):
    """The layout of one recorded event, field by field: a named view of what providers get.

    The service hands providers *plain flat tuples*, not instances of this class: the sixteen
    fields from ``kind`` to ``metadata`` in this order, then the kind's own fields inline
    (``event[DETAIL:]``, the ``detail`` below). Flat, because the cycle collector untracks a
    tuple of atomic values at the first collection it survives, but not one holding a tuple
    it has not untracked yet, and it meets a nested tuple after its container: a nested
    detail kept every LLM call's event tracked into the middle generation. A NamedTuple (a
    tuple subclass) is never untracked at all. Read fields by the index constants below
    (``event[KIND]``, ``event[TRACE_ID]``) or take a named view with ``Event.of(event)``;
    ``Event(...).flat()`` builds the tuple a provider gets. This class is the one place the
    positions are defined.

    ``start_ns`` is the wall-clock start in nanoseconds since the epoch (the row's timestamp);
    ``end_ns`` the wall-clock end for end and complete events. ``detail`` is the fields of one
    kind: ``(model, provider, input_tokens, output_tokens, cached_input_tokens,
    reasoning_tokens)`` for LLM spans, ``(role, content, token_count)`` for chat messages,
    ``(document_id, event_type, chunk_count)`` for document events, None (no fields) for the
    rest; a span's end event may carry the LLM layout too (facts known only at the end: a
    span handle's model and tokens), its None fields meaning "not known here".

    Why every event is 22 fields long: the service pads the kind fields with None to six
    (``NO_DETAIL`` for a trace or plain span, three more after a chat message's or document
    event's), and ``flat()`` does the same. CPython keeps freed tuples of fewer than 20 items
    on free lists and hands them out again without counting them towards the next young
    collection; with 16-field events, the flusher freeing spent events stocked those lists and
    the application's next ~2,000 events were recorded uncounted, so young collections came
    late and walked ~3,300 events at a time (3-6 ms of the host's loop at 20,000 events/s).
    At 22 fields every event counts, and young collections stay near their threshold (~1 ms).
    Readers must not rely on the length: a provider may get shorter tuples from other
    producers, and the row builders pad or cut the kind fields to the kind's size. ``metadata`` is
    what the caller passed, snapshotted: for a dict, its JSON encoding as ``str`` (read it
    with :func:`event_metadata`); a copy of a dict that orjson refused; anything else as given.
    """

    kind: str
    start_ns: int
    end_ns: int | None
    trace_id: str
    span_id: str | None
    parent_span_id: str | None
    name: str | None
    span_type: str | None
    status: str | None
    duration_ms: float | None
    error_type: str | None
    error_message: str | None
    user_id: str | None
    session_id: str | None
    kb_id: str | None
    metadata: Any
    detail: tuple[Any, ...] | None

    @classmethod
    def of(cls, event: tuple[Any, ...]) -> Event:
        """The named view of a flat event tuple (``detail`` None when every kind field is)."""
        detail = event[DETAIL:]
        return cls._make((*event[:DETAIL], detail if detail.count(None) < len(detail) else None))

    def flat(self) -> tuple[Any, ...]:
        """The flat tuple a provider gets: the common fields, then ``detail``'s inline, padded
        with None to six kind fields."""
        detail = self.detail or ()
        return (*self[:DETAIL], *detail, *NO_DETAIL[len(detail) :])


# The field positions, derived from Event so that they have one home.
_FIELDS: Final = Event._fields
KIND: Final = _FIELDS.index("kind")
START_NS: Final = _FIELDS.index("start_ns")
END_NS: Final = _FIELDS.index("end_ns")
TRACE_ID: Final = _FIELDS.index("trace_id")
SPAN_ID: Final = _FIELDS.index("span_id")
PARENT_SPAN_ID: Final = _FIELDS.index("parent_span_id")
NAME: Final = _FIELDS.index("name")
SPAN_TYPE: Final = _FIELDS.index("span_type")
STATUS: Final = _FIELDS.index("status")
DURATION_MS: Final = _FIELDS.index("duration_ms")
ERROR_TYPE: Final = _FIELDS.index("error_type")
ERROR_MESSAGE: Final = _FIELDS.index("error_message")
USER_ID: Final = _FIELDS.index("user_id")
SESSION_ID: Final = _FIELDS.index("session_id")
KB_ID: Final = _FIELDS.index("kb_id")
METADATA: Final = _FIELDS.index("metadata")
# Where the kind's own fields begin: ``event[DETAIL:]``, inline after the common fields.
DETAIL: Final = _FIELDS.index("detail")
# Every event the service records has six kind fields, those a kind does not use None: see
# Event ("Why every event is 22 fields long").
NO_DETAIL: Final = (None,) * 6
EVENT_LEN: Final = DETAIL + len(NO_DETAIL)

EventTuple = tuple[Any, ...]


class InvalidEvent(ValueError):
    """An event that cannot become a row (for instance a malformed trace id)."""


# --- scalar sanitisers ------------------------------------------------------------------------


def clean_text(value: object, limit: int | None = SHORT_TEXT_CHARS) -> str | None:
    """Return ``value`` as text PostgreSQL accepts: no NUL, valid UTF-8, at most ``limit`` chars."""
    if value is None:
        return None
    if type(value) is not str:
        try:
            value = value.value if isinstance(value, enum.Enum) else value
            text = str(value)
        except Exception:  # a caller's __str__ may raise; record that instead
            text = f"<unprintable {type(value).__name__}>"
    else:
        text = value
    if "\x00" in text:
        text = text.replace("\x00", "")
    if limit is not None and len(text) > limit:
        text = text[:limit]
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot be encoded: replace them
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


# Labels (names, span types, models, ids) repeat from row to row, so their cleaned form is
# memoised: a dict lookup instead of a dozen checks. Bounded: once full, it starts again.
_LABELS: dict[str, str | None] = {}
_LABELS_MAX: Final = 8192
_LABEL_CHARS: Final = 32  # at most the smallest limit a label is cut to, so limits never differ


def _label(value: object, limit: int = SHORT_TEXT_CHARS) -> str | None:
    """:func:`clean_text` for short, repetitive values, memoised."""
    if type(value) is str:
        cached = _LABELS.get(value)
        if cached is not None:
            return cached
        cleaned = clean_text(value, limit)
        if len(value) <= _LABEL_CHARS:
            if len(_LABELS) >= _LABELS_MAX:  # ids of many sessions: start again, keep it bounded
                _LABELS.clear()
            _LABELS[value] = cleaned
        return cleaned
    return None if value is None else clean_text(value, limit)


def clean_int(value: object) -> int | None:
    """Return ``value`` as an int clamped to PostgreSQL's ``integer`` range, or None."""
    if value is None:
        return None
    if type(value) is not int:
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            value = int(value)
        else:
            try:
                value = int(value)  # type: ignore[call-overload]
            except (TypeError, ValueError, OverflowError):
                return None
    assert isinstance(value, int)
    if value > INT32_MAX:
        return INT32_MAX
    if value < INT32_MIN:
        return INT32_MIN
    return value


def clean_float(value: object) -> float | None:
    """Return ``value`` as a finite float, or None (NaN, inf and non-numbers become None)."""
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


# --- metadata ---------------------------------------------------------------------------------


def _json_key(key: object) -> str:
    # Same spelling as orjson's OPT_NON_STR_KEYS, so both encoding paths agree.
    if isinstance(key, str):
        return clean_text(key, None) or ""
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, enum.Enum):
        return _json_key(key.value)
    if isinstance(key, float):  # orjson's spelling (1e-05 is "0.00001"), not str()'s
        return orjson.dumps(key).decode() if math.isfinite(key) else "null"
    return clean_text(key, None) or ""


def sanitize_json(value: object, _depth: int = 0, _seen: set[int] | None = None) -> Any:
    """Return a JSON-safe copy of ``value``.

    Mappings become dicts with string keys, sequences and sets become lists, NaN and inf become
    None, strings lose NUL characters and lone surrogates, cycles and nesting deeper than 64
    become short marker strings, and anything else becomes its ``str()``.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_text(value, None)
    if isinstance(value, enum.Enum):
        return sanitize_json(value.value, _depth, _seen)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if _depth >= _MAX_JSON_DEPTH:
            return "<nested too deep>"
        seen = _seen if _seen is not None else set()
        marker = id(value)
        if marker in seen:
            return "<cycle>"
        seen.add(marker)
        try:
            if isinstance(value, Mapping):
                return {_json_key(k): sanitize_json(v, _depth + 1, seen) for k, v in value.items()}
            return [sanitize_json(v, _depth + 1, seen) for v in value]
        finally:
            seen.discard(marker)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sanitize_json(
            {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, _depth, _seen
        )
    return clean_text(value, None)


def _orjson_default(value: object) -> object:
    if isinstance(value, Mapping):  # MappingProxyType, ChainMap, UserDict: objects, not strings
        return dict(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


_ORJSON_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


def encode_metadata(value: object) -> str | None:
    """Encode metadata as JSON text for a ``jsonb`` column; never raises.

    A fast orjson pass handles ordinary dicts; anything it refuses (cycles, lone surrogates,
    integers past 64 bits, NUL characters, which ``jsonb`` rejects) goes through
    :func:`sanitize_json`. A value that is not a mapping is wrapped as ``{"value": ...}``.
    Encodings over 1 MiB are replaced by a marker with a preview, so one oversized payload
    cannot fail its batch.
    """
    if value is None:
        return None
    if type(value) is not dict and not isinstance(value, Mapping):  # the ABC check is slow
        value = {"value": value}
    try:
        raw = orjson.dumps(value, default=_orjson_default, option=_ORJSON_OPTIONS)
    except Exception:  # orjson refuses: take the thorough path
        return _thorough(value)
    if b"\\" in raw and _has_nul_escape(raw.decode("utf-8")):  # memchr first: \ is rare
        return _thorough(value)
    return _bounded(raw.decode("utf-8"))


def _thorough(value: object) -> str:
    try:
        text = json.dumps(sanitize_json(value), ensure_ascii=False, allow_nan=False)
    except Exception as exc:  # a hostile object defeated even that; keep a note of it
        text = json.dumps({"_unencodable": clean_text(repr(type(exc)), 200)})
    return _bounded(text)


def _bounded(text: str) -> str:
    """``text``, or a marker with a preview when its UTF-8 encoding passes METADATA_BYTES.

    The bound is in bytes, as PostgreSQL stores the text; a character is at most four of
    them, so shorter texts are never encoded to be measured.
    """
    if len(text) > METADATA_BYTES or (
        len(text) * 4 > METADATA_BYTES
        and not text.isascii()
        and len(text.encode("utf-8", "replace")) > METADATA_BYTES
    ):
        return json.dumps({"_truncated": True, "preview": clean_text(text, PREVIEW_CHARS)})
    return text


_dumps: Final = orjson.dumps


def snapshot_metadata(value: object) -> object:
    """What an event keeps of the caller's metadata (on the hot path: cheap, never raises).

    A dict is encoded to JSON text in one orjson call (about 0.25 µs for a typical one). Text
    is invisible to the cycle collector, and so is the event tuple holding it — a tuple
    holding any dict, even an untracked one, stays tracked. It also snapshots nested values,
    so the caller may mutate its dict afterwards. It is kept as ``str``, not orjson's
    ``bytes``: a retained orjson buffer is a fresh ~1 KB allocation each time (measured at
    ~2 µs a call in a filling buffer), while the decoded text is a small pooled object, and
    it is what asyncpg sends for ``jsonb`` anyway. If orjson refuses the dict (a cycle, an
    integer past 64 bits, a type it does not know), a shallow copy is kept and
    :func:`metadata_text` encodes it thoroughly off the hot path. Anything else is kept as
    given, except a ``str``, which is wrapped, so that text in an event always means JSON.
    """
    if type(value) is dict:
        try:
            return _dumps(value, None, _ORJSON_OPTIONS).decode()
        except Exception:
            return value.copy()
    if type(value) is str:
        return {"value": value}
    return value


def metadata_text(value: object) -> str | None:
    """The ``jsonb`` text of an event's metadata (encoded JSON text, or a snapshot)."""
    if type(value) is str:
        if "\\" in value and _has_nul_escape(value):
            return _thorough_text(value)
        return _bounded(value)
    return encode_metadata(value)


# Twenty digits in a row may be an integer past 64 bits, which orjson.loads reads as a float
# (silently rounded); the standard library keeps it exact. A string of digits that long only
# costs the slower decoder.
_LONG_DIGITS: Final = re.compile(r"[0-9]{20}")


# A NUL character in JSON text is the escape \u0000 after an even run of other backslashes;
# after an odd run it is a literal backslash followed by "u0000", which jsonb stores fine.
_NUL_ESCAPE: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _has_nul_escape(text: str) -> bool:
    """Whether JSON ``text`` encodes a NUL character (which ``jsonb`` refuses)."""
    return "\\u0000" in text and _NUL_ESCAPE.search(text) is not None


def decode_json(text: str) -> Any:
    """JSON text as Python values, integers of any size kept exact; raises ValueError."""
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    return orjson.loads(text)


def _thorough_text(text: str) -> str:
    # NUL characters inside strings, or oversized: the same treatment as encode_metadata's.
    if _has_nul_escape(text):
        try:
            decoded = decode_json(text)
        except Exception:
            return json.dumps({"_unencodable": "metadata"})
        return _thorough(decoded)
    return _bounded(text)


def event_metadata(value: object) -> Any:
    """An event's metadata as Python values, for providers (decodes the JSON text)."""
    if type(value) is str:
        try:
            return decode_json(value)
        except Exception:
            return None
    return value


# --- ids --------------------------------------------------------------------------------------

_hex32: Final = is_valid_trace_id
_hex16: Final = is_valid_span_id


def _bad_trace_id(value: object) -> InvalidEvent:
    return InvalidEvent(f"trace_id must be 32 lowercase hex digits, got {_preview(value)}")


def _bad_span_id(value: object) -> InvalidEvent:
    return InvalidEvent(f"span_id must be 16 lowercase hex digits, got {_preview(value)}")


def _preview(value: object) -> str:
    return clean_text(repr(value), 80) or ""


# --- building rows ----------------------------------------------------------------------------

_UTC: Final = _dt.UTC
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
# timestamptz cannot hold years past 294276 and Python's datetime stops at 9999; keep inside.
_MAX_NS: Final = 253_402_300_799 * 10**9
_MIN_NS: Final = -62_135_596_800 * 10**9
_FAST_NS_LIMIT: Final = 4_102_444_800 * 10**9  # 2100-01-01
_fromtimestamp: Final = _dt.datetime.fromtimestamp
_INF: Final = math.inf


def timestamp_from_ns(ns: object) -> _dt.datetime:
    """Nanoseconds since the epoch as an aware UTC datetime, clamped to datetime's range."""
    if type(ns) is int and 0 <= ns < _FAST_NS_LIMIT:
        # The common case, in half the time of epoch + timedelta (rounded to the microsecond).
        return _fromtimestamp(ns / 1e9, _UTC)
    ns = clean_int_any(ns)
    ns = min(max(ns, _MIN_NS), _MAX_NS)
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)


def _when(ns: object) -> tuple[_dt.datetime, int]:
    """The row's timestamp and its Unix milliseconds (for the UUIDv7 row id)."""
    if type(ns) is int and 0 <= ns < _FAST_NS_LIMIT:
        return _fromtimestamp(ns / 1e9, _UTC), ns // 1_000_000
    return timestamp_from_ns(ns), clean_int_any(ns) // 1_000_000


def clean_int_any(value: object) -> int:
    """An int of any size from ``value`` (0 when it is not a number)."""
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return 0
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError, OverflowError):
        return 0


def _duration(event: EventTuple) -> float | None:
    duration: Any = event[DURATION_MS]
    if type(duration) is float and 0.0 <= duration < _INF:
        return duration  # the common case: a float the service measured
    duration = clean_float(duration)
    end_ns = event[END_NS]
    if duration is None and end_ns is not None:
        try:
            duration = (end_ns - event[START_NS]) / 1e6
        except (TypeError, OverflowError):
            return None
        if not -_INF < duration < _INF:
            return None
    if duration is not None and duration < 0:
        duration = 0.0
    return duration  # type: ignore[no-any-return]


def _detail(event: EventTuple, size: int) -> tuple[Any, ...]:
    """The kind-specific fields, padded or cut to ``size`` (a caller may pass anything)."""
    detail = event[DETAIL:]
    if len(detail) == size:
        return detail
    return (*detail[:size], *(None,) * (size - len(detail)))


def _int32(value: object) -> int | None:
    if value is None or (type(value) is int and INT32_MIN <= value <= INT32_MAX):
        return value
    return clean_int(value)


# Groups of labels that travel together (the identity of a request; a span's name, type, model
# and provider) are cleaned together and memoised as a group: one tuple and one dict lookup
# instead of a function call per field. Only groups of plain strings and None are memoised (so
# 1, 1.0 and True, which are equal as keys, never share an entry); the memo is cleared when full.
_GROUPS: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_GROUPS_MAX: Final = 16384
_group_get: Final = _GROUPS.get


def _clean_group(key: tuple[Any, ...], limits: tuple[int, ...]) -> tuple[Any, ...]:
    # A miss is common (every new session's first row): map and a plain loop, not generator
    # expressions, which cost about 2 µs more here.
    values = key[1:]
    cleaned = tuple(map(_label, values, limits))
    for v in values:
        if v is not None and (type(v) is not str or len(v) > 256):
            return cleaned  # not memoised: the memo must not pin a caller's megabyte of text
    if len(_GROUPS) >= _GROUPS_MAX:
        _GROUPS.clear()
    _GROUPS[key] = cleaned
    return cleaned


def _group(key: tuple[Any, ...], limits: tuple[int, ...]) -> tuple[Any, ...]:
    """The cleaned labels of ``key[1:]`` (``key[0]`` names the group), each cut to its limit."""
    try:
        found = _group_get(key)
    except TypeError:  # an unhashable value: clean it field by field
        return tuple(_label(v, n) for v, n in zip(key[1:], limits, strict=True))
    return found if found is not None else _clean_group(key, limits)


# Group tags: the first element of a memo key, so groups of different fields never collide.
_I: Final = "identity"
_S: Final = "span"
_T: Final = "trace"
_C: Final = "chat"
_D: Final = "document"
_IDENTITY: Final = (SHORT_TEXT_CHARS, SHORT_TEXT_CHARS, SHORT_TEXT_CHARS)  # user, session, kb
_SPAN_LABELS: Final = (SHORT_TEXT_CHARS, 64, 256, 256, 32)  # name, type, model, provider, status
_TRACE_LABELS: Final = (SHORT_TEXT_CHARS, 32)  # name, status
_CHAT_LABELS: Final = (64,)  # role
_DOC_LABELS: Final = (64, 32)  # event_type, status


# The builders below run once per event on the writer's loop, so the common case is written
# inline: ids checked by expression (str.strip over the hex digits leaves nothing exactly when
# every character is one), label groups looked up directly, and only unusual values (a
# malformed id, an int out of range, metadata with a backslash) take a function call.


# CostCalculator.price: (model, provider, input, output, cached, reasoning, timestamp) -> Cost.
Pricer = Callable[[Any, Any, Any, Any, Any, Any, Any], "tuple[Any, Any, Any] | None"]
_LLM_EVENT: Final = DETAIL + 6  # the length of an event carrying an LLM span's fields


def _span_row(event: EventTuple, open_row: bool, price: Pricer | None = None) -> Row:
    trace_id = event[TRACE_ID]
    span_id = event[SPAN_ID]
    if not (
        type(trace_id) is str
        and len(trace_id) == 32
        and not trace_id.strip(HEX_DIGITS)
        and trace_id != ZERO_TRACE_ID
    ):
        raise _bad_trace_id(trace_id)
    if not (
        type(span_id) is str
        and len(span_id) == 16
        and not span_id.strip(HEX_DIGITS)
        and span_id != ZERO_SPAN_ID
    ):
        raise _bad_span_id(span_id)
    parent = event[PARENT_SPAN_ID]
    if parent is not None and not (
        type(parent) is str
        and len(parent) == 16
        and not parent.strip(HEX_DIGITS)
        and parent != ZERO_SPAN_ID
    ):
        parent = None  # an unusable parent link is dropped rather than refusing the span
    ns = event[START_NS]
    if type(ns) is int and 0 <= ns < _FAST_NS_LIMIT:
        start = _fromtimestamp(ns / 1e9, _UTC)
        unix_ms = ns // 1_000_000
    else:
        start, unix_ms = _when(ns)
    if open_row:
        status: object = "open"
        duration = None
    else:
        status = event[STATUS]
        duration = event[DURATION_MS]
        if not (type(duration) is float and 0.0 <= duration < _INF):
            duration = _duration(event)
    if len(event) == DETAIL:  # no kind fields: a plain span
        model = provider = input_tokens = output_tokens = cached = reasoning = None
    else:
        detail = event[DETAIL:] if len(event) == _LLM_EVENT else _detail(event, 6)
        model, provider, input_tokens, output_tokens, cached, reasoning = detail
        if input_tokens is not None and not (
            type(input_tokens) is int and INT32_MIN <= input_tokens <= INT32_MAX
        ):
            input_tokens = clean_int(input_tokens)
        if output_tokens is not None and not (
            type(output_tokens) is int and INT32_MIN <= output_tokens <= INT32_MAX
        ):
            output_tokens = clean_int(output_tokens)
        if cached is not None:
            cached = _int32(cached)
        if reasoning is not None:
            reasoning = _int32(reasoning)
    key: tuple[Any, ...] = (_S, event[NAME], event[SPAN_TYPE], model, provider, status)
    try:
        labels = _group_get(key)
    except TypeError:
        labels = None
    if labels is None:
        labels = _group(key, _SPAN_LABELS)
    name, span_type, model, provider, status = labels
    key = (_I, event[USER_ID], event[SESSION_ID], event[KB_ID])
    try:
        labels = _group_get(key)
    except TypeError:
        labels = None
    if labels is None:
        labels = _group(key, _IDENTITY)
    user_id, session_id, kb_id = labels
    cost_usd = price_source = price_version = None
    if (
        price is not None
        and model is not None
        and (input_tokens is not None or output_tokens is not None)
    ):
        cost = price(model, provider, input_tokens, output_tokens, cached, reasoning, start)
        if cost is not None:
            cost_usd, price_source, price_version = cost
    error_type = event[ERROR_TYPE]
    error_message = event[ERROR_MESSAGE]
    metadata = event[METADATA]
    if metadata is not None and (
        type(metadata) is not str or len(metadata) > METADATA_BYTES or "\\" in metadata
    ):
        metadata = metadata_text(metadata)
    # Every field by name, no starred groups: mypyc builds a starred tuple through a list.
    return (
        row_id_for_valid_span(unix_ms, trace_id, span_id),
        start,
        trace_id,
        span_id,
        parent,
        name,
        span_type,
        status or "ok",
        duration,
        None if error_type is None else _label(error_type, 256),
        None if error_message is None else clean_text(error_message, ERROR_MESSAGE_CHARS),
        model,
        provider,
        input_tokens,
        output_tokens,
        cached,
        reasoning,
        user_id,
        session_id,
        kb_id,
        cost_usd,
        price_source,
        price_version,
        metadata,
    )


def _trace_row(event: EventTuple, open_row: bool) -> Row:
    trace_id = event[TRACE_ID]
    span_id = event[SPAN_ID]
    if not _hex32(trace_id):
        raise _bad_trace_id(trace_id)
    if not _hex16(span_id):
        raise _bad_span_id(span_id)
    start, unix_ms = _when(event[START_NS])
    if open_row:
        status: object = "open"
        duration = None
    else:
        status = event[STATUS]
        duration = _duration(event)
    name, status = _group((_T, event[NAME], status), _TRACE_LABELS)
    user_id, session_id, kb_id = _group(
        (_I, event[USER_ID], event[SESSION_ID], event[KB_ID]), _IDENTITY
    )
    error_type = event[ERROR_TYPE]
    error_message = event[ERROR_MESSAGE]
    metadata = event[METADATA]
    return (
        row_id_for_valid_span(unix_ms, trace_id, span_id),
        start,
        trace_id,
        span_id,
        name,
        user_id,
        session_id,
        kb_id,
        status or "ok",
        duration,
        None if error_type is None else _label(error_type, 256),
        None if error_message is None else clean_text(error_message, ERROR_MESSAGE_CHARS),
        None if metadata is None else metadata_text(metadata),
    )


def _chat_row(event: EventTuple) -> Row:
    role, content, token_count = _detail(event, 3)
    text = clean_text(content, CONTENT_CHARS) or ""
    start, unix_ms = _when(event[START_NS])
    trace_id, span_id = event[TRACE_ID], event[SPAN_ID]
    (role,) = _group((_C, role), _CHAT_LABELS)
    user_id, session_id, kb_id = _group(
        (_I, event[USER_ID], event[SESSION_ID], event[KB_ID]), _IDENTITY
    )
    metadata = event[METADATA]
    row_id = random_uuid7_hex(unix_ms)
    return (
        row_id,
        start,
        # Outside a trace, the message is a trace of its own: its row id is its trace id, so
        # that the key (trace_id, id, "timestamp") and Citus's distribution always have one.
        trace_id if _hex32(trace_id) else row_id.replace("-", ""),
        span_id if _hex16(span_id) else None,
        session_id,
        user_id,
        kb_id,
        role or "unknown",
        text,
        text[:PREVIEW_CHARS],
        _int32(token_count),
        None if metadata is None else metadata_text(metadata),
    )


def _document_row(event: EventTuple) -> Row:
    document_id, event_type, chunk_count = _detail(event, 3)
    kb_id = _label(event[KB_ID])
    if not kb_id:
        raise InvalidEvent("document event without a kb_id")
    start, unix_ms = _when(event[START_NS])
    trace_id = event[TRACE_ID]
    event_type, status = _group((_D, event_type, event[STATUS]), _DOC_LABELS)
    error_type = event[ERROR_TYPE]
    error_message = event[ERROR_MESSAGE]
    metadata = event[METADATA]
    row_id = random_uuid7_hex(unix_ms)
    return (
        row_id,
        start,
        trace_id if _hex32(trace_id) else row_id.replace("-", ""),  # as for chat messages
        kb_id,
        clean_text(document_id) or "",
        event_type or "unknown",
        status or "ok",
        _duration(event),
        _int32(chunk_count),
        None if error_type is None else _label(error_type, 256),
        None if error_message is None else clean_text(error_message, ERROR_MESSAGE_CHARS),
        None if metadata is None else metadata_text(metadata),
    )


_END_TABLES: Final = {EventKind.SPAN_END: schema.SPANS, EventKind.TRACE_END: schema.TRACES}


def end_table(kind: str) -> str | None:
    """The table an end event completes a row of, or None if ``kind`` is not an end."""
    return _END_TABLES.get(kind)


def _merge_metadata(start: str | None, end: str | None) -> str | None:
    """The end's metadata over the start's, as the end-upsert's ``metadata || EXCLUDED.metadata``.

    Both are JSON objects: encode_metadata wraps anything that is not a mapping as
    ``{"value": ...}``, and its markers are objects too. Decoded by decode_json, which keeps
    integers past 64 bits exact. Two halves under the bound can merge past it, so the result
    is bounded again.
    """
    if end is None or end == start:
        return start
    if start is None:
        return end
    merged = {**decode_json(start), **decode_json(end)}
    return _bounded(json.dumps(merged, ensure_ascii=False))


def coalesce(start: EventTuple, end: EventTuple) -> EventTuple:
    """One complete event from a start and its end, to build a single row from.

    The start gives everything but the outcome; the end gives status, duration, error and
    its wall-clock end; metadata is the end's merged over the start's (as the end-upsert's
    ``metadata || EXCLUDED.metadata`` would). The kind becomes the end's, whose builder makes
    a complete row. Building once from this costs about half of building the start's open
    row and then completing it. An end's ``detail`` (a span handle's model and tokens) goes
    over the start's field by field, as the end-upsert's ``COALESCE`` does.
    """
    metadata = start[METADATA]
    end_metadata = end[METADATA]
    if end_metadata is not None:
        metadata = _merge_metadata(
            None if metadata is None else metadata_text(metadata), metadata_text(end_metadata)
        )
    ours = end[DETAIL:]
    # The end of a plain span (or block) knows no facts: the start's fields stand.
    detail = start[DETAIL:] if ours == NO_DETAIL or not ours else _merge_detail(start, end)
    # Every common field by name, then the kind fields added: no starred slices, which mypyc
    # builds through a list (a pair compiled 0.44-0.51 -> 0.28-0.29 µs; as Python 0.65 -> 0.5).
    common = (
        end[KIND],
        start[START_NS],
        end[END_NS],
        start[TRACE_ID],
        start[SPAN_ID],
        start[PARENT_SPAN_ID],
        start[NAME],
        start[SPAN_TYPE],
        end[STATUS],
        end[DURATION_MS],
        end[ERROR_TYPE],
        end[ERROR_MESSAGE],
        start[USER_ID],
        start[SESSION_ID],
        start[KB_ID],
        metadata,
    )
    return common + detail


def _merge_detail(start: EventTuple, end: EventTuple) -> tuple[Any, ...]:
    """The end's typed facts (a handle's model, tokens) over the start's, field by field.

    As the end-upsert's ``COALESCE(EXCLUDED.x, t.x)``: a fact the end does not know keeps
    the start's value. Malformed details are left for the row builder to pad or refuse.
    """
    theirs, ours = start[DETAIL:], end[DETAIL:]
    if len(theirs) != len(ours):
        return ours
    return tuple(s if e is None else e for s, e in zip(theirs, ours, strict=True))


def _complete_span(event: EventTuple) -> Row:
    return _span_row(event, False)


def _open_span(event: EventTuple) -> Row:
    return _span_row(event, True)


def _open_trace(event: EventTuple) -> Row:
    return _trace_row(event, True)


def _complete_trace(event: EventTuple) -> Row:
    return _trace_row(event, False)


# Per kind: the table its row goes to and the function that builds the row.
BUILDERS: Final[dict[str, tuple[str, Callable[[EventTuple], Row]]]] = {
    EventKind.SPAN: (schema.SPANS, _complete_span),
    EventKind.SPAN_END: (schema.SPANS, _complete_span),
    EventKind.SPAN_START: (schema.SPANS, _open_span),
    EventKind.TRACE_START: (schema.TRACES, _open_trace),
    EventKind.TRACE_END: (schema.TRACES, _complete_trace),
    EventKind.CHAT: (schema.CHAT_MESSAGES, _chat_row),
    EventKind.DOCUMENT: (schema.DOCUMENT_EVENTS, _document_row),
}
_builder: Final = BUILDERS.get


def build(event: EventTuple) -> tuple[str, Row]:
    """Turn one event into ``(table, row)``; raises :class:`InvalidEvent` if it cannot be saved.

    Start events become open rows (status ``open``); end events become rows carrying what the
    end knows, for the flusher to merge into their start or to upsert; the rest become
    complete rows.
    """
    try:
        found = _builder(event[KIND])
    except TypeError:  # an unhashable kind
        found = None
    if found is None:
        raise InvalidEvent(f"unknown event kind {_preview(event[KIND])}")
    table, builder = found
    return table, builder(event)


_P_TS, _P_MODEL, _P_PROVIDER = (
    schema.SPAN_COLUMNS.index(c) for c in ("timestamp", "model", "provider")
)
_P_IN, _P_OUT, _P_CACHED, _P_REASONING = (
    schema.SPAN_COLUMNS.index(c)
    for c in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
)
_P_COST: Final = schema.SPAN_COLUMNS.index("cost_usd")
if schema.SPAN_COLUMNS[_P_COST : _P_COST + 3] != ("cost_usd", "price_source", "price_version"):
    raise AssertionError("cost_usd, price_source, price_version must be adjacent, in order")
_P_AFTER: Final = _P_COST + 3

Builders = dict[str, tuple[str, Callable[[EventTuple], Row]]]


def priced_builders(
    cost: CostCalculator,
    base: Callable[[EventTuple], tuple[str, Row]] | None = None,
) -> tuple[Callable[[EventTuple], tuple[str, Row]], Builders | None]:
    """``base`` (default :func:`build`) and, for the default, :data:`BUILDERS`, with every span
    row that names a model and has token counts priced by ``cost`` (cost_usd, price_source,
    price_version). A custom ``base`` (a test's) gets no table: it is wrapped as it is.

    Runs where rows are built, in the background path. A call the calculator cannot price
    keeps NULLs, and the calculator counts why.
    """
    price = cost.price

    def price_row(row: Row) -> Row:
        model = row[_P_MODEL]
        if model is not None and (row[_P_IN] is not None or row[_P_OUT] is not None):
            found = price(
                model,
                row[_P_PROVIDER],
                row[_P_IN],
                row[_P_OUT],
                row[_P_CACHED],
                row[_P_REASONING],
                row[_P_TS],
            )
            if found is not None:
                return (*row[:_P_COST], *found, *row[_P_AFTER:])
        return row

    if base is not None and base is not build:
        custom = base

        def build_custom(event: EventTuple) -> tuple[str, Row]:
            target, row = custom(event)
            return target, price_row(row) if target == schema.SPANS else row

        return build_custom, None

    # The default span builders price as they build: no second pass rebuilding the row.
    span_price = cost.price

    def complete_span(event: EventTuple) -> Row:
        return _span_row(event, False, span_price)

    def open_span(event: EventTuple) -> Row:
        return _span_row(event, True, span_price)

    priced: dict[Callable[[EventTuple], Row], Callable[[EventTuple], Row]] = {
        _complete_span: complete_span,
        _open_span: open_span,
    }
    table: Builders = {
        kind: (target, priced.get(builder, builder)) for kind, (target, builder) in BUILDERS.items()
    }
    get = table.get

    def build_priced(event: EventTuple) -> tuple[str, Row]:
        try:
            found = get(event[KIND])
        except TypeError:  # an unhashable kind
            found = None
        if found is None:
            return build(event)  # refuses it, saying why
        target, builder = found
        return target, builder(event)

    return build_priced, table
