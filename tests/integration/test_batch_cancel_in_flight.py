"""A batch cancelled while its last lines are in flight ends `cancelled`, as OpenAI's do once `cancelling`, with those
lines' answers in its output file: its run, sending no line after the cancel, ended it `completed` though the cancel
had answered `cancelling`. Both stores: Redis and in process."""

from __future__ import annotations

import asyncio
import time

from tests.integration.conftest import batch_edge, served_router
from tests.integration.test_batch_cancel_waiting import HoldingRouter, create, status_of


async def test_a_batch_cancelled_with_its_last_lines_in_flight_ends_cancelled_with_their_answers(
    store_url: str | None,
) -> None:
    router = HoldingRouter()
    async with served_router(router) as router_addr, batch_edge(router_addr, store_url) as client:
        try:
            batch_id = await create(client, "flight")
            deadline = time.monotonic() + 10
            while len(router.sent) < 2:  # every line in flight
                assert time.monotonic() < deadline, router.sent
                await asyncio.sleep(0.05)
            cancelling = (await client.post(f"/batches/{batch_id}/cancel")).json()
            assert cancelling["status"] == "cancelling"
        finally:
            router.released.set()
        cancelled = await status_of(client, batch_id, "cancelled", 10)
    assert cancelled["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert cancelled["output_file_id"] and cancelled["completed_at"] is None and cancelled["finalizing_at"] is None
