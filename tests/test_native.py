"""The compiled row path: all of it or none of it, the one ``make test`` asked for, and the
same rows as its source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracewriter
from tracewriter import _ids
from tracewriter import _records as records
from tracewriter._native import MODULES, compiled_modules, is_native, path_of
from tracewriter._records import EventKind

REPO = Path(__file__).resolve().parents[1]


def test_the_row_path_runs_the_way_make_test_asked() -> None:
    """`make test NATIVE=1` runs the suite on the compiled modules, `make test` on the sources:
    a pass that meant to test one and tested the other would prove nothing."""
    expected = os.environ.get("TRACEWRITER_EXPECT_NATIVE")
    found = compiled_modules()
    if expected == "1":
        assert found == MODULES
        assert is_native()
    elif expected == "0":
        assert found == ()
        assert not is_native()
    else:  # a bare pytest: whatever is in the tree, but never half of it
        assert found in ((), MODULES)
    assert tracewriter.native() is is_native()


def test_native_build_reads_the_module_list_without_importing_the_package() -> None:
    """The wheel's build hook runs before any dependency is installed: it must not import
    tracewriter to learn what to compile."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import native_build, sys; print(','.join(native_build.modules()));"
            "print('tracewriter' in sys.modules)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [",".join(MODULES), "False"]


def test_an_inplace_build_is_redone_only_when_a_source_is_newer(tmp_path: Path) -> None:
    """make test NATIVE=1 and make bench skip compiling when nothing changed; an edited source
    (or a missing extension) makes the build run again, so a stale one never hides an edit —
    an edit to a module the compiled ones only import included, as mypyc copies its constants."""
    (tmp_path / "tracewriter").mkdir()
    shutil.copy2(REPO / "native_build.py", tmp_path)
    for name in (*MODULES, "tracewriter._native", "tracewriter._schema"):
        shutil.copy2(REPO / path_of(name), tmp_path / "tracewriter")
    suffix = EXTENSION_SUFFIXES[0]
    built = [tmp_path / path_of(name, suffix) for name in (*MODULES, "tracewriter__mypyc")]

    def up_to_date() -> bool:
        out = subprocess.run(
            [sys.executable, "-c", "import native_build; print(native_build.up_to_date())"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() == "True"

    assert not up_to_date()  # nothing built
    later = time.time() + 10
    for path in built:
        path.write_bytes(b"")
        os.utime(path, (later, later))
    assert up_to_date()
    records_py = tmp_path / "tracewriter" / "_records.py"
    os.utime(records_py, (later + 5, later + 5))  # an edit after the build
    assert not up_to_date()
    os.utime(records_py, (later - 5, later - 5))
    assert up_to_date()
    schema_py = tmp_path / "tracewriter" / "_schema.py"  # imported, not compiled
    os.utime(schema_py, (later + 5, later + 5))
    assert not up_to_date()
    os.utime(schema_py, (later - 5, later - 5))
    built[0].unlink()
    assert not up_to_date()


# --- the compiled builders against the same source run as Python -------------------------

HEX32 = st.text("0123456789abcdef", min_size=32, max_size=32)
HEX16 = st.text("0123456789abcdef", min_size=16, max_size=16)
ODD = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.just("a\x00b"),
    st.just("\ud800"),
)
LABEL = st.one_of(st.none(), st.sampled_from(["gpt-4o", "openai", "chain", "ok", "error"]), ODD)
NS = st.one_of(st.integers(0, 4_200_000_000 * 10**9), st.integers(), st.floats(), st.none(), ODD)
TOKENS = st.one_of(st.none(), st.integers(0, 100_000), st.integers(), st.floats(), ODD)
METADATA = st.one_of(
    st.none(),
    st.just('{"k": [1, 2, 3]}'),
    st.just('{"a": "\\\\u0000"}'),
    st.just('{"a": "back\\\\slash"}'),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ODD,
)
# Every field of an event (see tracewriter._records.Event), usual values and hostile ones.
EVENTS = st.tuples(
    st.sampled_from(
        [
            EventKind.TRACE_START,
            EventKind.TRACE_END,
            EventKind.SPAN_START,
            EventKind.SPAN_END,
            EventKind.SPAN,
            EventKind.CHAT,
            EventKind.DOCUMENT,
            "bogus",
        ]
    ),
    NS,
    NS,
    st.one_of(HEX32, ODD),
    st.one_of(HEX16, ODD),
    st.one_of(st.none(), HEX16, ODD),
    *[LABEL] * 3,  # name, span_type, status
    st.one_of(st.floats(), st.integers(), st.none(), ODD),  # duration_ms
    *[LABEL] * 5,  # error_type, error_message, user_id, session_id, kb_id
    METADATA,
    LABEL,  # model / role / document_id
    LABEL,  # provider / content / event_type
    TOKENS,
    TOKENS,
    TOKENS,
    TOKENS,
)


def interpreted_records() -> ModuleType:
    """tracewriter/_records.py loaded from its source under another name, beside the compiled
    module of the same source."""
    source = Path(tracewriter.__file__).with_name("_records.py")
    spec = spec_from_file_location("tracewriter._records_as_python", source)
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcome(build: Any, *event: Any) -> tuple[Any, ...]:
    try:
        return ("row", repr(build(*event)))
    except Exception as exc:
        return ("refused", type(exc).__name__, str(exc))


@pytest.mark.skipif(
    "tracewriter._records" not in compiled_modules(),
    reason="compares the compiled builders with the source; runs in make test NATIVE=1 (CI pass 5)",
)
def test_compiled_builders_make_the_rows_the_source_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event — ordinary, malformed or hostile — becomes the same row, or is refused the
    same way, whether the builders run compiled or as the Python they are compiled from."""
    python = interpreted_records()
    assert python.build is not records.build
    # Chat and document rows get random UUIDv7 ids; both builders draw them from one _ids.
    monkeypatch.setattr(_ids, "getrandbits", lambda bits: 0x2A)

    @settings(max_examples=400, deadline=None)
    @given(EVENTS, EVENTS)
    def same(event: tuple[Any, ...], other: tuple[Any, ...]) -> None:
        assert outcome(records.build, event) == outcome(python.build, event)
        assert outcome(records.coalesce, event, other) == outcome(python.coalesce, event, other)

    same()
