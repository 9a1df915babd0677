"""GenerateStreamOnCue: the upstream is reached only once the caller sends its word, after the `ready_to_send` chunk; a
caller that leaves, or closes its side, before it never had the upstream called. The real service on loopback
before the OpenAI wire-format fake."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes import FakeOpenAI
from tests.providers.helpers import error_of, request


def cued(req: provider_pb2.GenerateRequest) -> provider_pb2.CuedRequest:
    return provider_pb2.CuedRequest(request=req)


SEND = provider_pb2.CuedRequest(send=True)


async def rest(call: Any) -> list[provider_pb2.GenerateChunk]:
    """The chunks still to come (read one by one: a call read so far may not be iterated)."""
    chunks = []
    while (chunk := await call.read()) is not grpc.aio.EOF:
        chunks.append(chunk)
    return chunks


async def test_the_upstream_is_asked_only_once_the_caller_sends_its_word(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    first = await call.read()
    assert first.WhichOneof("kind") == "ready_to_send"
    await asyncio.sleep(0.3)
    assert openai_fake.requests == []  # waiting for the word
    await call.write(SEND)
    await call.done_writing()
    chunks = await rest(call)
    assert "".join(c.delta for c in chunks) == "[cheap-upstream-v1] You said: What is 2+2?"
    assert chunks[-1].final.usage.output_tokens > 0
    assert len(openai_fake.requests) == 1


async def test_a_caller_that_closes_its_side_without_the_word_never_has_the_upstream_asked(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    error = error_of(ended.value)
    assert (error.code, error.reason, error.metadata["sent"]) == (
        grpc.StatusCode.CANCELLED,
        "UPSTREAM_NOT_REACHED",
        "false",
    )
    assert openai_fake.requests == []


async def test_a_caller_that_leaves_before_the_word_never_has_the_upstream_asked(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    call.cancel()
    await asyncio.sleep(0.5)
    assert openai_fake.requests == []
    # Its concurrency slot was given back: a call after it is answered.
    after = stub.GenerateStreamOnCue(timeout=10)
    await after.write(cued(request("cheap")))
    assert (await after.read()).WhichOneof("kind") == "ready_to_send"
    await after.write(SEND)
    assert (await rest(after))[-1].HasField("final")


async def test_a_word_never_sent_ends_with_the_calls_deadline_as_nothing_sent(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    # Past the providers' margin and their time to send, `ready_to_send` has 1.2 s to come, room for a loaded machine
    # (0.2 s of a 0.5 s deadline was not: the call was refused unsent before it, and its first read was the error).
    call = stub.GenerateStreamOnCue(timeout=1.5)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    error = error_of(ended.value)
    assert (error.code, error.metadata["sent"]) == (grpc.StatusCode.DEADLINE_EXCEEDED, "false")
    assert openai_fake.requests == []


async def test_a_stream_that_opens_with_the_word_rather_than_the_request_is_refused(
    stub: provider_pb2_grpc.ProviderStub,
) -> None:
    call = stub.GenerateStreamOnCue(timeout=5)
    await call.write(SEND)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
