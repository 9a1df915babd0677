"""A key taken out of the edge's key file (revoked: leaked, or its tenant gone) stops spending. Its batches, kept in
the batch store edges share, are resumed by whichever edge adopts them: one that no longer serves the key sends none
of their lines (the key's tenant paying for calls nobody may make any more), and leaves them to an edge that serves
it, so that during a rolling change of keys an edge not yet given a new key never ends that key's batches. The tenant,
with a key it still has, sees and cancels them."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as redis
from openai import AsyncOpenAI
from openai.types import Batch
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches.store import PREFIX, sent_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.conftest import ledger_records
from tests.integration.conftest import Chain, free_port, sdk_edge
from tests.integration.test_batches import small_file
from tests.integration.test_provider_batches import finished


async def created_where_no_line_goes_out(chain: Chain, tenant: str, key: str, window_s: int = 86_400) -> Batch:
    """A batch of `key`, created on an edge whose router is away (so none of its lines is sent), then stopped."""
    away = EdgeSettings(
        port=free_port(),
        router_addr=f"127.0.0.1:{free_port()}",
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(chain.redis_url),
        batch_window_s=window_s,
    )
    async with sdk_edge(away, key) as client:
        uploaded = await client.files.create(file=("revoked.jsonl", small_file("revoked", 3)), purpose="batch")
        return await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )


@asynccontextmanager
async def edge_keyed(chain: Chain, tenant: str, key: str) -> AsyncIterator[AsyncOpenAI]:
    """An edge serving `key` alone, its router there, on the same batch store: it adopts what is active at start."""
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(chain.redis_url),
        request_timeout_s=20,
    )
    async with sdk_edge(settings, key) as client:
        yield client


async def charged(db: redis.Redis, tenant: str) -> list[dict[str, Any]]:
    return [r for r in await ledger_records(db) if r["tenant"] == tenant]


async def test_a_revoked_keys_batch_sends_no_more_lines_and_its_tenant_can_cancel_it(chain: Chain) -> None:
    tenant = f"revoked-{secrets.token_hex(4)}"
    old_key, new_key = f"sk-old-{secrets.token_urlsafe(12)}", f"sk-new-{secrets.token_urlsafe(12)}"
    db = redis.from_url(chain.redis_url)
    try:
        batch = await created_where_no_line_goes_out(chain, tenant, old_key)
        await db.delete(f"{PREFIX}lease:{batch.id}")  # its lease lapses (30 s), sooner
        # The old key revoked, the tenant given a new one.
        async with edge_keyed(chain, tenant, new_key) as new:
            await asyncio.sleep(2)  # adopted at the edge's start: its lines would be answered by now
            assert await charged(db, tenant) == []
            assert not await db.exists(f"{PREFIX}lease:{batch.id}")  # not run here, left to an edge serving it
            assert (await new.batches.retrieve(batch.id)).status == "in_progress"
            await new.batches.cancel(batch.id)
            ended = await finished(new, batch.id, timeout_s=20)
        assert ended.status == "cancelled" and ended.request_counts is not None
        assert ended.request_counts.completed == 0
        assert await charged(db, tenant) == []
    finally:
        await db.aclose()


async def test_a_revoked_keys_batch_past_its_window_is_ended_by_any_edge_sending_nothing(chain: Chain) -> None:
    """Left to an edge serving its key, a batch no edge serves any more would stay active for good: once its window
    is over, when no line may be sent anyway, any edge ends it, its lines never sent failed as `batch_expired`."""
    tenant = f"revoked-{secrets.token_hex(4)}"
    old_key, new_key = f"sk-old-{secrets.token_urlsafe(12)}", f"sk-new-{secrets.token_urlsafe(12)}"
    db = redis.from_url(chain.redis_url)
    try:
        batch = await created_where_no_line_goes_out(chain, tenant, old_key, window_s=1)
        await db.delete(f"{PREFIX}lease:{batch.id}")
        assert batch.expires_at is not None
        await asyncio.sleep(max(0.0, batch.expires_at + 0.5 - time.time()))  # the window is over
        async with edge_keyed(chain, tenant, new_key) as new:
            ended = await finished(new, batch.id, timeout_s=20)
            errors = (await new.files.content(ended.error_file_id)).text.splitlines() if ended.error_file_id else []
        assert ended.status == "expired"
        assert sorted(json.loads(e)["error"]["code"] for e in errors) == ["batch_expired"] * 3
        assert await charged(db, tenant) == []
    finally:
        await db.aclose()


async def test_a_revoked_keys_line_in_doubt_is_not_sent_again_by_an_edge_ending_its_batch(chain: Chain) -> None:
    """A line sent by an edge that served the key, its result lost with that edge (in doubt): an edge that does not
    serve the key, ending the batch past its window, sends it no more than any other line (sent again, a line that
    never reached the router would run, and the revoked key spend). It is not reported as never sent either: its
    outcome is unknown, and the ledger has it."""
    tenant = f"revoked-{secrets.token_hex(4)}"
    old_key, new_key = f"sk-old-{secrets.token_urlsafe(12)}", f"sk-new-{secrets.token_urlsafe(12)}"
    db = redis.from_url(chain.redis_url)
    try:
        # A window that outlasts the first edge's stop on a loaded machine: ended before the line is marked sent (by
        # the chain's edge, which ends any batch past its window), the line would be reported never sent.
        batch = await created_where_no_line_goes_out(chain, tenant, old_key, window_s=4)
        await db.delete(f"{PREFIX}lease:{batch.id}")
        await db.hset(sent_key(batch.id), "0", "sent")  # its first line sent, its edge gone before its result
        assert batch.expires_at is not None and time.time() < batch.expires_at  # marked within its window
        assert batch.expires_at is not None
        await asyncio.sleep(max(0.0, batch.expires_at + 0.5 - time.time()))  # the window is over
        async with edge_keyed(chain, tenant, new_key) as new:
            ended = await finished(new, batch.id, timeout_s=20)
            errors = (await new.files.content(ended.error_file_id)).text.splitlines() if ended.error_file_id else []
        assert await charged(db, tenant) == []
        assert ended.status == "expired"
        codes = {json.loads(e)["custom_id"]: json.loads(e)["error"]["code"] for e in errors}
        assert codes == {"revoked-0": "outcome_unknown", "revoked-1": "batch_expired", "revoked-2": "batch_expired"}
        (unknown,) = [json.loads(e)["error"]["message"] for e in errors if json.loads(e)["custom_id"] == "revoked-0"]
        assert unknown.startswith("This request was sent before the completion window expired and its result was lost")
    finally:
        await db.aclose()
