"""Unit tests of tracewriter._ids: trace/span id format and uniqueness, UUIDv7 row ids."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracewriter import _ids
from tracewriter._ids import (
    new_span_id,
    new_trace_id,
    random_uuid7_hex,
    row_id_for_valid_span,
    uuid7_hex,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MS_2026 = 1_767_225_600_123


def test_trace_id_format() -> None:
    """A trace id is 32 lowercase hex characters and not all zeros."""
    for _ in range(1000):
        tid = new_trace_id()
        assert HEX32.fullmatch(tid)
        assert tid != "0" * 32


def test_span_id_format() -> None:
    """A span id is 16 lowercase hex characters and not all zeros."""
    for _ in range(1000):
        sid = new_span_id()
        assert HEX16.fullmatch(sid)
        assert sid != "0" * 16


def test_ids_keep_leading_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small random values are zero-padded to the full id width."""
    monkeypatch.setattr(_ids, "getrandbits", lambda bits: 0xAB)
    assert new_trace_id() == "0" * 30 + "ab"
    assert new_span_id() == "0" * 14 + "ab"


def test_all_zero_random_value_gives_a_valid_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator that returns zero still yields non-zero ids."""
    monkeypatch.setattr(_ids, "getrandbits", lambda bits: 0)
    assert new_trace_id() == "0" * 31 + "1"
    assert new_span_id() == "0" * 15 + "1"


def test_ids_unique_over_100k() -> None:
    """100,000 trace ids and 100,000 span ids contain no duplicates."""
    n = 100_000
    assert len({new_trace_id() for _ in range(n)}) == n
    assert len({new_span_id() for _ in range(n)}) == n


def test_ids_differ_between_parent_and_forked_child() -> None:
    """A forked child draws different ids from its parent (random reseeds after fork)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            ids = " ".join([new_trace_id(), new_span_id(), new_span_id()])
            os.write(write_end, ids.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        chunks = []
        while chunk := os.read(read_end, 1024):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_ids = b"".join(chunks).decode().split()
    parent_ids = [new_trace_id(), new_span_id(), new_span_id()]
    assert len(child_ids) == 3
    assert set(child_ids).isdisjoint(parent_ids)


@given(
    unix_ms=st.integers(min_value=0, max_value=(1 << 48) - 1),
    rand74=st.integers(min_value=0, max_value=(1 << 74) - 1),
)
def test_uuid7_layout(unix_ms: int, rand74: int) -> None:
    """uuid7_hex lays out ms, version 7, rand_a, variant 0b10 and rand_b as RFC 9562 says."""
    text = uuid7_hex(unix_ms, rand74)
    assert CANONICAL_UUID.fullmatch(text)
    parsed = uuid.UUID(text)
    assert str(parsed) == text
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    value = parsed.int
    assert value >> 80 == unix_ms
    assert (value >> 64) & 0xFFF == rand74 >> 62
    assert value & ((1 << 62) - 1) == rand74 & ((1 << 62) - 1)


def test_uuid7_masks_out_of_range_inputs() -> None:
    """Inputs wider than their fields cannot corrupt the version or variant bits."""
    text = uuid7_hex((1 << 60) + 5, (1 << 90) - 1)
    parsed = uuid.UUID(text)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 5


def test_uuid7_orders_by_time() -> None:
    """Row ids of later milliseconds sort after earlier ones, as text and as UUIDs."""
    earlier = random_uuid7_hex(MS_2026)
    later = random_uuid7_hex(MS_2026 + 1)
    assert earlier < later
    assert uuid.UUID(earlier) < uuid.UUID(later)


def test_random_uuid7_embeds_ms_and_varies() -> None:
    """random_uuid7_hex embeds the given ms and differs from call to call."""
    ids = {random_uuid7_hex(MS_2026) for _ in range(10_000)}
    assert len(ids) == 10_000
    for text in list(ids)[:100]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.int >> 80 == MS_2026


def test_row_id_for_span_is_deterministic() -> None:
    """The same span start computes the same row id, and it is a valid UUIDv7 with the ms."""
    trace_id, span_id = new_trace_id(), new_span_id()
    first = row_id_for_valid_span(MS_2026, trace_id, span_id)
    assert first == row_id_for_valid_span(MS_2026, trace_id, span_id)
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert parsed.int >> 80 == MS_2026


def test_row_id_for_span_embeds_span_and_trace_bits() -> None:
    """The 74 bits are the span id's 64 bits and the trace id's low 10 bits, around the
    version and variant digits."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"  # low 10 bits: 0b11_0011_0110 (…736)
    span_id = "00f067aa0ba902b7"
    row_id = row_id_for_valid_span(MS_2026, trace_id, span_id)
    assert row_id == f"{MS_2026:012x}7" + "00f" + "b" + "067aa0ba902b7" + "36"
    parsed = uuid.UUID(row_id)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == MS_2026


def test_row_id_for_span_distinct_for_different_spans() -> None:
    """Different spans of one trace, in the same millisecond, get different row ids."""
    trace_id = new_trace_id()
    span_ids = {new_span_id() for _ in range(10_000)}
    row_ids = {row_id_for_valid_span(MS_2026, trace_id, s) for s in span_ids}
    assert len(row_ids) == len(span_ids)


def test_row_id_for_span_distinguishes_traces_by_low_bits() -> None:
    """The same span id in two traces differing in the low 10 bits gets two row ids."""
    span_id = new_span_id()
    a = row_id_for_valid_span(MS_2026, "1" * 29 + "000", span_id)
    b = row_id_for_valid_span(MS_2026, "1" * 29 + "001", span_id)
    assert a != b


def test_seeding_the_global_random_does_not_repeat_ids() -> None:
    """An application calling random.seed(n) twice still gets fresh trace and span ids."""
    import random

    random.seed(1234)
    first = (new_trace_id(), new_span_id(), random_uuid7_hex(MS_2026))
    random.seed(1234)
    second = (new_trace_id(), new_span_id(), random_uuid7_hex(MS_2026))
    assert all(a != b for a, b in zip(first, second, strict=True))
