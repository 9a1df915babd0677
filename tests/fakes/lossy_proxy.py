"""A TCP proxy on loopback in front of a real server (Redis here), for the failures no server makes on its own:
a reply lost after the command ran (`lose_next_reply`: the server applied it, its caller only sees the connection
drop; and with `then_down`, the server out of reach from then on, until `come_back`), a reply held back after the
command ran (`hold_next_reply`, or `hold_reply_to` a command of given bytes: its caller waits, and may leave
meanwhile) and a command lost before it ran
(`swallow_next`: never forwarded, the connection dropped a little later), and a command held back before it ran
(`hold_command`: a slow server, as its caller sees it, until released), and every command held so (`go_silent`: a
server stopped, its connections open, answering nothing until `come_back`). Runs in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self
from urllib.parse import urlsplit


class HeldReply:
    """A reply held back (LossyProxy.hold_next_reply): `arrived` once the server has sent it, forwarded once
    `released` is set."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()


class HeldCommand:
    """A command held back (LossyProxy.hold_command): `arrived` once its caller has sent it, forwarded once `released`
    is set; `abandoned` if its caller closed the connection first (gave up waiting), the command then never run."""

    def __init__(self, part: bytes) -> None:
        self.part = part
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.abandoned = asyncio.Event()


class LossyProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._lose_reply = False
        self._down_after_loss = False
        self.down = False  # every connection is dropped at once
        self._speaking = asyncio.Event()  # cleared: every command waits, unsent (go_silent)
        self._speaking.set()
        self._swallow_s: float | None = None
        self.swallowed = asyncio.Event()  # set once swallow_next has taken its command
        self._hold_reply: HeldReply | None = None
        self._hold_command: HeldCommand | None = None
        self._hold_reply_to: tuple[bytes, HeldReply] | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def url_for(self, redis_url: str) -> str:
        """The database of `redis_url` (the proxied server's), reached through the proxy."""
        return self.url(int(urlsplit(redis_url).path.strip("/") or 0))

    def lose_next_reply(self, then_down: bool = False) -> None:
        """The next reply from the server is not forwarded: the client's connection is dropped instead; with
        `then_down`, so is every connection from then on (a client that resends finds the server out of reach)."""
        self._lose_reply, self._down_after_loss = True, then_down

    def go_down(self) -> None:
        """Every connection, open or new, is dropped at once until come_back()."""
        self.down = True
        for pipe in list(self._pipes):
            pipe.cancel()

    def go_silent(self) -> None:
        """Every command, on a connection open or new, waits in the proxy unsent until come_back(): a server that
        stopped (SIGSTOP), its connections open, as its callers see it."""
        self._speaking.clear()

    def come_back(self) -> None:
        self.down = False
        self._speaking.set()

    def hold_next_reply(self) -> HeldReply:
        """The next reply from the server waits in the proxy until it is released: the server has run the command,
        its caller has not heard back. Dropped if the caller's connection closes first."""
        self._hold_reply = HeldReply()
        return self._hold_reply

    def hold_reply_to(self, part: bytes) -> HeldReply:
        """The reply to the next command holding the bytes `part` waits in the proxy until it is released: the server
        has run that command, its caller has not heard back (on a connection it closes first, never)."""
        held = HeldReply()
        self._hold_reply_to = (part, held)
        return held

    def hold_command(self, part: bytes) -> HeldCommand:
        """The next command holding the bytes `part` waits in the proxy, unsent to the server, until it is released."""
        self._hold_command = HeldCommand(part)
        return self._hold_command

    def swallow_next(self, seconds: float) -> None:
        """The next request from a client is not forwarded; its connection is dropped `seconds` later."""
        self._swallow_s = seconds
        self.swallowed.clear()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _connect(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        if self.down:
            client_out.transport.abort()
            return
        server_in, server_out = await asyncio.open_connection(*self.target)
        replies_held: list[HeldReply] = []  # this connection's, in the order of their commands (hold_reply_to)
        pipes = [
            asyncio.ensure_future(self._requests(client_in, server_out, replies_held)),
            asyncio.ensure_future(self._replies(server_in, client_out, replies_held)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)
            for writer in (client_out, server_out):
                writer.transport.abort()

    async def _requests(
        self, source: asyncio.StreamReader, server: asyncio.StreamWriter, replies_held: list[HeldReply]
    ) -> None:
        while data := await source.read(65536):
            if self._hold_reply_to is not None and self._hold_reply_to[0] in data:
                replies_held.append(self._hold_reply_to[1])  # its caller awaits its reply: the next on this connection
                self._hold_reply_to = None
            if self._swallow_s is not None:
                seconds, self._swallow_s = self._swallow_s, None
                self.swallowed.set()
                await asyncio.sleep(seconds)
                return  # the connection drops; the command never reached the server
            if self._hold_command is not None and self._hold_command.part in data:
                held, self._hold_command = self._hold_command, None
                if not await self._released(held, source):
                    return  # the connection drops; the command never reached the server
            await self._speaking.wait()
            server.write(data)
            with contextlib.suppress(ConnectionError):
                await server.drain()

    @staticmethod
    async def _released(held: HeldCommand, source: asyncio.StreamReader) -> bool:
        """Whether `held` was released before its caller closed its connection (which sends nothing else meanwhile: it
        awaits the command's reply)."""
        held.arrived.set()
        closing = asyncio.ensure_future(source.read(1))
        releasing = asyncio.ensure_future(held.released.wait())
        await asyncio.wait((closing, releasing), return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        releasing.cancel()
        # Its cancelled read ended before the connection's next read begins (else that one is refused: two readers).
        await asyncio.gather(closing, releasing, return_exceptions=True)
        if not releasing.done() or releasing.cancelled():
            held.abandoned.set()
            return False
        return True

    async def _replies(
        self, source: asyncio.StreamReader, client: asyncio.StreamWriter, replies_held: list[HeldReply]
    ) -> None:
        while data := await source.read(65536):
            if replies_held:
                held = replies_held.pop(0)
                held.arrived.set()
                await held.released.wait()
            if self._hold_reply is not None:
                held, self._hold_reply = self._hold_reply, None
                held.arrived.set()
                await held.released.wait()
            if self._lose_reply:
                self._lose_reply = False
                if self._down_after_loss:
                    self.go_down()
                return  # the connection drops; the server has run the command
            client.write(data)
            with contextlib.suppress(ConnectionError):
                await client.drain()
