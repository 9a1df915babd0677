"""A router that saw an account's requests per minute used up refuses its later requests of that window before routing
them (rate_refused.py). The store counts a request in the window of the moment its router sent the admission; the
refusal's reply may arrive in the next window (a slow store, a call queued behind others). Taken for the window it
arrived in, it refused the account's requests of a window the store had counted none in, for a whole minute. Real
Redis (paused for a moment, as a slow store; a server of the test's own) behind the router's gRPC server on
loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.v1 import router_pb2_grpc
from services.router.store import keys as store_keys
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_decide_rate_limited import Answering, Counting, ask, rate_limited, refusal

WINDOW_S = 4
PAUSE_MS = 1500  # the store's reply to an admission sent just before the window's end arrives in the next one


async def test_a_refusal_answered_in_the_next_window_refuses_nothing_of_it(
    tmp_path: Path, pausable_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_keys, "RATE_WINDOW_S", WINDOW_S)
    pauser = redis.from_url(pausable_redis_url)
    async with (
        store_on(pausable_redis_url) as redis_store,
        served_router(tmp_path, redis_store, Answering(), classifier=Counting(), rate_limit_rpm=1) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        router = router_pb2_grpc.RouterStub(channel)
        while not 0.2 < time.time() % WINDOW_S < 1.0:  # early in a window
            await asyncio.sleep(0.05)
        assert (await router.Complete(ask("busy", model="cheap"), timeout=10)).content == "an answer"
        while time.time() % WINDOW_S < WINDOW_S - 0.4:  # just before its end
            await asyncio.sleep(0.01)
        counted_in = store_keys.rate_window(time.time())
        await pauser.execute_command("CLIENT", "PAUSE", str(PAUSE_MS))
        assert rate_limited(await refusal(router.Complete(ask("busy", model="cheap"), timeout=10)))
        assert store_keys.rate_window(time.time()) == counted_in + 1  # its refusal was answered in the next window
        # The store has counted nothing of this window: the account's request is admitted and served.
        assert (await router.Complete(ask("busy", model="cheap"), timeout=10)).content == "an answer"
    await pauser.aclose()
