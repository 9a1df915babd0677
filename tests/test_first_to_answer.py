"""The Redis Cluster client's default node (llmrouter/redis_connect.py, first_to_answer): a master whose address takes
connections and never answers (a host cut off) costs the stagger, not its socket timeout. Real Redis, and a listener
that never answers."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from redis.asyncio.cluster import ClusterNode

from llmrouter.redis_connect import first_to_answer

NEVER_S = 30.0  # the silent address's timeouts: far past the test's own limit


async def test_a_master_that_never_answers_is_passed_over_after_the_stagger(redis_url: str) -> None:
    released = asyncio.Event()

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await released.wait()
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    address = urlsplit(redis_url)
    cut_off = ClusterNode(
        "127.0.0.1", listener.sockets[0].getsockname()[1], socket_connect_timeout=NEVER_S, socket_timeout=NEVER_S
    )
    answering = ClusterNode(address.hostname or "127.0.0.1", address.port or 6379, password=address.password)
    try:
        async with asyncio.timeout(NEVER_S / 3):  # not its timeout: the next was asked after the stagger
            assert await first_to_answer([cut_off, answering], stagger_s=0.05) is answering
        assert not cut_off._connections[0].is_connected  # its PING given up, its connection closed
    finally:
        released.set()
        listener.close()
        await listener.wait_closed()
        await asyncio.gather(cut_off.disconnect(), answering.disconnect())
