"""A TCP proxy on loopback between the server and a real redis-server, that cuts on cue.

Armed with a byte pattern, it forwards everything until a chunk from the client contains the
pattern: that chunk is not forwarded, every connection is closed, and new connections are
closed at once, until :meth:`CuttingProxy.heal`. So a test fails Redis at an exact point of a
request (the journal's ``XADD``, the check-in script), with nothing mocked.
"""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.pattern: bytes | None = None
        self.down = False
        self.cut = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def arm(self, pattern: bytes) -> None:
        self.pattern = pattern
        self.cut.clear()

    def heal(self) -> None:
        self.pattern = None
        self.down = False

    async def close(self) -> None:
        self._drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # the test's loop closing: nothing to report
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while not self.down:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if upstream and self.pattern is not None and self.pattern in chunk:
                    self.down = True
                    self.cut.set()
                    self._drop()
                    return
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()
