"""Another tenant's files and batches, their ids leaked to a caller: every route that names one by id answers that
caller 404, as for an id that never was, and changes nothing of them (a delete, a cancel); a batch's output and error
files are its tenant's as its input is. The real chain (edge, router, providers) on loopback."""

from __future__ import annotations

import json
import secrets

import pytest
from openai import NotFoundError
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import Chain, free_port, sdk_client, served_edge
from tests.integration.test_provider_batches import finished

URL = "/v1/chat/completions"


async def test_a_leaked_file_or_batch_id_reads_deletes_or_cancels_nothing_of_another_tenant(chain: Chain) -> None:
    keys = {role: (f"{role}-{secrets.token_hex(4)}", f"sk-{role}-{secrets.token_urlsafe(12)}") for role in "ab"}
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(",".join(key_line(t, k) for t, k in keys.values())),
        batch_redis_url=RedisUrl(chain.redis_url),
    )
    lines = [
        {"custom_id": "ok", "method": "POST", "url": URL, "body": {"messages": [{"role": "user", "content": "hi"}]}},
        {"custom_id": "bad", "method": "POST", "url": URL, "body": {"messages": []}},  # to the error file
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    async with (
        served_edge(settings),
        sdk_client(settings, keys["a"][1]) as owner,
        sdk_client(settings, keys["b"][1]) as other,
    ):
        uploaded = await owner.files.create(file=("two.jsonl", content), purpose="batch")
        for attempt in (other.files.retrieve, other.files.delete, other.files.content):
            with pytest.raises(NotFoundError):
                await attempt(uploaded.id)
        batch = await owner.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(NotFoundError):
            await other.batches.cancel(batch.id)
        batch = await finished(owner, batch.id)
        assert batch.status == "completed", batch  # not cancelled by the other tenant
        assert batch.output_file_id and batch.error_file_id
        for file_id in (batch.output_file_id, batch.error_file_id):
            for attempt in (other.files.retrieve, other.files.delete, other.files.content):
                with pytest.raises(NotFoundError):
                    await attempt(file_id)
        assert [f.id async for f in other.files.list()] == []
        assert [b.id async for b in other.batches.list()] == []
        # The owner's files are all still there, undeleted.
        assert (await owner.files.retrieve(uploaded.id)).id == uploaded.id
        assert json.loads((await owner.files.content(batch.output_file_id)).text)["custom_id"] == "ok"
        assert json.loads((await owner.files.content(batch.error_file_id)).text)["custom_id"] == "bad"
