"""The policy module alone: redactors, markers, content capture and the sampling decision."""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracewriter import _schema as schema
from tracewriter._context import TraceContext
from tracewriter._policy import (
    ALL_KINDS,
    DEFAULT_KINDS,
    FAILED_MARKER,
    Policy,
    Redactor,
    is_sampled,
    parse_redact,
)
from tracewriter._records import (
    DETAIL,
    ERROR_MESSAGE,
    METADATA,
    Event,
    EventKind,
    build,
    event_metadata,
    metadata_text,
    snapshot_metadata,
)

# One planted secret per built-in kind, and the marker that must replace it.
SECRETS: dict[str, list[str]] = {
    "email": ["jane.doe+billing@example.co.uk", "ops@corp-mail.io"],
    "card": ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"],
    "api_key": [
        "sk-proj-Ab3dEfGh1jKlMn0pQrStUvWxYz0123456789",
        "sk-Zy9xWv8uTs7rQp6oNm5lKj4iHg3fEd2c",
        "AKIAIOSFODNN7EXAMPLE",
    ],
    "bearer": ["Bearer abc123DEF456ghi789.jkl-mno_pqr~stu+vw/xyz=="],
    "jwt": [
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    ],
}
MARKERS = {kind: f"[{kind}]" for kind in SECRETS}
ALL_SECRETS = [(kind, s) for kind, values in SECRETS.items() for s in values]


def event(**kw: Any) -> tuple[Any, ...]:
    fields: dict[str, Any] = dict(
        kind=EventKind.SPAN,
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_003_000_000,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        name="llm.call",
        span_type="llm",
        status="ok",
        duration_ms=3.0,
        error_type=None,
        error_message=None,
        user_id="u1",
        session_id="s1",
        kb_id="kb1",
        metadata=None,
        detail=("gpt-x", "openai", 10, 5, None, None),
    )
    fields.update(kw)
    return Event(**fields).flat()


@pytest.mark.parametrize(("kind", "secret"), ALL_SECRETS)
def test_each_builtin_kind_is_replaced_by_its_marker_only(kind: str, secret: str) -> None:
    """A secret of each kind becomes exactly its kind's marker, the text around it intact."""
    redactor = Policy(redact="all").redactor
    assert redactor.text("content", f"see {secret} now") == f"see {MARKERS[kind]} now"


@pytest.mark.parametrize(("kind", "secret"), ALL_SECRETS)
def test_a_kind_not_enabled_is_left_alone(kind: str, secret: str) -> None:
    """With every other kind enabled, a secret of the missing kind stays as it was."""
    others = ",".join(k for k in ALL_KINDS if k != kind)
    text = f"x {secret} y"
    out = Policy(redact=others).redactor.text("content", text)
    assert MARKERS[kind] not in out


def test_card_numbers_failing_luhn_are_kept() -> None:
    """Digit runs that fail the Luhn check (order numbers, phone-like ids) are not cards."""
    redactor = Policy(redact="card").redactor
    for text in ("4111 1111 1111 1112", "order 1234567890123", "call 00441234567890"):
        assert redactor.text("content", text) == text


def test_default_redacts_credentials_but_not_emails_or_cards() -> None:
    """The default set is the credential kinds; e-mail addresses and cards are opt-in."""
    assert parse_redact(None).kinds == DEFAULT_KINDS == parse_redact("default").kinds
    redactor = Policy().redactor
    text = f"{SECRETS['email'][0]} {SECRETS['card'][0]} {SECRETS['api_key'][0]}"
    assert redactor.text("c", text) == f"{SECRETS['email'][0]} {SECRETS['card'][0]} [api_key]"


def test_bearer_with_an_api_key_becomes_one_bearer_marker() -> None:
    """A bearer header carrying an OpenAI key is one [bearer] marker with nothing left over."""
    out = Policy(redact="all").redactor.text("h", "Authorization: Bearer sk-abcdefghijklmnop123456")
    assert out == "Authorization: [bearer]"


def test_user_patterns_and_callable_run_after_the_builtins() -> None:
    """Extra patterns give [redacted]; the callable sees the field name and redacted text."""
    seen: list[tuple[str, str]] = []

    def mine(field: str, text: str) -> str:
        seen.append((field, text))
        return text.replace("ACME-42", "[customer]")

    policy = Policy(redact=["default", re.compile(r"\+?\d{3}-\d{3}-\d{4}"), mine])
    out = policy.redactor.text("content", "sk-abcdefghijklmnopqrstu 555-123-4567 ACME-42")
    assert out == "[api_key] [redacted] [customer]"
    assert seen == [("content", "[api_key] [redacted] ACME-42")]


def test_a_raising_redactor_replaces_the_field_and_is_counted() -> None:
    """A callable that raises turns the field into the failure marker; the event survives."""

    def broken(field: str, text: str) -> str:
        if "boom" in text:
            raise RuntimeError(text)
        return text

    policy = Policy(redact=broken)
    prepared = policy.prepare(
        event(error_message="boom sk-secret", metadata=snapshot_metadata({"a": ["ok", "boom"]}))
    )
    assert prepared[ERROR_MESSAGE] == FAILED_MARKER
    assert event_metadata(prepared[METADATA]) == {"a": ["ok", FAILED_MARKER]}
    assert policy.redaction_failures == 2
    build(prepared)  # still a valid event


def test_metadata_is_redacted_at_any_depth_keys_included() -> None:
    """Every string in metadata (values and keys, nested in dicts and lists) is redacted."""
    policy = Policy(redact="all")
    secret = SECRETS["jwt"][0]
    deep: Any = {"leaf": secret}
    for i in range(30):
        deep = {f"level{i}": [deep, SECRETS["email"][0]]}
    deep[SECRETS["email"][1]] = SECRETS["card"][0]
    prepared = policy.prepare(event(metadata=snapshot_metadata(deep)))
    text = metadata_text(prepared[METADATA])
    assert text is not None
    for _, value in ALL_SECRETS:
        assert value not in text
    assert "[jwt]" in text and "[email]" in text and "[card]" in text
    assert json.loads(text)["[email]"] == "[card]"


def test_metadata_without_triggers_is_not_reencoded() -> None:
    """Metadata with nothing to redact is passed through as the very same text."""
    meta = snapshot_metadata({"temperature": 0.2, "tags": ["a", "b"]})
    assert Policy(redact="all").prepare(event(metadata=meta))[METADATA] is meta


def test_metadata_snapshot_that_orjson_refused_is_redacted() -> None:
    """A metadata dict kept as a copy (too large an int for orjson) is encoded and redacted."""
    meta = snapshot_metadata({"big": 2**70, "who": SECRETS["email"][0]})
    assert isinstance(meta, dict)
    out = Policy(redact="email").prepare(event(metadata=meta))[METADATA]
    _, row = build(event(metadata=out))
    assert json.loads(row[-1]) == {"big": 2**70, "who": "[email]"}


def chat(content: object, metadata: object = None) -> tuple[Any, ...]:
    return event(kind=EventKind.CHAT, metadata=metadata, detail=("user", content, 7))


def test_chat_content_is_redacted_before_the_preview_is_cut() -> None:
    """Both content and preview of the built row carry the marker, never the secret."""
    text = "x" * 494 + " " + SECRETS["api_key"][0]
    _, row = build(Policy().prepare(chat(text)))
    content, preview = row[schema.CHAT_COLUMNS.index("content")], row[-4]
    assert SECRETS["api_key"][0][:5] not in content + preview
    assert content.endswith("[api_key]")


def test_capture_preview_keeps_500_characters() -> None:
    """capture_content=preview stores the first 500 characters as content and preview."""
    _, row = build(Policy(redact="none", capture_content="preview").prepare(chat("a" * 2000)))
    assert row[schema.CHAT_COLUMNS.index("content")] == "a" * 500


def test_capture_none_keeps_length_and_sha256_in_metadata() -> None:
    """capture_content=none stores no text, and content_length/content_sha256 in metadata."""
    text = "hello " + SECRETS["email"][0]
    policy = Policy(redact="email", capture_content="none")
    prepared = policy.prepare(chat(text, snapshot_metadata({"lang": "en"})))
    _, row = build(prepared)
    assert row[schema.CHAT_COLUMNS.index("content")] == ""
    stored = "hello [email]"  # what would have been stored: hashed after redaction
    assert json.loads(row[-1]) == {
        "lang": "en",
        "content_length": len(stored),
        "content_sha256": hashlib.sha256(stored.encode()).hexdigest(),
    }
    assert prepared[DETAIL + 2] == 7


def test_nothing_configured_returns_the_event_itself() -> None:
    """redact=none and full capture leave events untouched (the writer skips the call)."""
    policy = Policy(redact="none")
    assert not policy.changes_events
    e = event(error_message=SECRETS["api_key"][0])
    assert policy.prepare(e) is e


def test_unreadable_events_are_returned_unchanged() -> None:
    """prepare never raises, even for an event that is not a tuple of the right size."""
    policy = Policy(redact="all")
    for junk in ((), ("chat",), None, 5):
        assert policy.prepare(junk) is junk  # type: ignore[arg-type]


@given(st.text(max_size=200), st.sampled_from(ALL_SECRETS), st.text(max_size=200))
def test_no_secret_survives_whatever_surrounds_it(
    before: str, planted: tuple[str, str], after: str
) -> None:
    """A planted secret between arbitrary text never survives redaction with every kind on."""
    _, secret = planted
    out = Policy(redact="all").redactor.text("content", f"{before} {secret} {after}")
    assert secret not in out


# --- sampling ---------------------------------------------------------------------------------


def seeded_trace_ids(n: int, seed: int = 14) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def test_sample_rate_keeps_its_fraction_of_traces() -> None:
    """At 0.1, 20,000 seeded random trace ids keep 10 % ± 1 %."""
    kept = sum(is_sampled(t, 0.1) for t in seeded_trace_ids(20_000))
    assert 1800 <= kept <= 2200


def test_decision_reads_only_the_low_56_bits() -> None:
    """Two ids with the same low 56 bits decide the same; the threshold is (1 - rate)·2^56."""
    low = "80000000000000"  # R = 2^55: kept at 0.5 (R >= 2^55), not just below it
    assert is_sampled("ffffffffffffffff00" + low, 0.5)
    assert is_sampled("000000000000000000" + low, 0.5)
    assert not is_sampled("ffffffffffffffffff7fffffffffffff", 0.5)


def test_higher_rates_keep_a_superset() -> None:
    """Every trace kept at a lower rate is kept at a higher one (consistent sampling)."""
    ids = seeded_trace_ids(2000)
    assert {t for t in ids if is_sampled(t, 0.2)} <= {t for t in ids if is_sampled(t, 0.7)}
    assert not any(is_sampled(t, 0.0) for t in ids) and all(is_sampled(t, 1.0) for t in ids)


def test_policy_decision_matches_the_pure_function() -> None:
    """Policy.trace_sampled agrees with is_sampled for every id and rate."""
    ids = seeded_trace_ids(500)
    for rate in (0.0, 0.01, 0.3, 0.999, 1.0):
        policy = Policy(sample_rate=rate)
        assert [policy.trace_sampled(t) for t in ids] == [is_sampled(t, rate) for t in ids]


def unsampled_id(rate: float) -> str:
    return next(t for t in seeded_trace_ids(1000) if not is_sampled(t, rate))


def test_apply_drops_unsampled_events_but_keeps_errors_and_their_trace_end() -> None:
    """apply() returns None for an unsampled trace's events, except errors and the trace end
    of a trace that had one."""
    policy = Policy(sample_rate=0.1)
    tid = unsampled_id(0.1)
    assert policy.apply(event(trace_id=tid)) is None
    assert policy.apply(event(kind=EventKind.TRACE_END, trace_id=tid)) is None
    failed = policy.apply(
        event(trace_id=tid, status="error", error_message="sk-abcdefghijklmnopq1")
    )
    assert failed is not None and failed[ERROR_MESSAGE] == "[api_key]"
    assert policy.apply(event(kind=EventKind.TRACE_END, trace_id=tid)) is not None


def test_keeps_row_keeps_error_rows_and_rescued_trace_rows() -> None:
    """An unsampled trace's ok span is dropped, its error span and then its trace row kept."""
    policy = Policy(sample_rate=0.1)
    tid = unsampled_id(0.1)
    _, ok_span = build(event(trace_id=tid))
    _, bad_span = build(event(trace_id=tid, span_id="00000000000000aa", status="error"))
    _, trace_row = build(event(kind=EventKind.TRACE_END, trace_id=tid, detail=None))
    assert not policy.keeps_row(schema.TRACES, trace_row)
    policy.note_errors(schema.SPANS, [ok_span, bad_span])
    assert not policy.keeps_row(schema.SPANS, ok_span)
    assert policy.keeps_row(schema.SPANS, bad_span)
    assert policy.keeps_row(schema.TRACES, trace_row)


def test_a_trace_continued_from_a_traceparent_follows_its_sampled_flag() -> None:
    """Flag 00 drops a trace the ratio would keep and 01 keeps one it would drop, unless
    sample_follow_parent is off."""
    ids = seeded_trace_ids(1000, seed=99)
    kept_by_ratio = next(t for t in ids if is_sampled(t, 0.5))
    dropped_by_ratio = next(t for t in ids if not is_sampled(t, 0.5))
    assert TraceContext.from_traceparent(f"00-{kept_by_ratio}-b7ad6b7169203331-00") is not None
    assert TraceContext.from_traceparent(f"00-{dropped_by_ratio}-b7ad6b7169203331-01")
    following, ignoring = (
        Policy(sample_rate=0.5),
        Policy(sample_rate=0.5, sample_follow_parent=False),
    )
    assert not following.trace_sampled(kept_by_ratio)
    assert following.trace_sampled(dropped_by_ratio)
    assert ignoring.trace_sampled(kept_by_ratio)
    assert not ignoring.trace_sampled(dropped_by_ratio)
    assert Policy(sample_rate=1.0).trace_sampled(kept_by_ratio)  # sampling off: all written


def test_a_card_after_other_digit_groups_is_still_found() -> None:
    """A card number preceded or followed by other digit groups is redacted, the rest kept."""
    redactor = Policy(redact="card").redactor
    assert redactor.text("c", "ref 0042 4111 1111 1111 1111") == "ref 0042 [card]"
    assert redactor.text("c", "5555-5555-5555-4444 12") == "[card] 12"
    assert redactor.text("c", "00004111111111111111") == "00004111111111111111"  # one number


def test_redacted_metadata_keeps_integers_past_64_bits_exact() -> None:
    """Metadata holding a huge integer and backslash text reads back exact, redacted or not."""
    meta = {"": ["\\u0000", 2**80], "k": SECRETS["api_key"][0]}
    plain = {"": ["\\u0000", 2**80]}
    for source, want in ((meta, {**plain, "k": "[api_key]"}), (plain, plain)):
        prepared = Policy().prepare(event(metadata=snapshot_metadata(source)))
        _, row = build(prepared)
        assert json.loads(row[-1]) == want


def test_an_unexpected_failure_blanks_every_text_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """If preparing an event fails outright, its texts become markers rather than pass through."""
    policy = Policy(redact="all")

    def broken(self: Redactor, metadata: object) -> object:
        raise MemoryError  # a fault no input can provoke: the policy's own code failing

    monkeypatch.setattr(Redactor, "metadata", broken)
    prepared = policy.prepare(chat(SECRETS["email"][0], snapshot_metadata({"a": 1})))
    assert prepared[DETAIL + 1] == FAILED_MARKER
    assert event_metadata(prepared[METADATA]) == {"metadata": FAILED_MARKER}
    assert policy.redaction_failures == 1
