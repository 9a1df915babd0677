"""An escalation whose stronger model answers nothing (no words, no refusal, no tool calls): the weak answer is served
whole, its words with the model, provider, finish reason and log-probabilities of the generation that wrote them.
Once the words were the weak model's while the rest was the strong one's: the caller was told the strong model had
written the weak one's (truncated) words, and had finished them. Both generations are still charged, on one ledger
record, which says the escalation was made and came to nothing. The router behind its own gRPC server, before a
providers gRPC server on loopback that answers as the models did."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.redis_connect import connect
from llmrouter.registry import Registry
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from tests.conftest import ledger_records
from tests.router.servicer_kit import NearScores, served_router, store_on
from tests.router.test_admission import REGISTRY

# test_admission.REGISTRY, its models giving log-probabilities, which the caller asks for.
SPEC = REGISTRY.model_dump(mode="json", exclude_none=True)
SPEC["models"] = [{**m, "logprobs": True} for m in SPEC["models"]]
LOGPROBS_REGISTRY = Registry.model_validate(SPEC)
MODELS = {model.name: model for model in LOGPROBS_REGISTRY.models}


def logprobs(*tokens: str) -> str:
    """OpenAI's choices[0].logprobs object, of these tokens."""
    return json.dumps({"content": [{"token": t, "logprob": -0.5, "bytes": None, "top_logprobs": []} for t in tokens]})


# The cheap model is cut short (finish_reason length, under the caller's max_tokens): escalated as truncated.
WEAK = provider_pb2.GenerateResponse(
    content="The first primes are 2, 3",
    usage=common_pb2.Usage(input_tokens=12, output_tokens=8),
    model="cheap",
    provider="p",
    finish_reason="length",
    mean_logprob=-0.5,
    logprobs_json=logprobs("The", " first", " primes", " are", " 2", ",", " 3"),
)


def nothing(content: str) -> provider_pb2.GenerateResponse:
    """The strong model stopping at once, with nothing (or blanks, which are no words either)."""
    return provider_pb2.GenerateResponse(
        content=content,
        usage=common_pb2.Usage(input_tokens=12, output_tokens=1),
        model="strong",
        provider="p-strong",
        finish_reason="stop",
        mean_logprob=-0.01,
        logprobs_json=logprobs(content),
    )


class StrongSaysNothing(provider_pb2_grpc.ProviderServicer):
    def __init__(self, nothing: provider_pb2.GenerateResponse) -> None:
        self.nothing = nothing
        self.asked: list[str] = []

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[LOGPROBS_REGISTRY.info(m) for m in LOGPROBS_REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.asked.append(request.model)
        return WEAK if request.model == "cheap" else self.nothing


def ask() -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"Name the first primes {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(
        messages=[message], tenant="acme", quality_target=0.5, passthrough_json=json.dumps({"logprobs": True})
    )


async def answer(running: Any, stream: bool) -> router_pb2.CompleteResponse:
    """The reply, a buffered stream's (an escalated stream is buffered) put back together."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        router = router_pb2_grpc.RouterStub(channel)
        if not stream:
            return await router.Complete(ask(), timeout=30)
        request = ask()
        request.buffer_stream = True
        chunks = [chunk async for chunk in router.CompleteStream(request, timeout=30)]
    final = chunks[-1].final
    final.content = "".join(chunk.delta for chunk in chunks)
    return final


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "buffered-stream"])
@pytest.mark.parametrize("content", ["", " \n"], ids=["empty", "blank"])
async def test_an_escalation_that_answers_nothing_serves_the_weak_answer_whole_and_charges_both(
    tmp_path: Path, redis_url: str, stream: bool, content: str
) -> None:
    provider = StrongSaysNothing(nothing(content))
    async with (
        store_on(redis_url) as store,
        served_router(tmp_path, store, provider, LOGPROBS_REGISTRY, NearScores()) as running,
    ):
        reply = await answer(running, stream)
    assert provider.asked == ["cheap", "strong"]
    # The reply is one generation's: the weak one, cut short.
    assert (reply.content, reply.model, reply.provider) == (WEAK.content, "cheap", "p")
    assert (reply.finish_reason, reply.logprobs_json, reply.tool_calls_json, reply.refusal) == (
        "length",
        WEAK.logprobs_json,
        "",
        "",
    )
    # Both generations charged, and the escalation told as made.
    assert reply.escalated and reply.escalation_signal == "truncated"
    both = MODELS["cheap"].usage_cost_usd(WEAK.usage) + MODELS["strong"].usage_cost_usd(provider.nothing.usage)
    assert Decimal(reply.cost_usd) == both
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (24, 9)
    client = connect(redis_url)
    try:
        [record] = [r for r in await ledger_records(client) if r["tenant"] == "acme"]
    finally:
        await client.aclose()
    assert (record["model"], record["provider"], Decimal(record["cost_usd"])) == ("cheap", "p", both)
    assert [(g["model"], g["output_tokens"]) for g in record["generations"]] == [("cheap", 8), ("strong", 1)]
    assert record["escalated"] and record["escalation_signal"] == "truncated" and not record["fallback"]
    assert "escalated to strong, which answered nothing: the weak answer kept" in record["reason_detail"]
