"""Upstreams on loopback that write raw HTTP bytes, for what the fakes' well-formed servers never send: an answer
the test spells out byte by byte, or one that stops part-way and keeps its connection open. Stopped with every
connection's task: one still answering would run on into the tests after it, on the session's loop."""

from __future__ import annotations

import asyncio
from typing import Self


class LoopbackUpstream:
    """A server on `host`, port chosen at entry, answering each connection with `_answer` and then closing it; a
    client that goes away part-way is no error."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._answering: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()  # closes the listening socket only: the connections' tasks are stopped here
        for task in self._answering:
            task.cancel()
        await asyncio.gather(*self._answering)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        self._answering.add(this)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._answering.discard(this)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class StallingUpstream(LoopbackUpstream):
    """Sends `wire` (the head of a 200 event stream, and any events) and then nothing more, keeping the connection
    open: a model slow to begin, or a stream still running when its caller leaves or its deadline comes. `asked` is
    set once a request reached it."""

    def __init__(self, wire: bytes) -> None:
        super().__init__()
        self.wire = wire
        self.asked = asyncio.Event()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.asked.set()
        writer.write(self.wire.replace(b"connection: close\r\n", b""))
        await writer.drain()
        await asyncio.sleep(60)
