"""Apply, roll back and list the schema migrations (the yoyo ``.sql`` files in ``sql/``).

Owns finding the migration files — ``tracewriter/sql`` in an installed wheel, the repository's
``sql/`` in a source checkout — and connecting yoyo to a DSN through psycopg 3. It knows nothing
of the writer. Every failure to reach or change the database raises
:class:`~tracewriter.errors.ConfigurationError` naming the DSN with its password redacted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict
from yoyo import read_migrations
from yoyo.backends import PostgresqlPsycopgBackend
from yoyo.connections import DatabaseURI
from yoyo.exceptions import LockTimeout
from yoyo.migrations import default_migration_table

from tracewriter._config import redact_dsn, redact_text
from tracewriter._logging import get_logger
from tracewriter.errors import ConfigurationError

__all__ = [
    "NoticeHandler",
    "apply_migrations",
    "list_migrations",
    "migrations_dir",
    "rollback_migrations",
]

NoticeHandler = Callable[[str], None]
"""Receives the notices the migrations raise for the operator (e.g. roles not created)."""

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
# An installed wheel carries the files inside the package; a source checkout has them at the top.
_SEARCH_PATH: Final = (_PACKAGE_DIR / "sql", _PACKAGE_DIR.parent / "sql")
_MIGRATION_GLOB: Final = "[0-9][0-9][0-9][0-9].*.sql"
# Only the migrations' own notices are for the operator; the rest is "already exists, skipping".
_NOTICE_PREFIX: Final = "tracewriter: "
# Without it libpq waits on an unreachable host for as long as the operating system lets it.
_DEFAULT_CONNECT_TIMEOUT: Final = "10"
# yoyo-style URIs name the driver (postgresql+psycopg://); libpq knows only the plain scheme.
_DRIVER_IN_SCHEME: Final = re.compile(r"^(postgres(?:ql)?)\+\w+://", re.IGNORECASE)

_log = get_logger("migrate")


def migrations_dir() -> Path:
    """The directory the migration files are read from."""
    for candidate in _SEARCH_PATH:
        if any(candidate.glob(_MIGRATION_GLOB)):
            return candidate
    searched = ", ".join(str(p) for p in _SEARCH_PATH)
    raise ConfigurationError(f"no migration files found (searched {searched})")


def migration_ids() -> list[str]:
    """The id of every migration this version ships, oldest first (no database needed)."""
    return [m.id for m in _read()]


def apply_migrations(dsn: str, *, on_notice: NoticeHandler | None = None) -> list[str]:
    """Apply every pending migration to the database at ``dsn``; return the ids applied.

    Each migration runs in its own transaction, so a failure leaves the earlier ones applied.
    Applied migrations are skipped: a second call returns ``[]``. ``on_notice`` receives the
    migrations' notices (for instance that the roles could not be created); by default they are
    logged as ``migration_notice``.
    """
    migrations = _read()
    done: list[str] = []
    with _session(dsn, on_notice, lock=True) as backend:
        with _translated(dsn, "cannot read the applied migrations of"):
            pending = list(backend.to_apply(migrations))
        for migration in pending:
            with _translated(dsn, f"migration {migration.id} failed on"):
                backend.apply_one(migration)
            done.append(migration.id)
    return done


def rollback_migrations(
    dsn: str, *, count: int | None = None, on_notice: NoticeHandler | None = None
) -> list[str]:
    """Roll back the last ``count`` applied migrations (all when None); return their ids.

    Migrations are rolled back newest first, each in its own transaction.
    """
    if count is not None and count < 0:
        raise ConfigurationError(f"count: must be >= 0 (or None for all), got {count}")
    migrations = _read()
    done: list[str] = []
    with _session(dsn, on_notice, lock=True) as backend:
        with _translated(dsn, "cannot read the applied migrations of"):
            applied = list(backend.to_rollback(migrations))
        for migration in applied if count is None else applied[:count]:
            with _translated(dsn, f"rollback of {migration.id} failed on"):
                backend.rollback_one(migration)
            done.append(migration.id)
    return done


def list_migrations(dsn: str) -> list[tuple[str, bool]]:
    """Every known migration, oldest first, with whether it is applied to ``dsn``."""
    migrations = _read()
    with (
        _session(dsn, None, lock=False) as backend,
        _translated(dsn, "cannot read the applied migrations of"),
    ):
        applied = set(backend.get_applied_migration_hashes())
    return [(m.id, m.hash in applied) for m in migrations]


# --- yoyo plumbing -----------------------------------------------------------------------------


class _Backend(PostgresqlPsycopgBackend):  # type: ignore[misc]  # yoyo ships no type hints
    """yoyo's psycopg 3 backend, passing the migrations' notices on."""

    def __init__(self, uri: Any, migration_table: str, on_notice: NoticeHandler) -> None:
        # Set before yoyo's __init__, which connects.
        self._on_notice = on_notice
        super().__init__(uri, migration_table)

    def connect(self, dburi: Any) -> Any:
        connection = super().connect(dburi)
        connection.add_notice_handler(self._notice)
        return connection

    def copy(self) -> _Backend:
        # yoyo runs each migration on a copy; the copy must keep the notice handler.
        return type(self)(self.uri, self.migration_table, self._on_notice)

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        message = diagnostic.message_primary or ""
        if message.startswith(_NOTICE_PREFIX):
            self._on_notice(message.removeprefix(_NOTICE_PREFIX))


def _log_notice(message: str) -> None:
    _log.warning("migration_notice", message=message)


def _read() -> Any:
    return read_migrations(str(migrations_dir()))


def _database_uri(dsn: str) -> Any:
    """yoyo's connection description for ``dsn``, parsed by libpq rather than by yoyo.

    yoyo's own URI parser lower-cases and does not decode host names, so it mangles socket
    directories (``%2Ftmp%2FPg``) and cannot read the ``key=value`` form or multiple hosts;
    libpq's parser reads every form libpq accepts, and yoyo hands the result to
    ``psycopg.connect`` as keyword arguments.
    """
    try:
        params = conninfo_to_dict(_DRIVER_IN_SCHEME.sub(r"\1://", dsn))
    except psycopg.Error as exc:
        raise ConfigurationError(f"invalid DSN {redact_dsn(dsn)}: {_describe(exc, dsn)}") from None
    params.setdefault("connect_timeout", _DEFAULT_CONNECT_TIMEOUT)
    return DatabaseURI(
        scheme="postgresql+psycopg",
        username=None,
        password=None,
        hostname=None,
        port=None,
        database=params.get("dbname"),
        args=params,
    )


@contextmanager
def _session(dsn: str, on_notice: NoticeHandler | None, *, lock: bool) -> Iterator[Any]:
    """A yoyo backend connected to ``dsn``, holding yoyo's migration lock if ``lock``."""
    uri = _database_uri(dsn)
    with _translated(dsn, "cannot connect to"):
        backend = _Backend(uri, default_migration_table, on_notice or _log_notice)
    try:
        with _translated(dsn, "cannot prepare the migration tables of"):
            backend.init_database()
        if not lock:
            yield backend
            return
        with _translated(dsn, "cannot take the migration lock of"), backend.lock():
            yield backend
    finally:
        with suppress(psycopg.Error):
            backend.connection.close()


@contextmanager
def _translated(dsn: str, action: str) -> Iterator[None]:
    """Turn the driver's and yoyo's errors into one-line, redacted ConfigurationErrors."""
    try:
        yield
    except (psycopg.Error, LockTimeout) as exc:
        # Not chained: the driver's exception may carry connection details we do not vet.
        raise ConfigurationError(f"{action} {redact_dsn(dsn)}: {_describe(exc, dsn)}") from None


def _describe(exc: BaseException, dsn: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        text = f"{text} (SQLSTATE {sqlstate})"
    return redact_text(text, dsn)
