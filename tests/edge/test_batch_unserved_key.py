"""A batch an edge adopted though it does not serve its key (the key revoked, or given to another edge, between the
adoption pass and the run reading the batch) is left to an edge that serves it, its back-off untouched: the run sent
nothing, so it neither failed nor ran without failing. It dropped the count of the batch's failed runs in a row, and
the next failure parked the batch for the first, shortest time again. A real Redis batch store."""

from __future__ import annotations

import time
import uuid

import grpc

from services.batches.store import RedisStore, batch_key
from tests.edge.conftest import runner_sending_nothing


async def test_a_run_on_a_key_not_served_keeps_the_batchs_failures_count(redis_url: str) -> None:
    store = RedisStore(redis_url)
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called: the run sends nothing
    batch_id = f"b-{uuid.uuid4().hex}"
    runner = runner_sending_nothing(store, channel, serves=lambda tenant, key_id: False)  # the key is no longer ours
    try:
        fields: dict[str, str | bytes] = {
            "status": "in_progress",
            "tenant": "t",
            "key_id": "k",
            "input_file_id": "file-gone",
        }
        fields |= {"created_at": str(int(time.time())), "expires_at": str(int(time.time()) + 3600), "failures": "3"}
        await store.put(batch_key(batch_id), fields)
        await store.activate(batch_id, True)
        runner.start(batch_id)  # as the adoption pass does, having found the key served a moment before
        await runner.runs[batch_id]
        batch = await store.get(batch_key(batch_id))
        assert batch.get("failures") == b"3"  # the back-off goes on from where it was
        assert await store.lease(batch_id, "another-edge", 30)  # and the batch is any serving edge's to run
    finally:
        await runner.close()
        await store.delete([batch_key(batch_id)])
        await store.activate(batch_id, False)
        await channel.close()
        await store.close()
