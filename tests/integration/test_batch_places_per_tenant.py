"""An edge's batch places (EDGE_BATCH_MAX_RUNNING) are shared between tenants: with API keys, one tenant holds at most
half of them (at least one), as it does the upload places. A batch keeps its place until it ends, so a tenant that
created as many long batches as an edge has places held them all, for hours, and every other tenant's batch waited
(past its 24 h window: expired, never sent)."""

from __future__ import annotations

import json
import secrets

from pydantic import SecretStr

from services.edge.keys import key_line
from tests.integration.conftest import Chain, keyed_batch_edge, sdk_client, served_edge
from tests.integration.test_provider_batches import finished

ENDED = ("completed", "failed", "expired", "cancelled")


def batch_file(lines: int) -> bytes:
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            # Each its own prompt: none is answered from the response cache, every one waits for the upstream.
            "body": {"model": "cheap-model", "messages": [{"role": "user", "content": f"hi {secrets.token_hex(8)}"}]},
        }
        for i in range(lines)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def test_a_tenants_long_batches_leave_another_tenant_a_place(chain: Chain) -> None:
    crowding, key, settings = keyed_batch_edge(chain, "crowding", batch_max_running=2, batch_concurrency=2)
    other, other_key = f"crowded-{secrets.token_hex(4)}", f"sk-crowded-{secrets.token_urlsafe(12)}"
    keys = SecretStr(key_line(crowding, key) + "," + key_line(other, other_key))
    settings = settings.model_copy(update={"api_keys": keys})
    chain.budget.latency = 0.2  # the crowding tenant's batches run for seconds
    try:
        async with served_edge(settings), sdk_client(settings, key) as client, sdk_client(settings, other_key) as late:
            long = []
            for _ in range(2):  # as many as the edge has places
                uploaded = await client.files.create(file=("long.jsonl", batch_file(30)), purpose="batch")
                long.append(
                    await client.batches.create(
                        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
                    )
                )
            uploaded = await late.files.create(file=("short.jsonl", batch_file(1)), purpose="batch")
            short = await late.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = await finished(late, short.id)
            assert done.status == "completed"
            statuses = [(await client.batches.retrieve(batch.id)).status for batch in long]
            assert not any(status in ENDED for status in statuses), statuses  # it did not wait for them
            for batch in long:
                assert (await finished(client, batch.id)).status == "completed"
    finally:
        chain.budget.latency = 0.0
