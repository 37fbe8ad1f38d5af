"""Hatchling build hook: a wheel carries the row path compiled with mypyc where it can.

A wheel built where mypyc and a C compiler work gets the extensions of
``tracewriter._native.MODULES`` beside their sources and a platform tag; where compiling fails
(no compiler, say) the build says why and makes the pure-Python wheel instead, which works the
same, slower. ``TRACEWRITER_PURE_PYTHON=1`` asks for the pure wheel outright. Editable installs
and the sdist are never compiled: ``make test NATIVE=1`` compiles in place instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._scratch: str | None = None
        if self.target_name != "wheel" or version == "editable":
            return
        if os.environ.get("TRACEWRITER_PURE_PYTHON") == "1":
            self.app.display_info("TRACEWRITER_PURE_PYTHON=1: building a pure-Python wheel")
            return
        spec = spec_from_file_location("native_build", Path(self.root, "native_build.py"))
        assert spec is not None and spec.loader is not None
        native_build = module_from_spec(spec)
        spec.loader.exec_module(native_build)
        self._scratch = tempfile.mkdtemp(prefix="tracewriter-wheel-")
        out = Path(self._scratch, "out")
        try:
            made = native_build.compile_into(out, Path(self._scratch, "build"))
        except (Exception, SystemExit) as exc:  # mypyc exits on what it refuses
            self.app.display_warning(
                f"tracewriter: the row path was not compiled ({exc!r}); "
                "building a pure-Python wheel, which works the same, slower"
            )
            return
        for path in made:
            build_data["force_include"][str(path)] = path.relative_to(out).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
