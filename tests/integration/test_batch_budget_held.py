"""A batch line refused because the holds of requests in flight take its budget's room (the router's "it may once
they settle", ErrorInfo without `retryable: false`) waits and is sent again, as a rate-limited line is: written as a
final 429, a batch whose own lines in flight held the room lost lines its budget would have paid for. A line its
budget's spend alone can never pay for is still refused for good, at once."""

from __future__ import annotations

import json
import secrets

import redis.asyncio as redis

from services.batches.runner import REFUSED
from services.batches.store import sent_key
from services.router.store import Account, Allowance, Hold, RedisStore, key_id, period_id
from tests.integration.conftest import Chain, keyed_batch_edge, sdk_edge
from tests.integration.test_provider_batches import finished
from tests.waiting import eventually

USD = 10**12  # pico-dollars


def one_line() -> bytes:
    body = {"model": "cheap-model", "messages": [{"role": "user", "content": f"hi {secrets.token_hex(4)}"}]}
    return json.dumps({"custom_id": "only", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


async def test_a_line_refused_for_the_holds_in_flight_waits_for_them_to_settle(chain: Chain) -> None:
    tenant, key, settings = keyed_batch_edge(chain, "held-batch")
    account = Account(tenant, key_id(key))
    store = RedisStore(chain.redis_url)
    batches = redis.from_url(chain.redis_url)  # the edge's batch store: the same Redis
    try:
        await store.set_limit("tenant", tenant, USD)
        # Another request of the tenant in flight holds the whole budget; nothing is spent.
        other = Hold(f"in-flight-{secrets.token_hex(4)}", USD, period_id("day"), "another-router", secrets.token_hex(8))
        assert (await store.admit(account, Allowance("day"), other)).refused == ""
        async with sdk_edge(settings, key) as client:
            uploaded = await client.files.create(file=("one.jsonl", one_line()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )

            async def refused_or_ended() -> bool:
                if await batches.hget(sent_key(batch.id), "0") == REFUSED:
                    return True
                return (await client.batches.retrieve(batch.id)).status != "in_progress"

            await eventually(refused_or_ended, "the line refused, or the batch ended")
            running = await client.batches.retrieve(batch.id)
            assert running.status == "in_progress", running  # not ended with the line failed
            assert await store.undo(account, other)  # the other request ended without cost: the room is back
            done = await finished(client, batch.id)
            assert done.status == "completed" and done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (1, 0), done

            # The budget's spend alone cannot pay for a line: refused for good, the batch ends at once.
            spent, _ = await store.spent(account, period_id("day"))
            assert 0 < spent <= USD
            await store.set_limit("tenant", tenant, spent)
            uploaded = await client.files.create(file=("two.jsonl", one_line()), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = await finished(client, batch.id)
            assert done.request_counts is not None and done.request_counts.failed == 1 and done.error_file_id
            error = json.loads((await client.files.content(done.error_file_id)).text)
            assert error["response"]["status_code"] == 429
            assert error["response"]["body"]["error"]["code"] == "insufficient_quota"
    finally:
        await batches.aclose()
        await store.close()
