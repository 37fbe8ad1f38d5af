"""Which modules the build compiles with mypyc, and whether this process runs them compiled.

The row path (ids, sketches, records and their builders, prices, roll-ups, the assembler) is
plain, strictly typed Python that mypyc compiles from the same source into C extensions: a
wheel built where a C compiler is found carries them beside the ``.py`` files, and Python
imports an extension before a source file of the same name. Where there is no compiler (or
``TRACEWRITER_PURE_PYTHON=1`` at build time), and in an editable install, the same modules run
as Python: the pure modules are the fallback, never a different implementation.

This module imports nothing of the library, so the build reads :data:`MODULES` from it.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Final

__all__ = ["MODULES", "compiled_modules", "is_native", "path_of"]

# Synchronous, hot, and free of anything a test replaces at runtime: compiled code binds the
# names it calls, so a module that tests patch (the service, the flusher) stays interpreted.
MODULES: Final = (
    "tracewriter._ids",
    "tracewriter._sketch",
    "tracewriter._cost",
    "tracewriter._records",
    "tracewriter._rollup",
    "tracewriter._assembler",
    "tracewriter._codecs",
)


def path_of(module: str, suffix: str = ".py") -> str:
    """Where ``module`` lives relative to the project root: its source, or with ``suffix``
    (an extension suffix) its compiled extension. The build and its tests share this rule."""
    return module.replace(".", "/") + suffix


def compiled_modules() -> tuple[str, ...]:
    """Those of :data:`MODULES` this process loaded from a compiled extension."""
    found = []
    for name in MODULES:
        where = getattr(importlib.import_module(name), "__file__", None) or ""
        if where.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return tuple(found)


def is_native() -> bool:
    """True when every module of the row path runs compiled."""
    return len(compiled_modules()) == len(MODULES)
