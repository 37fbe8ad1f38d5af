"""Compile the row path with mypyc: ``python native_build.py --inplace | --clean``.

``--inplace`` builds the extensions of ``tracewriter._native.MODULES`` beside their sources (what
``make test NATIVE=1`` and ``make bench`` run; nothing to do when every extension is newer than
every source of the package, unless ``--force``); ``--clean`` removes them again, so the sources
run as Python (what ``make test`` and ``make demo`` start with: a stale extension would hide an
edit to its ``.py``). ``hatch_build.py`` calls :func:`compile_into` when it builds a wheel.

Needs mypy (which carries mypyc), setuptools and a C compiler; it imports them only when it
compiles, so ``--clean`` runs anywhere.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent
# mypyc puts the code the compiled modules share in one top-level extension named after this.
GROUP = "tracewriter"


@functools.cache
def _native() -> ModuleType:
    """tracewriter/_native.py, loaded on its own (the package unimported), once a process."""
    spec = spec_from_file_location("_tracewriter_native", ROOT / "tracewriter" / "_native.py")
    assert spec is not None and spec.loader is not None
    native = module_from_spec(spec)
    spec.loader.exec_module(native)
    return native


def modules() -> tuple[str, ...]:
    """The compiled modules' names, as tracewriter/_native.py lists them."""
    return tuple(_native().MODULES)


def sources() -> list[str]:
    """The modules' source paths, relative to the root (mypyc names modules from them)."""
    path_of = _native().path_of
    return [path_of(name) for name in modules()]


def compile_into(out_dir: Path, build_dir: Path) -> list[Path]:
    """Compile into ``out_dir`` (laid out like the root); returns the extension files made.

    Raises whatever stops it (mypy missing, no compiler, a type error mypyc refuses).
    """
    from mypyc.build import mypycify  # noqa: PLC0415
    from setuptools import Distribution  # noqa: PLC0415

    before = Path.cwd()
    os.chdir(ROOT)  # mypyc derives module names from paths relative to here
    try:
        extensions = mypycify(
            # The sources' own annotations decide the compiled code, not the project's lint
            # settings, and a wheel's isolated build has none of the runtime dependencies
            # installed: whatever they provide is typed Any (called through the C API).
            ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent", *sources()],
            opt_level="3",
            group_name=GROUP,
            target_dir=str(build_dir / "c"),
        )
        # A bare Distribution reads no pyproject.toml: the extensions are all it builds.
        dist = Distribution({"name": "tracewriter-native", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(out_dir)  # type: ignore[attr-defined]
        command.build_temp = str(build_dir / "temp")  # type: ignore[attr-defined]
        command.ensure_finalized()
        command.run()
        return [Path(out_dir, command.get_ext_filename(ext.name)) for ext in extensions]
    finally:
        os.chdir(before)


def built_in_place() -> list[Path]:
    """Extension files of the compiled modules (and their shared part) found in the tree."""
    path_of = _native().path_of
    found = []
    for name in (*modules(), f"{GROUP}__mypyc"):
        found.extend(p for s in EXTENSION_SUFFIXES if (p := ROOT / path_of(name, s)).exists())
    return found


def up_to_date() -> bool:
    """Whether every extension is in the tree and newer than everything it was built from.

    That is every module of the package, not only the compiled ones: mypyc reads the modules
    they import and copies their ``Final`` constants (``_schema``'s table names, say) into the
    compiled code, so an edit there makes the extensions stale too.
    """
    built = built_in_place()
    if len(built) != len(modules()) + 1:
        return False
    inputs = [*(ROOT / "tracewriter").rglob("*.py"), Path(__file__).resolve()]
    return min(p.stat().st_mtime for p in built) > max(p.stat().st_mtime for p in inputs)


def inplace() -> list[Path]:
    clean()
    with tempfile.TemporaryDirectory(prefix="tracewriter-native-") as tmp:
        made = compile_into(Path(tmp, "out"), Path(tmp, "build"))
        placed = []
        for path in made:
            target = ROOT / path.relative_to(Path(tmp, "out"))
            shutil.copy2(path, target)
            placed.append(target)
    return placed


def clean() -> list[Path]:
    removed = built_in_place()
    for path in removed:
        path.unlink()
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python native_build.py", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--inplace", action="store_true", help="compile beside the sources")
    mode.add_argument("--clean", action="store_true", help="remove what --inplace made")
    parser.add_argument(
        "--optional",
        action="store_true",
        help="with --inplace: when compiling fails, say why and leave the sources as Python",
    )
    parser.add_argument(
        "--force", action="store_true", help="with --inplace: compile even when up to date"
    )
    args = parser.parse_args(argv)
    if args.clean:
        for path in clean():
            print(f"removed {path.relative_to(ROOT)}")
        return 0
    if not args.force and up_to_date():
        print("native_build: the compiled row path is up to date")
        return 0
    try:
        placed = inplace()
    except (Exception, SystemExit) as exc:  # mypyc exits on what it refuses
        if not args.optional:
            raise
        print(f"native_build: not compiled, running as Python ({exc!r})", file=sys.stderr)
        return 0
    print(f"compiled {len(placed)} extensions: " + ", ".join(p.name for p in placed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
