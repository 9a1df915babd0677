"""A caller that leaves a stream after its text, while the upstream is streaming a tool call's arguments: those
arguments were generated and billed by the upstream, though a stream hands tool calls on only whole, in its final
chunk. The router charged only the text it had delivered; the providers now tell it how many tokens the tool calls
came to as they stream in, and it charges them too."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
import yaml

from llmrouter.registry import ModelSpec
from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router import servicer
from services.router.serving import StreamState
from tests.conftest import ledger_records
from tests.fakes.raw_upstream import StallingUpstream
from tests.integration.conftest import model, provider, served_stack
from tests.providers.test_interrupted_tool_calls import ARGUMENTS, TEXT, anthropic_wire, openai_wire
from tests.waiting import eventually

OUTPUT_USD_PER_MTOK = Decimal("2.40")
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


async def ledger_of(redis_url: str, wait_s: float = 10.0) -> list[dict]:
    db = redis.from_url(redis_url)
    try:
        for _ in range(int(wait_s / 0.05)):
            if records := await ledger_records(db):
                return records
            await asyncio.sleep(0.05)
        return []
    finally:
        await db.aclose()


def router_streams(monkeypatch: pytest.MonkeyPatch) -> list[StreamState]:
    """The state of each stream the router serves from now on, as it makes it: a test waits on what the router has
    heard from the providers before its caller leaves."""
    made: list[StreamState] = []

    def recorded(model: ModelSpec) -> StreamState:
        made.append(StreamState(model))
        return made[-1]

    monkeypatch.setattr(servicer, "StreamState", recorded)
    return made


@pytest.mark.parametrize(("kind", "wire"), [("openai", openai_wire()), ("anthropic", anthropic_wire())])
async def test_a_stream_left_while_a_tool_call_streams_is_charged_its_arguments(
    tmp_path: Path, redis_url: str, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch, kind: str, wire: bytes
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream")
    streams = router_streams(monkeypatch)
    # Sends the text and the tool call's arguments so far, then nothing: the model still writing them.
    async with StallingUpstream(wire) as upstream:
        path = tmp_path / "models.yaml"
        base_url = f"{upstream.url}/v1" if kind == "openai" else upstream.url
        spec = {
            "tiers": ["economy"],
            "providers": {"upstream": provider(kind, base_url, "UPSTREAM_KEY")},
            "models": [model("tool-model", "upstream", "economy", ("0.60", str(OUTPUT_USD_PER_MTOK)))],
        }
        path.write_text(yaml.safe_dump(spec))
        async with (
            served_stack(path, redis_url, classifier_dir, verifier=False) as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            request = router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content="How many people live in Europe's cities?")],
                model="tool-model",
                max_tokens=2000,
                passthrough_json=json.dumps({"tools": TOOLS}),
            )
            call = router_pb2_grpc.RouterStub(channel).CompleteStream(request, timeout=30)
            assert (await call.read()).HasField("decision")
            assert (await call.read()).delta == TEXT
            await eventually(
                lambda: streams[0].tool_call_tokens >= count_tokens(ARGUMENTS),
                "the arguments reach the providers, and their count the router",
            )
            call.cancel()
            (record,) = await ledger_of(redis_url)
    assert record["outcome"] == "cancelled"
    # The text delivered and the arguments streamed so far, each at least as many tokens as they count to.
    generated = count_tokens(TEXT) + count_tokens(ARGUMENTS)
    assert record["output_tokens"] >= generated
    assert Decimal(record["cost_usd"]) >= OUTPUT_USD_PER_MTOK * generated / 1_000_000
