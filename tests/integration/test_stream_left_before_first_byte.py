"""An HTTP client that asks for a stream and leaves before its first byte, while the edge waits for the router's first
token: the edge cancels its router call at once. It waited for that token (an upstream slow to answer: until the
request's timeout), the router's stream and the upstream's generation running on for nobody meanwhile; a tool-call
answer, whose first chunk is its last, was generated whole. Its 499 in the access log names the request by the id the
ledger charges it under, as every answer or error of a request that reached the router does."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
import yaml

from services.edge.settings import EdgeSettings
from tests.conftest import ledger_records
from tests.fakes.raw_upstream import StallingUpstream
from tests.integration.conftest import free_port, model, provider, served_edge, served_stack

BODY = {"model": "slow-model", "messages": [{"role": "user", "content": "A story?"}], "max_tokens": 300, "stream": True}


# A 200 event stream that sends nothing after its head, as a model slow to begin.
SILENT = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"


async def first_record(redis_url: str, wait_s: float) -> dict | None:
    db = redis.from_url(redis_url)
    try:
        until = time.monotonic() + wait_s
        while time.monotonic() < until:
            if records := await ledger_records(db):
                return records[0]
            await asyncio.sleep(0.05)
        return None
    finally:
        await db.aclose()


async def test_a_client_leaving_before_the_first_byte_has_the_router_call_cancelled_at_once(
    tmp_path: Path, redis_url: str, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_KEY", "sk-slow")
    async with StallingUpstream(SILENT) as upstream:
        path = tmp_path / "models.yaml"
        spec = {
            "tiers": ["economy"],
            "providers": {"slow": provider("openai", f"{upstream.url}/v1", "SLOW_KEY")},
            "models": [model("slow-model", "slow", "economy", ("0.60", "2.40"))],
        }
        path.write_text(yaml.safe_dump(spec))
        async with served_stack(path, redis_url, classifier_dir, verifier=False) as servers:
            access_log = tmp_path / "access.jsonl"
            settings = EdgeSettings(
                port=free_port(),
                router_addr=f"127.0.0.1:{servers['router'].port}",
                request_timeout_s=20,
                access_log=str(access_log),
            )
            async with served_edge(settings) as base_url, httpx.AsyncClient(base_url=base_url) as http:
                decision = (await http.post("/router/decide", json=BODY)).json()
                reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
                body = json.dumps(BODY).encode()
                head = "POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n"
                writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
                await asyncio.wait_for(upstream.asked.wait(), 10)  # admitted, and the upstream asked
                writer.close()  # gone before the first byte of the answer
                left = time.monotonic()
                record = await first_record(redis_url, wait_s=5.0)
                settled_s = time.monotonic() - left
                assert await reader.read() == b""  # nothing of an answer was ever sent
    assert record is not None, "the router's call ran on after its client left"
    assert settled_s < 3.0
    # Left before its first token: the attempt's worst case, as the router charges a stream its caller leaves then.
    assert record["outcome"] == "cancelled"
    worst = next(c["estimated_cost_usd"] for c in decision["candidates"] if c["model"] == "slow-model")
    assert Decimal(record["cost_usd"]) == Decimal(worst)
    left_lines = [line for line in map(json.loads, access_log.read_text().splitlines()) if line["status"] == 499]
    assert [line.get("request_id") for line in left_lines] == [record["request_id"]]
