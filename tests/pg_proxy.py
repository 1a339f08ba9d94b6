"""A TCP proxy in front of PostgreSQL that a test can cut: a database outage for the workers
without stopping the PostgreSQL server other tests and agents share.

While cut, nothing listens on the proxy's port: a new connection is refused (ECONNREFUSED, as
a stopped server or a failover's gap looks to a client) and every open one is closed
mid-stream (as a server that went away). Restored, it listens on the same port again.
"""

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class CuttableProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        query = dict(parse_qsl(parts.query))
        # The embedded server (pgserver) listens on a unix socket named in the URL's query
        # (`?host=/its/folder`, libpq's convention): the proxy reaches it there, and its own
        # URL leaves the query's host out so that clients come to the proxy's TCP port.
        socket_dir = query.pop("host", "")
        self._socket = (
            f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir.startswith("/") else None
        )
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts._replace(query=urlencode(query))
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The upstream URL with the proxy's address in it."""
        parts = self._parts
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and close every open one."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            if self._socket is not None:
                upstream_reader, upstream = await asyncio.open_unix_connection(self._socket)
            else:
                upstream_reader, upstream = await asyncio.open_connection(*self._upstream)
        except OSError:
            client.transport.abort()
            return
        self._open |= {client, upstream}
        await asyncio.gather(
            self._pipe(client_reader, upstream), self._pipe(upstream_reader, client)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._open.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
