"""Writer settings: defaults, ``TRACEWRITER_*`` environment variables, validation, redaction.

Owns `WriterConfig` and the rules for each setting, and the redaction of DSN passwords
(`redact_dsn`, `redact_text`) that every repr, log line and exception text relies on. It knows
nothing of the writer that uses the settings, does no I/O and imports neither the driver nor the
logger. Mistakes raise `ConfigurationError` naming the setting (and the environment variable
when the value came from one), never showing a password.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal
from urllib.parse import unquote

from tracewriter._policy import parse_capture, parse_redact
from tracewriter.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "WriterConfig", "redact_dsn", "redact_text"]

ENV_PREFIX: Final = "TRACEWRITER_"
_MASK: Final = "***"

_Kind = Literal["dsn", "float", "int", "bool", "str", "redact", "prices"]


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class WriterConfig:
    """Settings of the writer; every field has a working default except where to write.

    Build it directly (then call `validate`), or with `from_env`, which reads
    ``TRACEWRITER_<FIELD>`` variables and validates. ``repr`` shows the DSN with its password
    replaced by ``***``.

    Attributes:
        dsn: PostgreSQL URI (``postgresql://...`` or ``postgres://...``) or libpq
            ``key=value`` string; None leaves it to the caller (e.g. an embedded server).
        flush_interval: seconds between flushes (a full batch flushes early).
        max_batch_rows: rows per COPY batch, and the buffer size that triggers an early flush.
        max_buffer_rows: rows held at most; beyond that new events are dropped and counted.
        pool_size: connections in the writer's pool, hence COPYs at once (1 works; 2, the
            default, lets tables flush in parallel). One Python process encodes ~35,000 rows/s
            and two COPY backends take more than that, so more connections add server
            backends competing for CPU (on a shared host, the application's), not throughput.
        open_row_grace: seconds an open span is held back waiting for its end before it is
            written as an open row.
        thread_mode: run the writer on its own thread with its own event loop.
        pgbouncer: PgBouncer transaction pooling: no named prepared statements, statement
            cache off.
        connect_timeout: seconds to establish a connection.
        command_timeout: seconds one statement may run.
        retry_initial_backoff: first delay in seconds after a retriable failure.
        retry_max_backoff: cap in seconds of the exponential backoff.
        close_timeout: seconds ``close()`` spends draining by default (0: do not wait).
        atexit_timeout: seconds the interpreter-exit hook spends draining (0: do not wait).
        partition_check_interval: seconds between checks that partitions exist ahead.
        provider_name: the name under which this writer reports in provider_sync_status.
        copy_yield_rows: rows encoded between yields to the event loop during a COPY.
        dead_letter_max_chars: characters of a refused row kept in the dead-letter table.
        redact: what is redacted before anything is stored: ``"default"`` (API keys, AWS access
            keys, bearer tokens, JWTs), ``"all"`` (also e-mail addresses and Luhn-valid card
            numbers), ``"none"``, a comma list of kinds, or (as a keyword argument) a callable
            ``(field, text) -> text``, compiled patterns, or a list mixing them.
        capture_content: chat message text kept: ``full``, ``preview`` (500 characters) or
            ``none`` (length and SHA-256 in metadata ``content_length``/``content_sha256``).
        sample_rate: fraction of traces written (0 to 1), a head decision from the trace id;
            errors are always written and metric roll-ups count every call.
        sample_follow_parent: when sampling (``sample_rate`` < 1), a trace continued from a
            ``traceparent`` header is kept or dropped as its sampled flag says.
        price_calls: compute ``spans.cost_usd`` for LLM calls (from ``prices``, else from
            genai-prices when the extra ``tracewriter[cost]`` is installed).
        prices: your prices per model, which win over genai-prices: ``{"model" or
            "provider/model": {"input": ..., "output": ..., "cached_input": ...,
            "reasoning": ...}}`` in USD per million tokens; from the environment as JSON
            (``TRACEWRITER_PRICES``).
    """

    dsn: str | None = None
    flush_interval: float = 1.0
    max_batch_rows: int = 5000
    max_buffer_rows: int = 100_000
    pool_size: int = 2
    open_row_grace: float = 5.0
    thread_mode: bool = False
    pgbouncer: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    retry_initial_backoff: float = 0.1
    retry_max_backoff: float = 5.0
    close_timeout: float = 5.0
    atexit_timeout: float = 2.0
    partition_check_interval: float = 600.0
    provider_name: str = "postgres"
    copy_yield_rows: int = 32
    dead_letter_max_chars: int = 100_000
    redact: Any = "default"
    capture_content: str = "full"
    sample_rate: float = 1.0
    sample_follow_parent: bool = True
    price_calls: bool = True
    prices: Mapping[str, Mapping[str, object]] | None = None

    def __repr__(self) -> str:
        parts = (
            f"{name}={redact_dsn(value) if name == 'dsn' else value!r}"
            for name, value in self._items()
        )
        return f"WriterConfig({', '.join(parts)})"

    def _items(self) -> Iterator[tuple[str, Any]]:
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    @staticmethod
    def env_var(name: str) -> str:
        """Return the environment variable that sets the field ``name``."""
        return ENV_PREFIX + name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WriterConfig:
        """Build a validated configuration from ``TRACEWRITER_*`` variables and overrides.

        ``environ`` defaults to `os.environ`. Each field ``name`` is read from
        ``TRACEWRITER_<NAME>`` (``TRACEWRITER_FLUSH_INTERVAL``...); an empty or blank variable
        counts as unset. Booleans accept ``1/0``, ``true/false``, ``yes/no``, ``on/off`` in any
        case. Keyword ``overrides`` (already-typed values) win over the environment; an override
        of None means "not given".

        Raises:
            ConfigurationError: an unknown override, a variable that does not parse, or a value
                `validate` refuses; the message names the setting and the variable.
        """
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigurationError(
                "unknown WriterConfig setting(s): "
                + ", ".join(repr(name) for name in unknown)
                + f"; known settings: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        from_env: dict[str, tuple[str, str]] = {}
        for name, (kind, expected, _) in _RULES.items():
            override = overrides.get(name)
            if override is not None:
                values[name] = override
                continue
            var = cls.env_var(name)
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            values[name] = _parse(kind, raw, f"{var} ({name})", expected)
            from_env[name] = (var, raw)
        config = cls(**values)
        config._validate(from_env)
        return config

    def validate(self) -> None:
        """Check every setting and the relations between them.

        Raises:
            ConfigurationError: naming the first setting found invalid, what it expects and
                what it got (a DSN shown redacted).
        """
        self._validate({})

    def _validate(self, from_env: Mapping[str, tuple[str, str]]) -> None:
        """Validate; ``from_env`` maps a setting read from the environment to (variable, text)."""

        def label(name: str) -> str:
            source = from_env.get(name)
            return f"{source[0]} ({name})" if source else name

        for name, (kind, expected, check) in _RULES.items():
            value = getattr(self, name)
            if not (_has_kind(kind, value) and check(value)):
                # Show what the user wrote: the variable's text rather than the parsed value.
                shown = from_env[name][1] if name in from_env else value
                shown = redact_dsn(shown) if kind == "dsn" else shown
                raise ConfigurationError(f"{label(name)}: expected {expected}, got {shown!r}")
        if self.max_buffer_rows < self.max_batch_rows:
            raise ConfigurationError(
                f"{label('max_buffer_rows')}: expected an integer >= max_batch_rows "
                f"({self.max_batch_rows}), got {self.max_buffer_rows!r}"
            )
        if self.retry_initial_backoff > self.retry_max_backoff:
            raise ConfigurationError(
                f"{label('retry_initial_backoff')}: expected a number of seconds <= "
                f"retry_max_backoff ({self.retry_max_backoff}), "
                f"got {self.retry_initial_backoff!r}"
            )


# --- rules -----------------------------------------------------------------------------------

_URI_DSN = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)
_KEYVALUE_DSN = re.compile(r"\s*[A-Za-z_]+\s*=")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

_POSITIVE_SECONDS = "a number of seconds > 0"
_NON_NEGATIVE_SECONDS = "a number of seconds >= 0"


def _positive(value: Any) -> bool:
    return bool(value > 0)


def _non_negative(value: Any) -> bool:
    return bool(value >= 0)


def _valid_dsn(value: Any) -> bool:
    return value is None or bool(_URI_DSN.match(value) or _KEYVALUE_DSN.match(value))


def _always(value: Any) -> bool:
    return True


def _valid_redact(value: Any) -> bool:
    try:
        parse_redact(value)
    except ValueError:
        return False
    return True


def _valid_capture(value: Any) -> bool:
    try:
        parse_capture(value)
    except ValueError:
        return False
    return True


def _valid_prices(value: Any) -> bool:
    if value is None:
        return True
    from tracewriter._cost import CostCalculator  # noqa: PLC0415 - only when prices are set

    try:
        CostCalculator(prices=value, use_genai_prices=False)
    except (ConfigurationError, TypeError, AttributeError):
        return False
    return True


# name -> (kind, what it expects, check once the kind is right); in field order.
_RULES: Final[dict[str, tuple[_Kind, str, Callable[[Any], bool]]]] = {
    "dsn": (
        "dsn",
        "None, a postgresql:// (or postgres://) URI or a libpq key=value string",
        _valid_dsn,
    ),
    "flush_interval": ("float", _POSITIVE_SECONDS, _positive),
    "max_batch_rows": ("int", "an integer >= 1", _positive),
    "max_buffer_rows": ("int", "an integer >= 1", _positive),
    "pool_size": ("int", "an integer >= 1 (2 or more recommended)", _positive),
    "open_row_grace": ("float", _NON_NEGATIVE_SECONDS, _non_negative),
    "thread_mode": ("bool", "a boolean (1/0, true/false, yes/no, on/off)", _always),
    "pgbouncer": ("bool", "a boolean (1/0, true/false, yes/no, on/off)", _always),
    "connect_timeout": ("float", _POSITIVE_SECONDS, _positive),
    "command_timeout": ("float", _POSITIVE_SECONDS, _positive),
    "retry_initial_backoff": ("float", _POSITIVE_SECONDS, _positive),
    "retry_max_backoff": ("float", _POSITIVE_SECONDS, _positive),
    "close_timeout": ("float", _NON_NEGATIVE_SECONDS, _non_negative),
    "atexit_timeout": ("float", _NON_NEGATIVE_SECONDS, _non_negative),
    "partition_check_interval": ("float", _POSITIVE_SECONDS, _positive),
    "provider_name": ("str", "a non-empty string", lambda v: bool(v.strip())),
    "copy_yield_rows": ("int", "an integer >= 1", _positive),
    "dead_letter_max_chars": ("int", "an integer >= 1", _positive),
    "redact": (
        "redact",
        "default, all, none, a comma list of email, card, api_key, bearer, jwt, "
        "or a callable / compiled patterns",
        _valid_redact,
    ),
    "capture_content": ("str", "one of full, preview, none", _valid_capture),
    "sample_rate": ("float", "a number from 0 to 1", lambda v: 0.0 <= v <= 1.0),
    "sample_follow_parent": ("bool", "a boolean (1/0, true/false, yes/no, on/off)", _always),
    "price_calls": ("bool", "a boolean (1/0, true/false, yes/no, on/off)", _always),
    "prices": (
        "prices",
        'None or {"model": {"input": USD per M tokens, "output": ..., "cached_input": ..., '
        '"reasoning": ...}} (JSON in the environment)',
        _valid_prices,
    ),
}


def _has_kind(kind: _Kind, value: Any) -> bool:
    if kind == "float":
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dsn":
        return value is None or isinstance(value, str)
    if kind == "redact":
        return True  # the check says what it accepts
    if kind == "prices":
        return value is None or isinstance(value, Mapping)
    return isinstance(value, str)


def _parse(kind: _Kind, raw: str, label: str, expected: str) -> Any:
    text = raw.strip()
    try:
        if kind == "float":
            return float(text)
        if kind == "int":
            return int(text)
    except ValueError:
        raise ConfigurationError(f"{label}: expected {expected}, got {raw!r}") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(f"{label}: expected {expected}, got {raw!r}")
    if kind == "dsn":
        return raw.strip()
    if kind == "prices":
        try:
            return json.loads(text)
        except ValueError:
            raise ConfigurationError(f"{label}: expected {expected}, got {raw!r}") from None
    return text


# --- redaction -------------------------------------------------------------------------------

_URI_START = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
# In a URI query the password runs to the next "&name=" (an unencoded "&" inside it stays
# hidden) or to the end.
_QUERY_PASSWORD = re.compile(
    r"(?<=[?&])password=(.*?)(?=&[A-Za-z_][A-Za-z0-9_]*=|\Z)", re.IGNORECASE | re.DOTALL
)
# libpq key=value: a single-quoted value with backslash escapes (an unterminated quote runs to
# the end), or an unquoted value up to unescaped whitespace (libpq honours "\ " there too).
_KEYVALUE_PASSWORD = re.compile(
    r"(?<![A-Za-z0-9_])password\s*=\s*('(?:\\.|[^\\'])*(?:'|\\?\Z)|(?:\\.|[^\s\\])*\\?)",
    re.IGNORECASE | re.DOTALL,
)
_KV_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _password_spans(dsn: str) -> list[tuple[int, int]]:
    """Return the (start, end) spans of every password in ``dsn``, in order."""
    spans: list[tuple[int, int]] = []
    start = _URI_START.match(dsn)
    if start is None:
        spans.extend(m.span(1) for m in _KEYVALUE_PASSWORD.finditer(dsn))
        return spans
    authority = start.end()
    # The last "@" wins: an unencoded "@", "/" or "?" in the password then stays inside the
    # hidden part (at worst a query containing "@" hides more than the password).
    at = dsn.rfind("@", authority)
    if at != -1:
        colon = dsn.find(":", authority, at)
        if colon != -1:
            spans.append((colon + 1, at))
    query_from = at + 1 if at != -1 else authority
    spans.extend(m.span(1) for m in _QUERY_PASSWORD.finditer(dsn, query_from))
    return spans


def redact_dsn(dsn: str | None) -> str | None:
    """Return ``dsn`` with every password replaced by ``***``; None stays None.

    Handles the URI form (``postgresql://user:secret@host/db`` and ``?password=secret``) and
    the libpq ``key=value`` form (``password=secret``, ``password='quoted \\' value'``). Never
    raises: a value that is not a string comes back as ``'<not a DSN string>'``.
    """
    if dsn is None:
        return None
    if not isinstance(dsn, str):
        return "<not a DSN string>"
    try:
        out: list[str] = []
        pos = 0
        for begin, end in _password_spans(dsn):
            out.append(dsn[pos:begin])
            out.append(_MASK)
            pos = end
        out.append(dsn[pos:])
        return "".join(out)
    except Exception:  # pragma: no cover - a bug here must not leak the DSN
        return "<unparseable DSN>"


def _passwords(dsn: str) -> set[str]:
    """Return the passwords in ``dsn`` as written and as a driver would show them."""
    found: set[str] = set()
    for begin, end in _password_spans(dsn):
        raw = dsn[begin:end]
        if raw.startswith("'"):
            raw = raw[1:-1] if len(raw) > 1 and raw.endswith("'") else raw[1:]
        found.update((raw, unquote(raw), _KV_ESCAPE.sub(r"\1", raw)))
    found.discard("")
    return found


def redact_text(text: str, dsn: str | None) -> str:
    """Return ``text`` with ``dsn`` and its password replaced by their redacted forms.

    For exception messages from drivers, which can quote the DSN or the password. The password
    is removed as written in the DSN and as decoded (percent-encoding, libpq quoting). Never
    raises: if ``text`` is not a string or something goes wrong, a placeholder comes back.
    """
    if not isinstance(text, str):
        return "<redacted: not a string>"
    if not dsn or not isinstance(dsn, str):
        return text
    try:
        redacted = redact_dsn(dsn)
        if redacted is not None and redacted != dsn:
            text = text.replace(dsn, redacted)
        # Longest first, so a password that contains another candidate is removed whole.
        for secret in sorted(_passwords(dsn), key=len, reverse=True):
            text = text.replace(secret, _MASK)
        return text
    except Exception:  # pragma: no cover - a bug here must not leak the password
        return "<redacted: message may contain a password>"
