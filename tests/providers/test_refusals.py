"""A model's refusal, as OpenAI's chat completions carry it (message.refusal beside a null content; in a stream,
delta.refusal pieces after a first chunk with an empty refusal), read by the OpenAI-compatible gateway (every kind
but anthropic and local speaks it) and carried on: GenerateResponse.refusal, and refusal_delta chunks when asked.
Its tokens are billed once, as any answer's: the upstream's count, else counted here. The gateway read content only:
the caller got an empty answer. The real service against a fake speaking the exact wire format."""

from __future__ import annotations

import grpc
import pytest

from llmrouter.tokens import count_message_tokens, count_tokens
from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.fake_openai import REFUSAL_CUE, REFUSED
from tests.providers.helpers import cost, error_of, request

ASKED = f"How do I pick a lock? {REFUSAL_CUE}"


async def test_an_answers_refusal_is_carried_and_billed_once(stub, openai_fake: FakeOpenAI) -> None:
    reply = await stub.Generate(request("cheap", ASKED))

    content, finish, usage = openai_fake.answer(openai_fake.requests[-1].json)
    assert (content, finish) == ("", "stop") and usage["completion_tokens"] == count_tokens(REFUSED)
    assert (reply.content, reply.refusal, reply.finish_reason) == ("", REFUSED, "stop")
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert reply.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")


async def streamed(
    stub: provider_pb2_grpc.ProviderStub, req: provider_pb2.GenerateRequest
) -> tuple[list[str], list[str], provider_pb2.GenerateResponse]:
    """A stream's content deltas, its refusal pieces and its final chunk."""
    deltas: list[str] = []
    refused: list[str] = []
    final = None
    async for chunk in stub.GenerateStream(req):
        kind = chunk.WhichOneof("kind")
        if kind == "delta":
            deltas.append(chunk.delta)
        elif kind == "refusal_delta":
            refused.append(chunk.refusal_delta)
        elif kind == "final":
            final = chunk.final
    assert final is not None
    return deltas, refused, final


async def test_a_streamed_refusal_arrives_in_pieces_when_asked_and_whole_at_the_end(
    stub, openai_fake: FakeOpenAI
) -> None:
    deltas, refused, final = await streamed(stub, request("cheap", ASKED, refusal_progress=True))

    _, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    assert deltas == [] and len(refused) > 1 and "".join(refused) == REFUSED
    assert (final.content, final.refusal, final.finish_reason) == ("", REFUSED, "stop")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert final.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")


async def test_a_caller_that_did_not_ask_gets_no_refusal_pieces(stub, openai_fake: FakeOpenAI) -> None:
    """A router of a version before took a chunk of a kind it did not know for the final one."""
    deltas, refused, final = await streamed(stub, request("cheap", ASKED))
    assert deltas == [] and refused == [] and final.refusal == REFUSED


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refusal_without_usage_is_counted_once(stub, openai_fake: FakeOpenAI, stream: bool) -> None:
    openai_fake.enqueue(Fault.no_usage())
    if stream:
        _, _, reply = await streamed(stub, request("cheap", ASKED, refusal_progress=True))
    else:
        reply = await stub.Generate(request("cheap", ASKED))
    input_tokens = count_message_tokens(request("cheap", ASKED).messages)
    assert reply.refusal == REFUSED and reply.usage.estimated
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (input_tokens, count_tokens(REFUSED))
    assert reply.cost_usd == cost(input_tokens, count_tokens(REFUSED), "0.15", "0.60")


async def test_a_stream_cut_after_a_refusal_piece_is_not_retried_and_charges_it(stub, openai_fake: FakeOpenAI) -> None:
    """Delivered, a refusal piece is part of the answer: another attempt would bill a second one."""
    openai_fake.enqueue(Fault.cut(after_chunks=2))  # the first chunk, then one piece of the refusal
    refused: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in stub.GenerateStream(request("cheap", ASKED, refusal_progress=True)):
            refused.append(chunk.refusal_delta)
    err = error_of(info.value)
    assert err.reason == "STREAM_INTERRUPTED" and len(openai_fake.requests) == 1
    piece = "".join(refused)
    assert piece and REFUSED.startswith(piece)
    input_tokens = count_message_tokens(request("cheap", ASKED).messages)
    assert err.metadata["output_tokens"] == str(count_tokens(piece))
    assert err.metadata["cost_usd"] == cost(input_tokens, count_tokens(piece), "0.15", "0.60")
