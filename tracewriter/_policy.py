"""What gets stored: redaction, content capture and head sampling. Pure and synchronous.

Owns the built-in redactors and the user's own (extra regular expressions, a callable), the
content-capture modes and the sampling decision. It does no I/O and keeps no reference to an
event after returning: the writer's background path calls :meth:`Policy.prepare` once per event
before any row is built, and decides sampling per row with :meth:`Policy.keeps_row` once rows
exist (roll-ups are computed from every row, kept or not). A provider that works on events
rather than rows (an exporter) calls :meth:`Policy.apply`, which does all three in one call.

Markers name the kind of what was removed and contain nothing of it: ``[email]``, ``[card]``,
``[api_key]``, ``[bearer]``, ``[jwt]``, ``[redacted]`` for the user's patterns, and
``[redaction_failed]`` for a field whose redactor raised (the event is kept, the failure
counted).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from tracewriter._context import remote_sampled_flag
from tracewriter._records import (
    DETAIL,
    ERROR_MESSAGE,
    ERROR_TYPE,
    KIND,
    METADATA,
    STATUS,
    TRACE_ID,
    EventKind,
    EventTuple,
    Row,
    clean_text,
    metadata_text,
)
from tracewriter._schema import (
    CHAT_COLUMNS,
    CHAT_MESSAGES,
    DOCUMENT_COLUMNS,
    DOCUMENT_EVENTS,
    SPAN_COLUMNS,
    SPANS,
    TRACE_COLUMNS,
    TRACES,
)

__all__ = [
    "ALL_KINDS",
    "CAPTURE_MODES",
    "DEFAULT_KINDS",
    "FAILED_MARKER",
    "Policy",
    "Redactor",
    "is_sampled",
    "parse_capture",
    "parse_redact",
    "parse_sample_rate",
]

UserRedactor = Callable[[str, str], str]

# --- built-in redactors -----------------------------------------------------------------------

# Each kind: a cheap substring test (a C-level scan) that every match must pass, so text without
# the trigger skips the regular expression, and the expression itself.
# Every repetition is bounded (RFC 5321's 64-character local part, 63-character labels) so that
# a megabyte of text cannot make a pattern backtrack quadratically.
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}"
)
# A run of 13 or more digits, optionally grouped by single spaces or dashes; within it, any 13
# to 19 digits from a group's start to a group's end that pass the Luhn check are a card (a
# card can follow other digit groups: "ref 0042 4111 1111 1111 1111").
_CARD = re.compile(r"[0-9](?:[ \-]?[0-9]){12,}")
# OpenAI keys (sk-…, sk-proj-…, sk-svcacct-…) and AWS access key ids (AKIA/ASIA + 16).
_API_KEY = re.compile(
    r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}"
    r"|(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")

FAILED_MARKER: Final = "[redaction_failed]"
_USER_MARKER: Final = "[redacted]"
_CHAT_CONTENT: Final = DETAIL + 1  # a chat event's kind fields: role, content, token_count


_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a Luhn-doubled digit, its digits summed


def _card_marker(match: re.Match[str]) -> str:
    run = match.group()
    end = len(run)
    at = [i for i, ch in enumerate(run) if "0" <= ch <= "9"]  # the run's digits, by position
    count = len(at)
    # Luhn sums of every window in O(1): prefix[p][t] sums digits 0..t-1, doubling those whose
    # index parity differs from p (a window ending at index e doubles exactly those).
    prefix: list[list[int]] = [[0], [0]]
    for t, i in enumerate(at):
        d = ord(run[i]) - 48
        for parity in (0, 1):
            row = prefix[parity]
            row.append(row[-1] + (d if t % 2 == parity else _DOUBLED[d]))
    out: list[str] = []
    copied = 0
    k = 0
    while k < count:
        i = at[k]
        if i == 0 or not "0" <= run[i - 1] <= "9":  # a group starts here: try 19 digits down
            for last in range(min(k + 18, count - 1), k + 11, -1):
                j = at[last]
                row = prefix[last % 2]
                if (j + 1 == end or not "0" <= run[j + 1] <= "9") and (
                    row[last + 1] - row[k]
                ) % 10 == 0:
                    out.append(run[copied:i])
                    out.append("[card]")
                    copied = j + 1
                    k = last
                    break
        k += 1
    if not out:
        return run
    out.append(run[copied:])
    return "".join(out)


Marker = str | Callable[[re.Match[str]], str]

# kind -> (substrings one of which every match contains, or None to always scan; pattern;
# replacement). The substring tests are C-level scans, so text without a trigger (most text)
# skips the regular expression. Bearer runs before api_key so that "Bearer sk-…" becomes one
# [bearer] rather than "Bearer [api_key]". The bearer trigger covers "Bearer", "bearer" and
# "BEARER" (what clients write); the pattern itself ignores case.
_BUILTINS: Final[dict[str, tuple[tuple[str, ...] | None, re.Pattern[str], Marker]]] = {
    "jwt": (("eyJ",), _JWT, "[jwt]"),
    "bearer": (("earer", "EARER"), _BEARER, "[bearer]"),
    "api_key": (("sk-", "AKIA", "ASIA"), _API_KEY, "[api_key]"),
    "email": (("@",), _EMAIL, "[email]"),
    "card": (None, _CARD, _card_marker),
}
ALL_KINDS: Final = ("email", "card", "api_key", "bearer", "jwt")
# On by default: the shapes of credentials, which nobody means to store and which rarely occur
# by accident. E-mail addresses and card-like numbers are opt-in: they can be legitimate data.
DEFAULT_KINDS: Final = ("api_key", "bearer", "jwt")


@dataclass(frozen=True, slots=True)
class RedactSpec:
    """What ``redact=`` asked for: built-in kinds, extra patterns, a user callable."""

    kinds: tuple[str, ...] = DEFAULT_KINDS
    patterns: tuple[re.Pattern[str], ...] = ()
    function: UserRedactor | None = None

    @property
    def enabled(self) -> bool:
        """Whether anything is redacted at all."""
        return bool(self.kinds or self.patterns or self.function)


def _kinds_from_text(text: str) -> tuple[str, ...]:
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not words or words == ["none"]:
        return ()
    if words == ["all"]:
        return ALL_KINDS
    if words == ["default"]:
        return DEFAULT_KINDS
    unknown = [w for w in words if w not in ALL_KINDS]
    if unknown:
        raise ValueError(
            f"unknown redaction kind(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(ALL_KINDS)}, or all, default, none"
        )
    return tuple(k for k in ALL_KINDS if k in words)  # one canonical order


def parse_redact(value: object) -> RedactSpec:
    """Read a ``redact=`` setting; raises ValueError saying what is wrong.

    Accepted: None or ``"default"`` (the credential kinds), ``"none"``, ``"all"``, a comma list
    of kinds (``"email,card,api_key"``), a callable ``(field, text) -> text``, a compiled
    pattern, a :class:`RedactSpec`, or a list mixing kind names, compiled patterns and at most
    one callable. The list replaces the default: add ``"default"`` to keep it.
    """
    if value is None:
        return RedactSpec()
    if isinstance(value, RedactSpec):
        return value
    if isinstance(value, str):
        return RedactSpec(kinds=_kinds_from_text(value))
    if isinstance(value, re.Pattern):
        return RedactSpec(kinds=(), patterns=(value,))
    if callable(value):
        return RedactSpec(kinds=(), function=value)
    if not isinstance(value, Iterable) or isinstance(value, bytes | Mapping):
        raise ValueError(f"expected a kind list, patterns or a callable, got {type(value)!r}")
    kinds: list[str] = []
    patterns: list[re.Pattern[str]] = []
    function: UserRedactor | None = None
    for item in value:
        if isinstance(item, str):
            kinds.extend(_kinds_from_text(item))
        elif isinstance(item, re.Pattern):
            if not isinstance(item.pattern, str):
                raise ValueError("redaction patterns must be text patterns, not bytes")
            patterns.append(item)
        elif callable(item):
            if function is not None:
                raise ValueError("at most one redaction callable")
            function = item
        else:
            raise ValueError(f"unexpected redaction item of type {type(item).__name__}")
    return RedactSpec(
        kinds=tuple(k for k in ALL_KINDS if k in kinds), patterns=tuple(patterns), function=function
    )


CAPTURE_MODES: Final = ("full", "preview", "none")
PREVIEW_CHARS: Final = 500


def parse_capture(value: object) -> str:
    """Read a ``capture_content=`` setting (``full``, ``preview`` or ``none``)."""
    if isinstance(value, str) and value.strip().lower() in CAPTURE_MODES:
        return value.strip().lower()
    raise ValueError(f"expected one of {', '.join(CAPTURE_MODES)}, got {value!r}")


def parse_sample_rate(value: object) -> float:
    """Read a ``sample_rate=`` setting: a number from 0 to 1."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError(f"expected a number from 0 to 1, got {value!r}")


# --- the redactor -----------------------------------------------------------------------------


class Redactor:
    """Applies a :class:`RedactSpec` to text and to metadata at any depth; never raises."""

    __slots__ = (
        "_enabled",
        "_function",
        "_rules",
        "_spec",
        "_triggers",
        "_unscannable",
        "failures",
    )

    def __init__(self, spec: RedactSpec) -> None:
        self._spec = spec
        self._rules = [_BUILTINS[k] for k in _BUILTINS if k in spec.kinds]
        self._function = spec.function
        self._enabled = spec.enabled
        # Encoded metadata can be skipped, undecoded, when none of these substrings occurs in
        # it — unless a rule has no trigger, or the user's patterns or callable must see it.
        self._triggers = tuple(t for triggers, _, _ in self._rules for t in triggers or ())
        self._unscannable = bool(
            spec.patterns or spec.function or any(t is None for t, _, _ in self._rules)
        )
        self.failures = 0

    @property
    def enabled(self) -> bool:
        """Whether this redactor changes anything."""
        return self._enabled

    def text(self, field: str, text: str) -> str:
        """``text`` with every match replaced by its marker; a raising redactor gives the
        failure marker (and counts)."""
        try:
            for triggers, pattern, marker in self._rules:
                if triggers is not None:
                    for trigger in triggers:
                        if trigger in text:
                            break
                    else:
                        continue
                text = pattern.sub(marker, text)
            for pattern in self._spec.patterns:
                text = pattern.sub(_USER_MARKER, text)
            if self._function is not None:
                result = self._function(field, text)
                if type(result) is not str:
                    raise TypeError("a redaction callable must return str")
                text = result
        except Exception:
            self.failures += 1
            return FAILED_MARKER
        return text

    def _quick_skip(self, raw: str) -> bool:
        """Whether encoded JSON ``raw`` certainly holds nothing to redact (so is not decoded).

        Only the built-in kinds can tell from the encoded text (their triggers survive JSON
        encoding unescaped); the user's patterns and callable see every string.
        """
        if not self._unscannable:
            for trigger in self._triggers:
                if trigger in raw:
                    break
            else:
                return True  # the common case: one memchr-speed scan per trigger
        if self._spec.patterns or self._function is not None or "\\u" in raw:
            return False
        for triggers, pattern, _ in self._rules:
            if (triggers is None or any(t in raw for t in triggers)) and pattern.search(raw):
                return False
        return True

    def value(self, value: Any, path: str, depth: int = 0) -> Any:
        """A JSON value with every string in it (keys included) redacted.

        ``path`` names where the value sits (``metadata.a.0.b``), for the user's callable; it
        is only spelled out when there is a callable to see it.
        """
        if isinstance(value, str):
            return self.text(path, value)
        if depth > 64:  # deeper than the writer ever encodes: no text survives
            return FAILED_MARKER
        named = self._function is not None
        if isinstance(value, dict):
            text = self.text
            return {
                text(path, k): self.value(v, f"{path}.{k}" if named else path, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [
                self.value(v, f"{path}.{i}" if named else path, depth + 1)
                for i, v in enumerate(value)
            ]
        return value

    def metadata(self, metadata: object) -> object:
        """An event's metadata (JSON text or a snapshot) redacted.

        Returned as it came when nothing in it can match (the common case: no decoding), else
        as the redacted Python value, which the row builder encodes exactly as it encodes a
        snapshot. Decoded with the standard library, which keeps integers past 64 bits exact
        (orjson would turn them into floats).
        """
        if metadata is None:
            return None
        raw = metadata_text(metadata)
        if raw is None or self._quick_skip(raw):
            return metadata
        try:
            decoded = json.loads(raw)
        except Exception:
            self.failures += 1
            return {"metadata": FAILED_MARKER}
        return self.value(decoded, "metadata")


# --- sampling ---------------------------------------------------------------------------------

_RANDOM_BITS: Final = 56
_RANDOM_RANGE: Final = 1 << _RANDOM_BITS


def rejection_threshold(rate: float) -> int:
    """The 56-bit threshold below which a trace id's randomness is rejected at ``rate``."""
    return round((1.0 - rate) * _RANDOM_RANGE)


def is_sampled(trace_id: str, rate: float) -> bool:
    """The head decision for ``trace_id`` at ``rate``, the same in every process.

    As OpenTelemetry's TraceIdRatioBased sampler (with W3C random trace ids): the trace id's
    low 56 bits are its randomness R, and the trace is kept when R >= (1 - rate) * 2**56.
    A trace id that is not 32 hex digits is kept (it is refused later, and counted, anyway).
    """
    if rate >= 1.0:
        return True
    try:
        randomness = int(trace_id[18:], 16)
    except (TypeError, ValueError):
        return True
    return randomness >= rejection_threshold(rate)


_ERROR_STATUSES: Final = frozenset({"error", "failed", "failure"})


def _column(columns: tuple[str, ...], name: str) -> int:
    return columns.index(name)


# table -> (trace_id, status, error_type, error_message) positions (-1: no such column).
_ROW_FIELDS: Final = {
    SPANS: tuple(
        _column(SPAN_COLUMNS, c) for c in ("trace_id", "status", "error_type", "error_message")
    ),
    TRACES: tuple(
        _column(TRACE_COLUMNS, c) for c in ("trace_id", "status", "error_type", "error_message")
    ),
    DOCUMENT_EVENTS: tuple(
        _column(DOCUMENT_COLUMNS, c) for c in ("trace_id", "status", "error_type", "error_message")
    ),
    CHAT_MESSAGES: (_column(CHAT_COLUMNS, "trace_id"), -1, -1, -1),
}
_RESCUED_MAX: Final = 100_000


# --- the policy -------------------------------------------------------------------------------


class PolicySettings(Protocol):
    """The settings a :class:`Policy` is made of (``WriterConfig`` and ``FlusherSettings``)."""

    @property
    def redact(self) -> object: ...
    @property
    def capture_content(self) -> str: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def sample_follow_parent(self) -> bool: ...


class Policy:
    """Redaction, content capture and sampling, as configured; one per writer or exporter.

    ``prepare(event)`` redacts and applies content capture (the writer, before building rows);
    ``keeps_row(table, row)`` is the sampling decision for a built row (rows of an unsampled
    trace are dropped unless they record an error, or belong to a trace that had one);
    ``apply(event)`` does all of it for one event and returns None when it is sampled out.
    """

    __slots__ = ("_rescued", "_threshold", "capture", "follow_parent", "rate", "redactor")

    def __init__(
        self,
        redact: object = None,
        capture_content: str = "full",
        sample_rate: float = 1.0,
        sample_follow_parent: bool = True,
    ) -> None:
        self.redactor = Redactor(parse_redact(redact))
        self.capture = parse_capture(capture_content)
        self.rate = parse_sample_rate(sample_rate)
        self._threshold = rejection_threshold(self.rate)
        self.follow_parent = bool(sample_follow_parent)
        # Unsampled traces in which an error was seen: their trace row is kept. Insertion
        # ordered, oldest forgotten first, so it stays bounded however long the writer runs.
        self._rescued: dict[str, None] = {}

    @classmethod
    def of(cls, settings: PolicySettings) -> Policy:
        """The policy a writer configuration (or the flusher's part of it) describes."""
        return cls(
            settings.redact,
            settings.capture_content,
            settings.sample_rate,
            settings.sample_follow_parent,
        )

    @property
    def changes_events(self) -> bool:
        """Whether :meth:`prepare` does anything (if not, the writer skips the call)."""
        return self.redactor.enabled or self.capture != "full"

    @property
    def samples(self) -> bool:
        """Whether any trace is sampled out."""
        return self.rate < 1.0

    @property
    def redaction_failures(self) -> int:
        """Fields replaced by the failure marker because a redactor raised."""
        return self.redactor.failures

    # --- redaction and content capture ---

    def prepare(self, event: EventTuple) -> EventTuple:
        """``event`` with its text redacted and its content captured as configured.

        Never raises, and never lets unredacted text through: if preparing fails unexpectedly,
        every text field of the event is replaced by the failure marker (and counted); an
        event too malformed even for that is returned unchanged, for the row builder to refuse
        and count.
        """
        try:
            return self._prepare(event)
        except Exception:
            return self._blanked(event)

    def _blanked(self, event: EventTuple) -> EventTuple:
        try:
            detail = event[DETAIL:]
            if event[KIND] == EventKind.CHAT and len(detail) >= 2:
                detail = (detail[0], FAILED_MARKER, *detail[2:])
            blanked = (
                *event[:ERROR_MESSAGE],
                None if event[ERROR_MESSAGE] is None else FAILED_MARKER,
                *event[ERROR_MESSAGE + 1 : METADATA],
                None if event[METADATA] is None else {"metadata": FAILED_MARKER},
                *detail,
            )
        except Exception:
            return event
        self.redactor.failures += 1
        return blanked

    def _prepare(self, event: EventTuple) -> EventTuple:
        redactor = self.redactor
        error_message = event[ERROR_MESSAGE]
        metadata = event[METADATA]
        redacting = redactor.enabled
        if redacting:
            if error_message is not None:
                error_text = clean_text(error_message, None) or ""
                error_message = redactor.text("error_message", error_text)
            if metadata is not None:
                metadata = redactor.metadata(metadata)
        new_content = None  # a chat message's content, when what is kept differs from it
        if event[KIND] == EventKind.CHAT and len(event) > _CHAT_CONTENT:
            content = event[_CHAT_CONTENT]
            if content is not None:
                text = clean_text(content, None) or ""
                if redacting:
                    text = redactor.text("content", text)
                if self.capture == "preview":
                    text = text[:PREVIEW_CHARS]
                elif self.capture == "none":
                    metadata = _with_content_digest(metadata, text)
                    text = ""
                if text is not content:
                    new_content = text
        elif not redacting:
            return event
        if (
            error_message is event[ERROR_MESSAGE]
            and metadata is event[METADATA]
            and new_content is None
        ):
            return event  # nothing matched: no new tuple
        kind_fields = event[DETAIL:]
        if new_content is not None:
            kind_fields = (*event[DETAIL:_CHAT_CONTENT], new_content, *event[_CHAT_CONTENT + 1 :])
        return (
            *event[:ERROR_MESSAGE],
            error_message,
            *event[ERROR_MESSAGE + 1 : METADATA],
            metadata,
            *kind_fields,
        )

    # --- sampling ---

    def trace_sampled(self, trace_id: object) -> bool:
        """The head decision for ``trace_id`` (non-text ids are kept, to be refused later).

        A trace continued in this process from a ``traceparent`` header follows the header's
        sampled flag when ``sample_follow_parent`` is on (so every service of a distributed
        trace keeps or drops it alike); with ``sample_rate`` 1 nothing is sampled out at all.
        """
        if self._threshold <= 0:
            return True
        if self.follow_parent:
            flag = remote_sampled_flag(trace_id)  # type: ignore[arg-type]
            if flag is not None:
                return flag
        try:
            return int(trace_id[18:], 16) >= self._threshold  # type: ignore[index]
        except (TypeError, ValueError):
            return True

    def _rescue(self, trace_id: str) -> None:
        rescued = self._rescued
        if trace_id not in rescued:
            if len(rescued) >= _RESCUED_MAX:
                del rescued[next(iter(rescued))]
            rescued[trace_id] = None

    def note_errors(self, table: str, rows: Iterable[Row]) -> None:
        """Remember the unsampled traces in which ``rows`` record an error.

        Call it for every table of a batch before :meth:`keeps_row`, so a trace row built in
        the same batch as its failed span is kept.
        """
        fields = _ROW_FIELDS.get(table)
        if fields is None or fields[1] < 0:
            return
        tid, status, etype, emsg = fields
        for row in rows:
            if row[status] in _ERROR_STATUSES or row[etype] is not None or row[emsg] is not None:
                trace_id = row[tid]
                if trace_id is not None and not self.trace_sampled(trace_id):
                    self._rescue(trace_id)

    def keeps_row(self, table: str, row: Row) -> bool:
        """Whether a built row is written (its trace sampled, or an error, or a rescued trace)."""
        fields = _ROW_FIELDS.get(table)
        if fields is None:
            return True
        tid, status, etype, emsg = fields
        trace_id = row[tid]
        if trace_id is None or self.trace_sampled(trace_id):
            return True
        if status >= 0 and (
            row[status] in _ERROR_STATUSES or row[etype] is not None or row[emsg] is not None
        ):
            self._rescue(trace_id)
            return True
        return table == TRACES and trace_id in self._rescued

    def keeps_event(self, event: EventTuple) -> bool:
        """:meth:`keeps_row` for an event (for providers that export events, not rows)."""
        try:
            trace_id = event[TRACE_ID]
            if self.trace_sampled(trace_id):
                return True
            status = event[STATUS]
            if (
                status in _ERROR_STATUSES
                or event[ERROR_TYPE] is not None
                or event[ERROR_MESSAGE] is not None
            ):
                self._rescue(trace_id)
                return True
            kind = event[KIND]
            return kind in (EventKind.TRACE_END, EventKind.TRACE_START) and (
                trace_id in self._rescued
            )
        except Exception:
            return True

    def apply(self, event: EventTuple) -> EventTuple | None:
        """The one call for an exporter: the event redacted and captured, or None when sampled out.

        A trace start of an unsampled trace is dropped even if an error follows (an exporter
        sends events as they come); the trace's end is kept when an error was seen before it.
        """
        if self.rate < 1.0 and not self.keeps_event(event):
            return None
        return self.prepare(event) if self.changes_events else event


def _with_content_digest(metadata: object, text: str) -> dict[str, Any]:
    """Metadata (JSON text or a snapshot) with ``content_length`` and ``content_sha256`` added,
    as a Python value for the row builder to encode."""
    digest = {
        "content_length": len(text),
        "content_sha256": hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
    }
    raw = metadata_text(metadata)
    if raw is None:
        return digest
    try:
        decoded = json.loads(raw)
    except Exception:
        return digest
    if isinstance(decoded, dict):
        decoded.update(digest)
        return decoded
    return {"value": decoded, **digest}
