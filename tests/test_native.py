"""The compiled row path: all of it or none of it, and the one ``make test`` asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tracewriter
from tracewriter._native import MODULES, compiled_modules, is_native

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
