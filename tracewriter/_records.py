"""Events as the API records them, and the sanitised row tuples the writer builds from them.

Owns the event layout (what the hot path appends) and every conversion from caller-supplied
values to values PostgreSQL will accept: NUL characters stripped, lone surrogates replaced, text
truncated, integers clamped to the column range, NaN/inf dropped, metadata made JSON-serialisable
and encoded. It does no I/O and knows nothing of asyncpg or of the buffer; the flusher calls
:func:`build` off the hot path, so a caller never pays for encoding.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import orjson

from tracewriter import _schema as schema
from tracewriter._ids import random_uuid7_hex, row_id_for_valid_span

__all__ = [
    "Event",
    "EventKind",
    "InvalidEvent",
    "Row",
    "build",
    "clean_float",
    "clean_int",
    "clean_text",
    "complete_row",
    "encode_metadata",
    "end_table",
    "sanitize_json",
    "timestamp_from_ns",
]

Row = tuple[Any, ...]

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
    """One recorded fact, exactly as the caller gave it (nothing validated or encoded yet).

    ``start_ns`` is the wall-clock start in nanoseconds since the epoch (the row's timestamp);
    ``end_ns`` the wall-clock end for end and complete events. ``detail`` carries the fields of
    one kind: ``(model, provider, input_tokens, output_tokens, cached_input_tokens,
    reasoning_tokens)`` for LLM spans, ``(role, content, token_count)`` for chat messages,
    ``(document_id, event_type, chunk_count)`` for document events.
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
# memoised: a dict lookup instead of a dozen checks. Bounded: once full, it stops growing.
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
        if len(value) <= _LABEL_CHARS and len(_LABELS) < _LABELS_MAX:
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
    if isinstance(key, float) and not math.isfinite(key):
        return "null"
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
    text: str
    try:
        raw = orjson.dumps(value, default=_orjson_default, option=_ORJSON_OPTIONS)
        if b"\\u0000" in raw:
            raise ValueError("NUL in metadata")
        text = raw.decode("utf-8")
    except Exception:  # orjson refuses: take the thorough path
        try:
            text = json.dumps(sanitize_json(value), ensure_ascii=False, allow_nan=False)
        except Exception as exc:  # a hostile object defeated even that; keep a note of it
            text = json.dumps({"_unencodable": clean_text(repr(type(exc)), 200)})
    if len(text) > METADATA_BYTES:
        text = json.dumps({"_truncated": True, "preview": clean_text(text, PREVIEW_CHARS)})
    return text


# --- ids --------------------------------------------------------------------------------------

_MATCH_HEX: Final = {
    32: re.compile(r"[0-9a-f]{32}").fullmatch,
    16: re.compile(r"[0-9a-f]{16}").fullmatch,
}
_ZEROS: Final = {32: "0" * 32, 16: "0" * 16}


def _valid_hex(value: object, length: int) -> bool:
    return type(value) is str and _MATCH_HEX[length](value) is not None and value != _ZEROS[length]


def _require_trace_id(value: object) -> str:
    if not _valid_hex(value, 32):
        raise InvalidEvent(f"trace_id must be 32 lowercase hex digits, got {_preview(value)}")
    assert isinstance(value, str)
    return value


def _require_span_id(value: object) -> str:
    if not _valid_hex(value, 16):
        raise InvalidEvent(f"span_id must be 16 lowercase hex digits, got {_preview(value)}")
    assert isinstance(value, str)
    return value


def _optional_span_id(value: object) -> str | None:
    # An unusable parent link is dropped rather than refusing the whole span.
    return value if _valid_hex(value, 16) else None  # type: ignore[return-value]


def _optional_trace_id(value: object) -> str | None:
    return value if _valid_hex(value, 32) else None  # type: ignore[return-value]


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


def timestamp_from_ns(ns: object) -> _dt.datetime:
    """Nanoseconds since the epoch as an aware UTC datetime, clamped to datetime's range."""
    if type(ns) is int and 0 <= ns < _FAST_NS_LIMIT:
        # The common case, in half the time of epoch + timedelta (rounded to the microsecond).
        return _fromtimestamp(ns / 1e9, _UTC)
    ns = clean_int_any(ns)
    ns = min(max(ns, _MIN_NS), _MAX_NS)
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)


def clean_int_any(value: object) -> int:
    """An int of any size from ``value`` (0 when it is not a number)."""
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return 0
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError, OverflowError):
        return 0


def _status(value: object, default: str) -> str:
    return _label(value, 32) or default


def _duration(event: Event) -> float | None:
    duration = clean_float(event.duration_ms)
    if duration is None and event.end_ns is not None:
        try:
            duration = (event.end_ns - event.start_ns) / 1e6
        except TypeError:
            return None
    if duration is not None and duration < 0:
        duration = 0.0
    return duration


def _detail(event: Event, size: int) -> tuple[Any, ...]:
    """The kind-specific fields, padded or cut to ``size`` (a caller may pass anything)."""
    detail = event.detail
    if type(detail) is not tuple:
        detail = ()
    elif len(detail) == size:
        return detail
    return (*detail[:size], *(None,) * (size - len(detail)))


def _span_row(event: Event, *, status: str, duration: float | None) -> Row:
    trace_id = _require_trace_id(event.trace_id)
    span_id = _require_span_id(event.span_id)
    start = timestamp_from_ns(event.start_ns)
    unix_ms = clean_int_any(event.start_ns) // 1_000_000
    model, provider, input_tokens, output_tokens, cached_tokens, reasoning_tokens = _detail(
        event, 6
    )
    return (
        row_id_for_valid_span(unix_ms, trace_id, span_id),
        start,
        trace_id,
        span_id,
        _optional_span_id(event.parent_span_id),
        _label(event.name),
        _label(event.span_type, 64),
        status,
        duration,
        _label(event.error_type, 256),
        clean_text(event.error_message, ERROR_MESSAGE_CHARS),
        _label(model, 256),
        _label(provider, 256),
        clean_int(input_tokens),
        clean_int(output_tokens),
        clean_int(cached_tokens),
        clean_int(reasoning_tokens),
        _label(event.user_id),
        _label(event.session_id),
        _label(event.kb_id),
        encode_metadata(event.metadata),
    )


def _trace_row(event: Event, *, status: str, duration: float | None) -> Row:
    trace_id = _require_trace_id(event.trace_id)
    span_id = _require_span_id(event.span_id)
    unix_ms = clean_int_any(event.start_ns) // 1_000_000
    return (
        row_id_for_valid_span(unix_ms, trace_id, span_id),
        timestamp_from_ns(event.start_ns),
        trace_id,
        span_id,
        _label(event.name),
        _label(event.user_id),
        _label(event.session_id),
        _label(event.kb_id),
        status,
        duration,
        _label(event.error_type, 256),
        clean_text(event.error_message, ERROR_MESSAGE_CHARS),
        encode_metadata(event.metadata),
    )


def _chat_row(event: Event) -> Row:
    role, content, token_count = _detail(event, 3)
    text = clean_text(content, CONTENT_CHARS) or ""
    unix_ms = clean_int_any(event.start_ns) // 1_000_000
    return (
        random_uuid7_hex(unix_ms),
        timestamp_from_ns(event.start_ns),
        _optional_trace_id(event.trace_id),
        _optional_span_id(event.span_id),
        _label(event.session_id),
        _label(event.user_id),
        _label(event.kb_id),
        _label(role, 64) or "unknown",
        text,
        text[:PREVIEW_CHARS],
        clean_int(token_count),
        encode_metadata(event.metadata),
    )


def _document_row(event: Event) -> Row:
    document_id, event_type, chunk_count = _detail(event, 3)
    kb_id = _label(event.kb_id)
    if not kb_id:
        raise InvalidEvent("document event without a kb_id")
    unix_ms = clean_int_any(event.start_ns) // 1_000_000
    return (
        random_uuid7_hex(unix_ms),
        timestamp_from_ns(event.start_ns),
        _optional_trace_id(event.trace_id),
        kb_id,
        clean_text(document_id) or "",
        _label(event_type, 64) or "unknown",
        _status(event.status, "ok"),
        _duration(event),
        clean_int(chunk_count),
        _label(event.error_type, 256),
        clean_text(event.error_message, ERROR_MESSAGE_CHARS),
        encode_metadata(event.metadata),
    )


_END_TABLES: Final = {EventKind.SPAN_END: schema.SPANS, EventKind.TRACE_END: schema.TRACES}
_END_FIELDS: Final = {
    table: tuple(schema.COLUMNS[table].index(c) for c in schema.END_UPDATE_COLUMNS)
    for table in schema.UPSERTABLE
}
_METADATA_AT: Final = {
    table: schema.COLUMNS[table].index("metadata") for table in schema.UPSERTABLE
}


def end_table(kind: str) -> str | None:
    """The table an end event completes a row of, or None if ``kind`` is not an end."""
    return _END_TABLES.get(kind)


def _merge_metadata(start: str | None, end: str | None) -> str | None:
    """The end's metadata over the start's, as the end-upsert's ``metadata || EXCLUDED.metadata``.

    The standard library's json, not orjson: orjson reads integers past 64 bits as floats (and
    refuses them past the double range), and encode_metadata keeps them exact. The texts are
    not always objects (encode_metadata turns a non-dict Mapping into a string), and this must
    not raise: the start and end it merges are already out of the buffer.
    """
    if end is None or end == start:
        return start
    if start is None:
        return end
    merged, update = json.loads(start), json.loads(end)
    if isinstance(merged, dict) and isinstance(update, dict):
        merged.update(update)
    else:  # jsonb's || on anything but two objects: concatenate as arrays
        merged = (merged if isinstance(merged, list) else [merged]) + (
            update if isinstance(update, list) else [update]
        )
    return json.dumps(merged, ensure_ascii=False)


def complete_row(table: str, start: Row, end: Event) -> Row:
    """The open row ``start`` completed by its ``end`` event: one row for COPY.

    Only the end's own fields are sanitised (status, duration, error, metadata): the start row
    already holds everything else, so an end costs a fraction of a full :func:`build`.
    """
    row = list(start)
    status_at, duration_at, error_type_at, error_message_at = _END_FIELDS[table]
    row[status_at] = _status(end.status, "ok")
    row[duration_at] = _duration(end)
    row[error_type_at] = _label(end.error_type, 256)
    row[error_message_at] = clean_text(end.error_message, ERROR_MESSAGE_CHARS)
    meta_at = _METADATA_AT[table]
    if end.metadata is not None:
        row[meta_at] = _merge_metadata(start[meta_at], encode_metadata(end.metadata))
    return tuple(row)


def build(event: Event) -> tuple[str, Row]:
    """Turn one event into ``(table, row)``; raises :class:`InvalidEvent` if it cannot be saved.

    Start events become open rows (status ``open``); end events become rows carrying what the
    end knows, for the flusher to merge into their start or to upsert; the rest become
    complete rows.
    """
    kind = event.kind
    if kind in (EventKind.SPAN, EventKind.SPAN_END):
        return schema.SPANS, _span_row(
            event, status=_status(event.status, "ok"), duration=_duration(event)
        )
    if kind == EventKind.SPAN_START:
        return schema.SPANS, _span_row(event, status="open", duration=None)
    if kind == EventKind.TRACE_START:
        return schema.TRACES, _trace_row(event, status="open", duration=None)
    if kind == EventKind.TRACE_END:
        return schema.TRACES, _trace_row(
            event, status=_status(event.status, "ok"), duration=_duration(event)
        )
    if kind == EventKind.CHAT:
        return schema.CHAT_MESSAGES, _chat_row(event)
    if kind == EventKind.DOCUMENT:
        return schema.DOCUMENT_EVENTS, _document_row(event)
    raise InvalidEvent(f"unknown event kind {_preview(kind)}")
