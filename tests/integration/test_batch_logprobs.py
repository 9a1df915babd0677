"""A batch's answers keep the log-probabilities their lines asked for up to each line's share of a file's most bytes
(EDGE_BATCH_MAX_FILE_BYTES): the output file is read, joined and served whole by an edge, sized for files of that
much; log-probabilities, kilobytes a token, would take it many times over."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.integration.conftest import Chain, quiet_edge_settings, start_edge

MAX_FILE_BYTES = 16_000  # 4,000 bytes of log-probabilities a line, for the 4 lines here
SHORT, LONG = "hi", " ".join(f"word{i}" for i in range(150))  # about 10 and 300 tokens echoed


def line(custom_id: str, content: str) -> str:
    body = {
        "model": "cheap-model",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 600,
        "logprobs": True,
        "top_logprobs": 1,
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


async def test_a_batch_answers_log_probabilities_stay_within_its_share_of_the_output_file(chain: Chain) -> None:
    settings = quiet_edge_settings(
        chain.router_addr, request_timeout_s=20, allow_anonymous=True, batch_max_file_bytes=MAX_FILE_BYTES
    )
    server, task, channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}/v1", timeout=20) as client:
            content = "\n".join(line(f"req-{i}", SHORT if i % 2 else LONG) for i in range(4)) + "\n"
            uploaded = await client.post(
                "/files", files={"file": ("b.jsonl", content.encode())}, data={"purpose": "batch"}
            )
            assert uploaded.status_code == 200, uploaded.text
            create = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"}
            created = await client.post("/batches", json={**create, "completion_window": "24h"})
            assert created.status_code == 200, created.text
            for _ in range(400):
                batch = (await client.get(f"/batches/{created.json()['id']}")).json()
                if batch["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 4, batch
            output = (await client.get(f"/files/{batch['output_file_id']}/content")).text
    finally:
        server.should_exit = True
        await task
        await channel.close()
    choices = {
        entry["custom_id"]: entry["response"]["body"]["choices"][0] for entry in map(json.loads, output.splitlines())
    }
    for custom_id, choice in choices.items():
        assert choice["message"]["content"], custom_id  # every answer is kept
        if custom_id in ("req-1", "req-3"):  # short: within its share, kept
            assert choice["logprobs"]["content"][0]["top_logprobs"], custom_id
        else:  # past its share: without them
            assert choice["logprobs"] is None, custom_id
    assert len(output) < 2 * MAX_FILE_BYTES
