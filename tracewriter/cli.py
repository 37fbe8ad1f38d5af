"""The ``tracewriter`` command line: one subcommand per function, dispatched by :func:`main`.

Owns argument parsing, where the DSN comes from (``--dsn`` or ``TRACEWRITER_DSN``) and turning
expected errors into a one-line message and an exit status. The work itself belongs to the
library modules each subcommand calls.

To add a subcommand, write ``_add_<name>(subparsers)`` that registers its parser with
``set_defaults(handler=_cmd_<name>)``, write ``_cmd_<name>(args) -> int``, and list the adder in
``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from tracewriter import migrate
from tracewriter.errors import TracewriterError

__all__ = ["main"]

DSN_ENV: Final = "TRACEWRITER_DSN"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_Subparsers = Any  # argparse's _SubParsersAction is private


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


_SUBCOMMANDS: Final[tuple[Callable[[_Subparsers], None], ...]] = (_add_migrate,)


if __name__ == "__main__":
    sys.exit(main())
