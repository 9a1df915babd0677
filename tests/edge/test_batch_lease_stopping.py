"""A batch the adoption leased and started just as the edge's shutdown began (Runner.stop between the adoption's
start and the run's first step: the adoption moves on, the run is only scheduled) is given up, not kept leased: the
run saw the shutdown and returned before anything, leaving the adoption's lease for the other edges to wait out
(LEASE_S). A real Redis batch store."""

from __future__ import annotations

import time
import uuid

import grpc

from services.batches.store import RedisStore, batch_key
from tests.edge.conftest import runner_sending_nothing


async def test_a_batch_started_as_the_shutdown_begins_is_left_unleased(redis_url: str) -> None:
    store = RedisStore(redis_url)
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called: the run sends nothing
    batch_id = f"b-{uuid.uuid4().hex}"
    runner = runner_sending_nothing(store, channel)
    try:
        fields: dict[str, str | bytes] = {"status": "in_progress", "tenant": "t", "key_id": "k"}
        fields |= {"input_file_id": "file-x", "created_at": str(int(time.time()))}
        fields["expires_at"] = str(int(time.time()) + 3600)
        await store.put(batch_key(batch_id), fields)
        await store.activate(batch_id, True)
        assert await store.lease(batch_id, runner.owner, 30)  # the adoption's lease, then its start
        runner.start(batch_id)
        runner.stop()  # the shutdown begins before the run's first step
        await runner.close()
        assert await store.lease(batch_id, "another-edge", 30), "the batch stays leased to an edge that stopped"
        assert (await store.get(batch_key(batch_id))).get("status") == b"in_progress"  # untouched, to resume
    finally:
        await store.delete([batch_key(batch_id)])
        await store.activate(batch_id, False)
        await channel.close()
        await store.close()
