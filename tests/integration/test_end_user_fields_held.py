"""A request is held for the input the providers service counts when its upstream reports no usage: the passthrough
fields rendered into the prompt (tools) as that service writes them (end-user fields, never billed, are not counted),
through the real router and providers services on loopback, over real Redis. Held on a compact JSON text of the same
fields (a gRPC caller may write its own so), a prompt of many tools was counted about a quarter short: max_tokens was
capped for the shorter count, and the answer, past its hold, was charged the hold, as a hostile provider's report is,
not its cost."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from llmrouter.passthrough import prompt_json
from llmrouter.tokens import count_prompt_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.fakes.fake_openai import FakeOpenAI, write_as_long_as_allowed
from tests.fakes.server import Fault
from tests.integration.conftest import served_stack

PRICE_PER_MTOK = Decimal("10.00")  # input and output alike
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"lookup_{i}",
            "description": "Look a record up.",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}, "page": {"type": "integer"}}},
        },
    }
    for i in range(60)
]


def registry(base_url: str) -> dict[str, Any]:
    return {
        "tiers": ["economy"],
        "providers": {"up": {"kind": "openai", "base_url": base_url, "api_key_env": "UP_KEY", "max_retries": 0}},
        "models": [
            {"name": "gpt-like", "provider": "up", "tier": "economy", "input_usd_per_mtok": str(PRICE_PER_MTOK),
             "output_usd_per_mtok": str(PRICE_PER_MTOK), "context_window": 128000, "quality_prior": 0.9,
             "tokenizer": "o200k_base"},
        ],
    }  # fmt: skip


@pytest.fixture
async def stack(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[router_pb2_grpc.RouterStub, FakeOpenAI]]:
    monkeypatch.setenv("UP_KEY", "sk-up")
    with FakeOpenAI(write_as_long_as_allowed) as upstream:
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(upstream.base_url)))
        # The request names its model: no classifier.
        async with (
            served_stack(path, redis_url, None, verifier=False, escalation="off", cache_ttl_s=0) as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            yield router_pb2_grpc.RouterStub(channel), upstream


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")], ids=["as-the-edge-writes", "compact"])
@pytest.mark.parametrize("field", ["user", "safety_identifier", "prompt_cache_key", ""])
async def test_an_end_user_request_without_usage_is_charged_within_max_cost_usd(
    stack: tuple[router_pb2_grpc.RouterStub, FakeOpenAI], field: str, separators: tuple[str, str]
) -> None:
    stub, upstream = stack
    messages = [common_pb2.ChatMessage(role="user", content=f"Which record? {uuid.uuid4().hex}")]
    # As the edge writes it (json.dumps), and as the providers service writes what it was sent to count it.
    passthrough = {**({field: "end-user-7"} if field else {}), "tools": TOOLS, "tool_choice": "auto"}
    spaced = await count_prompt_tokens(messages, prompt_json(passthrough), True, 10**9, "o200k_base")
    # Pays for the prompt as the providers service counts it, and a short answer.
    cap = PRICE_PER_MTOK * (spaced + 64) / 10**6
    request = router_pb2.CompleteRequest(
        messages=messages,
        model="gpt-like",
        tenant=f"t-{uuid.uuid4().hex[:8]}",
        max_tokens=2_000,
        max_cost_usd=str(cap),
        passthrough_json=json.dumps(passthrough, separators=separators),  # a gRPC caller's may be compact
    )
    upstream.enqueue(Fault.no_usage())
    reply = await stub.Complete(request, timeout=60)
    assert reply.usage.estimated and reply.usage.input_tokens >= spaced
    # Charged what the providers service counted, within the cap: not cut down to a hold that fell short of it (as a
    # hostile provider's report past the hold is).
    billed = PRICE_PER_MTOK * (reply.usage.input_tokens + reply.usage.output_tokens) / 10**6
    assert Decimal(reply.cost_usd) == billed <= cap, (reply.cost_usd, billed, cap)
