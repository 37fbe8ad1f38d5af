"""A TCP proxy between the writer and the run's server, so a test can cut the network for real.

Cutting closes every proxied connection (both directions, mid-statement if need be) and stops
accepting new ones, so the writer sees what a lost network or a vanished server gives it:
resets and refused connections. Unlike stopping a server, it works on any server the run
uses — a shared one, TimescaleDB, a cluster — which a test must not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class Proxy:
    """Forwards 127.0.0.1:<port> to ``host:port`` until :meth:`cut`; :meth:`restore` reopens."""

    def __init__(self, host: str, port: int) -> None:
        # A host that is a directory is libpq's way of naming a Unix socket (the embedded server).
        self._socket = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @classmethod
    def for_dsn(cls, dsn: str) -> Proxy:
        """A proxy to the server of the URI ``dsn`` (TCP, or a ``?host=/dir`` Unix socket)."""
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "127.0.0.1"
        return cls(host, int(query.get("port") or parts.port or 5432))

    def dsn(self, dsn: str) -> str:
        """``dsn`` reaching its server through the proxy, over TCP."""
        parts = urlsplit(dsn)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    async def start(self) -> None:
        """Listen (on a fresh port the first time, the same port after a cut)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Accept connections again, on the same port (nothing to do if it does)."""
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        """Cut, and wait for every forwarding task to finish."""
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            if self._socket is not None:
                server_r, server_w = await asyncio.open_unix_connection(self._socket)
            else:
                server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        pipes = [
            asyncio.create_task(self._pipe(client_r, server_w)),
            asyncio.create_task(self._pipe(server_r, client_w)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_w, server_w):
                writer.transport.abort()
                self._writers.discard(writer)
            self._tasks.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
