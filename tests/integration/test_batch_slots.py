"""The edge's EDGE_BATCH_CONCURRENCY line slots outlive a batch run that fails: a slot taken for a line and lost on
an error of the batch store was never given back, and once all were lost no batch line was sent again."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

import pytest
import redis
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.batches import runner
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, start_edge
from tests.integration.test_batch_memory import batch_file
from tests.integration.test_provider_batches import finished
from tests.redis_servers import RedisServer
from tests.waiting import eventually

RUN_FAILED = "batch run failed; it stays active and is resumed"


async def test_a_line_slot_taken_when_the_batch_store_fails_is_given_back(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With one slot: the first line in flight, the store starts refusing the batch reads (an ACL change here; a
    connection error alike), so the run, slot taken for the second line, fails and is resumed after its back-off,
    the store answering again. It must then get the slot back, and the batch finish."""
    # A failed run's first back-off (30 s) made short: the store answers again before it ends, and the resumed run
    # needs the slot all the same. A slot lost is lost for good, however long the back-off.
    monkeypatch.setattr(runner, "FAILED_FIRST_S", 3.0)
    caplog.set_level(logging.WARNING, "llmrouter.edge.batches")
    store = RedisServer(tmp_path, "--save", "").start()
    admin = redis.Redis(port=store.port)
    tenant, key = f"slots-{secrets.token_hex(4)}", f"sk-slots-{secrets.token_urlsafe(12)}"
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(store.url),
        batch_concurrency=1,
        request_timeout_s=20,
    )
    chain.budget.latency = 2.0  # each line takes that long at the provider
    server, task, channel = await start_edge(settings)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key, max_retries=0)
    sent = len(chain.budget.requests)
    try:
        uploaded = await client.files.create(file=("b.jsonl", batch_file(2)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await eventually(lambda: len(chain.budget.requests) > sent, "the first line in flight, the run waiting")
        admin.execute_command("ACL", "SETUSER", "default", "-hgetall")
        # The first line recorded (no read), the slot taken for the second, its read refused: the run fails (a run
        # that never met the refused read proves nothing here).
        await eventually(lambda: RUN_FAILED in caplog.messages, "the run fails with the slot taken")
        admin.execute_command("ACL", "SETUSER", "default", "+hgetall")
        # Resumed once its failed run's back-off is over (FAILED_FIRST_S), by the adoption that wakes for it.
        done = await finished(client, batch.id, timeout_s=runner.FAILED_FIRST_S + 20)
        assert done.status == "completed" and done.request_counts.completed == 2, done
    finally:
        chain.budget.latency = 0.0
        await client.close()
        server.should_exit = True
        async with asyncio.timeout(20):  # a run waiting for a lost slot held the edge's shutdown for ever too
            await task
        await channel.close()
        admin.close()
        store.stop()
