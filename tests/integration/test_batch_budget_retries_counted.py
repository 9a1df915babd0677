"""A batch whose lines the budget refuses while the holds of requests in flight take its room waits parked and sends
them again under their ids: each call the router refuses for the budget counts against its tenant's requests per
minute (the router routed it: a refusal for the budget is counted as an admission is). Sent again all at once, up to
EDGE_BATCH_CONCURRENCY of them each park, a waiting batch used up its tenant's rate limit, and its realtime requests
were refused as rate limited for as long as the room stayed held."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import redis.asyncio as redis

from services.router.store import Account, AccountKeys, Allowance, Hold, RedisStore, key_id, period_id
from tests.integration.conftest import Chain, keyed_batch_edge, sdk_edge
from tests.integration.test_policy_in_chain import extra_router

USD = 10**12  # pico-dollars
LINES = 16


def batch_file() -> bytes:
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "cheap-model", "messages": [{"role": "user", "content": f"hi {secrets.token_hex(8)}"}]},
        }
        for i in range(LINES)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def test_a_batch_waiting_for_held_room_counts_one_request_a_park_against_its_rate_limit(chain: Chain) -> None:
    limited = await extra_router(chain, rate_limit_rpm=10_000, redis_url=chain.redis_url)
    tenant, key, settings = keyed_batch_edge(
        chain, "held-rate", router_addr=f"127.0.0.1:{limited.port}", batch_concurrency=8
    )
    account = Account(tenant, key_id(key))
    store = RedisStore(chain.redis_url)
    db = redis.from_url(chain.redis_url)
    other = Hold(f"in-flight-{secrets.token_hex(4)}", USD, period_id("day"), "another-router", secrets.token_hex(8))
    try:
        await store.set_limit("tenant", tenant, USD)
        assert (await store.admit(account, Allowance("day"), other)).refused == ""  # holds the whole budget
        began = time.time()
        async with sdk_edge(settings, key) as client:
            uploaded = await client.files.create(file=("many.jsonl", batch_file()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            await asyncio.sleep(9)  # parked and woken five times (0.2, 0.5, 1, 2 and 5 s)
            assert (await client.batches.retrieve(batch.id)).status == "in_progress"
            keys = AccountKeys.of(account)
            windows = {keys.rate(began), keys.rate(time.time())}
            counted = sum([int(await db.get(window) or 0) for window in windows])
            # The first slots' lines, then one line a park (six at most in 9 s) until the router admits one; not every
            # slot's each park (over 40).
            assert 8 <= counted <= 8 + 8, counted
            await client.batches.cancel(batch.id)
    finally:
        await store.undo(account, other)
        await db.aclose()
        await store.close()
        await limited.stop(1)
