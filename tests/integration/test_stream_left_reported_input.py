"""A caller that leaves a stream mid-way, after the upstream said how much input it bills (Anthropic's message_start
carries the prompt's tokens as its own tokenizer counts them, and the cache's share): the router charged the input at
its own estimate instead (cl100k_base's count of the prompt), below what the upstream bills for another tokenizer.
The providers now tell the router the input an upstream reported as soon as it does, and a stream left is charged
that, as an interrupted or finished one is."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml

from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.fakes.raw_upstream import StallingUpstream
from tests.integration.conftest import model, provider, served_stack
from tests.integration.test_tool_call_stream_left import ledger_of, router_streams
from tests.providers.test_hostile_upstream import events
from tests.waiting import eventually

INPUT_USD_PER_MTOK = Decimal("3")
PROMPT = "How many people live in Europe's cities? " * 20
# What the upstream's tokenizer makes of the prompt: more than cl100k_base's count, within the router's bound of it.
REPORTED_INPUT, REPORTED_CACHED = 400, 100
TEXT = "Let me think about that."


def started_wire() -> bytes:
    usage = {"input_tokens": REPORTED_INPUT - REPORTED_CACHED, "cache_read_input_tokens": REPORTED_CACHED}
    return events(
        {"type": "message_start", "message": {"usage": {**usage, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}},
        anthropic=True,
    )


async def test_a_stream_left_is_charged_the_input_its_upstream_reported(
    tmp_path: Path, redis_url: str, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream")
    streams = router_streams(monkeypatch)
    async with StallingUpstream(started_wire()) as upstream:
        path = tmp_path / "models.yaml"
        spec = {
            "tiers": ["economy"],
            "providers": {"upstream": provider("anthropic", upstream.url, "UPSTREAM_KEY")},
            "models": [
                model("claude-model", "upstream", "economy", (str(INPUT_USD_PER_MTOK), "15"), tokenizer="utf8_bytes")
            ],
        }
        path.write_text(yaml.safe_dump(spec))
        async with (
            served_stack(path, redis_url, classifier_dir, verifier=False) as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            request = router_pb2.CompleteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=PROMPT)], model="claude-model", max_tokens=500
            )
            call = router_pb2_grpc.RouterStub(channel).CompleteStream(request, timeout=30)
            assert (await call.read()).HasField("decision")
            assert (await call.read()).delta == TEXT
            await eventually(lambda: streams[0].input is not None, "what the upstream reported reaches the router")
            call.cancel()
            (record,) = await ledger_of(redis_url)
    assert record["outcome"] == "cancelled"
    assert count_tokens(PROMPT) < REPORTED_INPUT  # the router's own estimate of the prompt is below it
    assert record["input_tokens"] == REPORTED_INPUT
    (generation,) = record["generations"]
    assert generation["cached_input_tokens"] == REPORTED_CACHED
    assert Decimal(record["cost_usd"]) >= INPUT_USD_PER_MTOK * (REPORTED_INPUT - REPORTED_CACHED) / 1_000_000
