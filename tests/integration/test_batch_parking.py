"""A batch the router refuses until its rate limit's next window parks in the store (its wait PARK_LEAVE_S or
more), giving up its running place: it gives up its lease too, so that any edge, not only the one that parked it,
resumes it at its time."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmrouter.errors import ServiceError
from llmrouter.redis_url import RedisUrl
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.store import PREFIX, batch_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, sdk_edge, served_router
from tests.integration.test_batches import small_file
from tests.integration.test_provider_batches import finished
from tests.redis_servers import RedisServer
from tests.waiting import eventually


class RateLimitingRouter(router_pb2_grpc.RouterServicer):
    """Refuses every line as the router's rate limit does, until retry_after_s from now; no provider batches."""

    def __init__(self, retry_after_s: str) -> None:
        self.retry_after_s = retry_after_s

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> None:
        metadata = {"retry_after_s": self.retry_after_s}
        error = ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "rate limited", metadata)
        await context.abort(error.code, error.message, error.trailing_metadata())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--save", "").start()
    yield server
    server.stop()


async def submit(client: AsyncOpenAI, lines: int) -> str:
    uploaded = await client.files.create(file=("b.jsonl", small_file("parked", lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


async def lease_given_up(db: redis.Redis, batch_id: str) -> bool:
    return not await db.exists(f"{PREFIX}lease:{batch_id}")


async def parked_until(db: redis.Redis, batch_id: str, timeout_s: float = 15) -> float:
    deadline = time.monotonic() + timeout_s
    while (until := await db.hget(batch_key(batch_id), "parked_until")) is None:
        assert time.monotonic() < deadline, "the batch did not park"
        await asyncio.sleep(0.05)
    return float(until)


async def test_a_parked_batch_gives_up_its_lease_and_another_edge_resumes_it_at_its_time(
    chain: Chain, store: RedisServer
) -> None:
    """Parked on a rate limit until 6 s from now, then its edge stops: another edge runs it at its time, not when
    the lease it kept would have lapsed (up to 30 s on)."""
    tenant, key = f"parking-{secrets.token_hex(4)}", f"sk-parking-{secrets.token_urlsafe(12)}"
    db = redis.from_url(store.url)
    try:
        async with served_router(RateLimitingRouter(retry_after_s="6")) as limited:
            settings = EdgeSettings(
                port=free_port(),
                router_addr=limited,
                api_keys=SecretStr(key_line(tenant, key)),
                batch_redis_url=RedisUrl(store.url),
            )
            async with sdk_edge(settings, key) as client:
                batch_id = await submit(client, 1)
                until = await parked_until(db, batch_id)
                # The run has ended: no edge runs it, any may, at its time.
                await eventually(lambda: lease_given_up(db, batch_id), "the parked run's lease is given up")
        other = settings.model_copy(update={"port": free_port(), "router_addr": chain.router_addr})
        async with sdk_edge(other, key) as client:
            done = await finished(client, batch_id, timeout_s=until - time.time() + 5)
        assert done.status == "completed" and done.request_counts.completed == 1
    finally:
        await db.aclose()
