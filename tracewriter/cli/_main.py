"""The ``tracewriter`` command line: one subcommand per function, dispatched by :func:`main`.

Owns argument parsing, where the DSN comes from (``--dsn`` or ``TRACEWRITER_DSN``; the demo
falls back to an embedded server), the output format and turning expected errors into a
one-line message and an exit status. The work itself belongs to the modules each subcommand
calls: :mod:`tracewriter.migrate`, :mod:`tracewriter.cli._query` (read-back as plain data),
:mod:`tracewriter.cli._render` and :mod:`tracewriter.cli._demo`. What prints with ``rich``
(``demo``, and ``trace`` / ``stats`` as text) is imported when it runs, so ``migrate`` and
``--format json`` work without the ``cli`` extra.

To add a subcommand, write ``_add_<name>(subparsers)`` that registers its parser with
``set_defaults(handler=_cmd_<name>)``, write ``_cmd_<name>(args) -> int``, and list the adder in
``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import math
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg
import structlog

from tracewriter import migrate, retention
from tracewriter._config import redact_dsn
from tracewriter._context import is_valid_trace_id
from tracewriter._logging import is_tracewriter_event
from tracewriter.cli import _query
from tracewriter.errors import ConfigurationError, TracewriterError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main"]

DSN_ENV: Final = "TRACEWRITER_DSN"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_Subparsers = Any  # argparse's _SubParsersAction is private
_Data = TypeVar("_Data", _query.TraceTree, _query.Stats)


class _UsageError(Exception):
    """The command line is incomplete in a way argparse cannot check (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TracewriterError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracewriter",
        description="Write LLM/RAG traces into PostgreSQL: schema migrations and tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _add_dsn_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        help=f"PostgreSQL DSN (URI or key=value); default: ${DSN_ENV}",
    )


def _require_dsn(args: argparse.Namespace) -> str:
    """The DSN from ``--dsn``, else from ``TRACEWRITER_DSN``; a _UsageError if neither is set."""
    dsn: str | None = args.dsn or os.environ.get(DSN_ENV)
    if not dsn:
        raise _UsageError(f"no database given: pass --dsn or set {DSN_ENV}")
    return dsn


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- migrate -------------------------------------------------------------------------------------


def _add_migrate(subparsers: _Subparsers) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate",
        help="apply, roll back or list the schema migrations",
        description=(
            "Apply the pending schema migrations (default), roll them back, or list them. "
            "Safe to run repeatedly: applied migrations are skipped."
        ),
    )
    _add_dsn_option(parser)
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--rollback", action="store_true", help="roll back applied migrations, newest first"
    )
    action.add_argument("--list", action="store_true", help="list migrations and their state")
    parser.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="with --rollback: roll back only the last N migrations (default: all)",
    )
    parser.set_defaults(handler=_cmd_migrate)


def _cmd_migrate(args: argparse.Namespace) -> int:
    if args.count is not None and not args.rollback:
        raise _UsageError("--count only applies to --rollback")
    dsn = _require_dsn(args)

    def notice(message: str) -> None:
        print(f"notice: {message}", file=sys.stderr)

    if args.list:
        for migration_id, applied in migrate.list_migrations(dsn):
            print(f"[{'x' if applied else ' '}] {migration_id}")
        return EXIT_OK
    if args.rollback:
        done = migrate.rollback_migrations(dsn, count=args.count, on_notice=notice)
        verb, nothing = "rolled back", "nothing to roll back"
    else:
        done = migrate.apply_migrations(dsn, on_notice=notice)
        verb, nothing = "applied", "nothing to apply: the database is up to date"
    for migration_id in done:
        print(f"{verb} {migration_id}")
    if not done:
        print(nothing)
    return EXIT_OK


# --- demo ----------------------------------------------------------------------------------------


def _add_demo(subparsers: _Subparsers) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="simulate a RAG service writing traces, then read them back",
        description=(
            "Simulate a RAG chat service (concurrent users, retrieval spans, LLM calls, chat "
            "messages, a document-ingestion stream, a few failures) writing through tracewriter, "
            "then print a summary, one trace as a waterfall and per-model latency. With no "
            f"--dsn and no ${DSN_ENV} it starts an embedded PostgreSQL; the database is "
            "migrated first unless --no-migrate."
        ),
    )
    _add_dsn_option(parser)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="simulate for this long (default: 20 s unless --requests is given)",
    )
    size.add_argument(
        "--requests", type=_positive_int, metavar="N", help="simulate N chat requests"
    )
    parser.add_argument(
        "--users", type=_positive_int, default=50, metavar="N",
        help="concurrent simulated users (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--docs-per-second", type=_non_negative_float, default=20.0, metavar="R",
        help="documents entering the ingestion pipeline per second (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--failure-rate", type=_fraction, default=0.03, metavar="F",
        help="share of requests and documents that fail somewhere (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="seed of the simulation's random choices")
    parser.add_argument(
        "--time-scale", type=_time_scale, default=0.02, metavar="F",
        help="wall-clock share of the simulated LLM and document latencies (default: "
        "%(default)s, i.e. 50x faster; 1 = real time); recorded durations stay realistic",
    )  # fmt: skip
    parser.add_argument(
        "--thread-mode", action="store_true",
        help="run the writer on its own thread instead of the demo's event loop",
    )  # fmt: skip
    parser.add_argument(
        "--no-live", action="store_true",
        help="no live progress panel (plain output, for logs and CI)",
    )  # fmt: skip
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations first"
    )
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console  # noqa: PLC0415 - the cli extra, needed only here

        from tracewriter.cli import _demo  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise _missing_extra(exc) from None
    console = Console()
    options: dict[str, Any] = {
        "duration": args.duration,
        "requests": args.requests,
        "users": args.users,
        "docs_per_second": args.docs_per_second,
        "failure_rate": args.failure_rate,
        "seed": args.seed,
        "time_scale": args.time_scale,
        "thread_mode": args.thread_mode,
        "live": not args.no_live and console.is_terminal,
        "console": console,
    }
    dsn: str | None = args.dsn or os.environ.get(DSN_ENV)
    with _library_logs_to_stderr(), contextlib.ExitStack() as stack:
        if dsn is None:
            dsn = _start_embedded(stack, console)
        else:
            console.print(f"database: {redact_dsn(dsn)}", style="dim", soft_wrap=True)
        if not args.no_migrate:
            _migrate_for_demo(dsn, console)
        report = asyncio.run(_demo.run_demo(dsn, **options))
    if report.ok:
        return EXIT_OK
    print(
        f"tracewriter demo: {report.dropped} events dropped, {report.dead_lettered} "
        f"dead-lettered, ledger {'balances' if report.stats.balances() else 'does not balance'}, "
        f"rows {'match' if report.rows_match else 'do not match'}",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _start_embedded(stack: contextlib.ExitStack, console: Console) -> str:
    """Start an embedded PostgreSQL that lives as long as ``stack``; return its DSN."""
    from tracewriter.embedded import EmbeddedPostgres  # noqa: PLC0415 - an optional extra

    console.print(
        f"no --dsn and no ${DSN_ENV}: starting an embedded PostgreSQL…", style="dim", soft_wrap=True
    )
    server = EmbeddedPostgres()
    stack.callback(server.cleanup)
    try:
        server.start()
    except Exception as exc:  # whatever the server package raises, say so in one line
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigurationError(f"cannot start the embedded PostgreSQL: {text}") from None
    console.print(
        f"database: {redact_dsn(server.dsn)} (deleted on exit)", style="dim", soft_wrap=True
    )
    return server.dsn


def _migrate_for_demo(dsn: str, console: Console) -> None:
    def notice(message: str) -> None:
        print(f"notice: {message}", file=sys.stderr)

    applied = migrate.apply_migrations(dsn, on_notice=notice)
    if applied:
        console.print(f"migrated: applied {', '.join(applied)}", style="dim")


# --- trace ---------------------------------------------------------------------------------------


def _trace_id(text: str) -> str:
    value = text.strip().lower()
    if not is_valid_trace_id(value):
        raise argparse.ArgumentTypeError(
            f"not a trace id: {text!r} (expected 32 hex digits, not all zero)"
        )
    return value


def _add_trace(subparsers: _Subparsers) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "trace",
        help="show one trace from the database as a waterfall tree",
        description=(
            "Read one trace back from the database and print it as a tree of its spans, LLM "
            "calls, messages and document events, each with a bar on the trace's time axis, "
            "its start offset and its duration."
        ),
    )
    parser.add_argument("trace_id", type=_trace_id, metavar="TRACE_ID", help="32 hex digits")
    _add_dsn_option(parser)
    _add_format_option(parser)
    parser.set_defaults(handler=_cmd_trace)


def _cmd_trace(args: argparse.Namespace) -> int:
    def render(tree: _query.TraceTree, console: Console) -> Any:
        from tracewriter.cli._render import render_trace  # noqa: PLC0415 - needs rich

        return render_trace(tree, width=console.width)

    return _read_and_print(
        args, lambda conn, dsn: _query.fetch_trace(conn, dsn, args.trace_id), render
    )


# --- stats ---------------------------------------------------------------------------------------

_SPAN_OF_TIME: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _since(text: str) -> _dt.timedelta:
    """``90s``, ``15m``, ``1h``, ``1h30m``, ``7d``, ``2w`` as a timedelta."""
    value = text.strip().lower()
    parts = _SPAN_OF_TIME.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise argparse.ArgumentTypeError(
            f"not a span of time: {text!r} (expected e.g. 90s, 15m, 1h, 1h30m, 7d)"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not 0 < seconds <= 3650 * 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0s and at most 3650d, got {text!r}")
    return _dt.timedelta(seconds=seconds)


def _add_stats(subparsers: _Subparsers) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "stats",
        help="per-model and per-span-type calls, tokens and latency percentiles",
        description=(
            "Print LLM calls by model (calls, errors, tokens, latency avg/p50/p95/p99/max), "
            "spans by type and document stages, read from metrics_aggregates."
        ),
    )
    parser.add_argument(
        "--since", type=_since, default=_dt.timedelta(hours=1), metavar="SPAN",
        help="how far back: 90s, 15m, 1h, 1h30m, 7d... (default: 1h)",
    )  # fmt: skip
    _add_dsn_option(parser)
    _add_format_option(parser)
    parser.set_defaults(handler=_cmd_stats)


def _cmd_stats(args: argparse.Namespace) -> int:
    def render(stats: _query.Stats, console: Console) -> Any:
        from tracewriter.cli._render import render_stats  # noqa: PLC0415 - needs rich

        return render_stats(stats)

    return _read_and_print(
        args, lambda conn, dsn: _query.fetch_stats(conn, dsn, args.since), render
    )


# --- retention -----------------------------------------------------------------------------------


def _add_retention(subparsers: _Subparsers) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "retention",
        help="drop whole partitions or chunks older than an age (run as the owner)",
        description=(
            "Drop every partition (native PostgreSQL) or chunk (TimescaleDB) of the "
            "time-partitioned tables whose time range ended more than --older-than ago, and say "
            "what was dropped. Nothing is deleted row by row. Run it as the owner of the "
            "observability tables (the writer role may not drop anything), e.g. daily from cron."
        ),
    )
    parser.add_argument(
        "--older-than", type=_since, required=True, metavar="AGE",
        help="drop what ended longer ago than this: 30d, 12w, 36h...",
    )  # fmt: skip
    parser.add_argument(
        "--table", choices=retention.TIME_PARTITIONED_TABLES,
        help="only this table (default: every time-partitioned table)",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be dropped; drop nothing"
    )
    _add_dsn_option(parser)
    parser.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="text: one line per partition and a summary; json: the same as one JSON document",
    )  # fmt: skip
    parser.set_defaults(handler=_cmd_retention)


def _cmd_retention(args: argparse.Namespace) -> int:
    dsn = _require_dsn(args)
    mode, dropped = retention.drop_old_partitions(
        dsn, args.older_than, table=args.table, dry_run=args.dry_run
    )
    what = "chunks" if mode == "timescaledb" else "partitions"
    if args.format == "json":
        document = {
            "partitioning": mode,
            "dry_run": args.dry_run,
            "older_than_seconds": args.older_than.total_seconds(),
            "dropped": [
                {"table": d.table, "partition": d.partition, "range_end": d.range_end.isoformat()}
                for d in dropped
            ],
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    verb = "would drop" if args.dry_run else "dropped"
    for d in dropped:
        print(f"{verb} {d.partition} ({d.table}, ended {d.range_end.isoformat()})")
    print(f"{verb} {len(dropped)} {what} older than {args.older_than} ({mode} partitioning)")
    return EXIT_OK


# --- what the read commands share ----------------------------------------------------------------


def _add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: tables and trees for a terminal (needs the cli extra); json: the same data "
        "as one JSON document on stdout, for scripts (default: %(default)s)",
    )


def _read_and_print(
    args: argparse.Namespace,
    fetch: Callable[[asyncpg.Connection, str], Awaitable[_Data]],
    render: Callable[[_Data, Console], Any],
) -> int:
    """Connect, ``fetch(conn, dsn)``, close; print the data as JSON or ``render(data, console)``."""
    dsn = _require_dsn(args)
    console: Console | None = None
    if args.format == "text":  # before connecting: a missing extra is said before any wait
        try:
            from rich.console import Console  # noqa: PLC0415 - the cli extra, needed only here

            import tracewriter.cli._render  # noqa: F401, PLC0415
        except ModuleNotFoundError as exc:
            raise _missing_extra(exc) from None
        console = Console()

    async def read() -> _Data:
        conn = await _query.connect(dsn)
        try:
            return await fetch(conn, dsn)
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

    with _library_logs_to_stderr():
        data = asyncio.run(read())
    if console is None:
        print(json.dumps(_query.as_json(data), indent=2, ensure_ascii=False))
    else:
        console.print(render(data, console))
    return EXIT_OK


# --- shared --------------------------------------------------------------------------------------


def _float_where(rule: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a finite number for which ``ok`` holds, else "must be <rule>"."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


_positive_float: Final = _float_where("more than 0", lambda v: v > 0)
_non_negative_float: Final = _float_where("at least 0", lambda v: v >= 0)
_fraction: Final = _float_where("between 0 and 1", lambda v: 0 <= v <= 1)
_time_scale: Final = _float_where("more than 0 and at most 1", lambda v: 0 < v <= 1)


def _missing_extra(exc: ModuleNotFoundError) -> TracewriterError:
    if (exc.name or "").partition(".")[0] != "rich":
        raise exc
    return ConfigurationError(
        "this command needs the 'cli' extra (rich): pip install 'tracewriter[cli]'"
    )


_LOG_LEVELS: Final = {"debug": 10, "info": 20, "msg": 20, "warning": 30, "warn": 30, "error": 40}


class _Route(threading.local):
    # Set by the first processor for the event being processed, read by the last: structlog
    # runs the chain for one event synchronously on one thread.
    ours = False


_ROUTE: Final = _Route()


def _route_library_logs(logger: Any, method_name: str, event_dict: Any) -> Any:
    ours = is_tracewriter_event(event_dict)
    if ours and _LOG_LEVELS.get(method_name, 50) < _LOG_LEVELS["warning"]:
        raise structlog.DropEvent
    _ROUTE.ours = ours
    return event_dict


def _library_lines_to_stderr(logger: Any, method_name: str, rendered: Any) -> Any:
    if not _ROUTE.ours:
        return rendered
    _ROUTE.ours = False
    # sys.stderr looked up now, so that rich's live display can take the line in.
    print(rendered if isinstance(rendered, str) else repr(rendered), file=sys.stderr)
    raise structlog.DropEvent


@contextlib.contextmanager
def _library_logs_to_stderr() -> Iterator[None]:
    """While inside: tracewriter's own log lines below warning are dropped and the rest go to
    stderr (stdout carries the command's output, JSON included); other structlog events are
    left as they are.

    Like ``structlog.testing.capture_logs``, this edits the configured processor list in place
    (and restores it), so whatever configuration the process has is back afterwards.
    """
    processors = structlog.get_config()["processors"]
    processors.insert(0, _route_library_logs)
    processors.append(_library_lines_to_stderr)
    try:
        yield
    finally:
        for added in (_route_library_logs, _library_lines_to_stderr):
            with contextlib.suppress(ValueError):
                processors.remove(added)


_SUBCOMMANDS: Final[tuple[Callable[[_Subparsers], None], ...]] = (
    _add_migrate,
    _add_demo,
    _add_trace,
    _add_retention,
    _add_stats,
)
