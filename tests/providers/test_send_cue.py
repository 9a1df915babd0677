"""GenerateStreamOnCue: the upstream is reached only once the caller sends its word, after the `ready_to_send` chunk; a
caller that leaves, or closes its side, before it never had the upstream called. A `send` false, or a message with
neither field, is no word (it was taken for one, and the upstream called); a second request is refused, not ignored
while the first is served. The real service on loopback before the OpenAI wire-format fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import providers_service
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


async def ends_unreached(call: Any, openai_fake: FakeOpenAI) -> None:
    """The caller closes its side without the word: the call ends told no upstream was reached, and none was."""
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


async def test_the_upstream_is_asked_only_once_the_caller_sends_its_word(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    first = await call.read()
    assert first.WhichOneof("kind") == "ready_to_send"
    # A call made after `ready_to_send`, through the same provider to the same upstream, answered: a request sent
    # without waiting for the word, one round trip before it, would have reached the upstream by then.
    assert (await stub.Generate(request("strong"))).content
    assert [r.json["model"] for r in openai_fake.requests] == ["strong"]  # the cued one waiting for the word
    await call.write(SEND)
    await call.done_writing()
    chunks = await rest(call)
    assert "".join(c.delta for c in chunks) == "[cheap-upstream-v1] You said: What is 2+2?"
    assert chunks[-1].final.usage.output_tokens > 0
    assert [r.json["model"] for r in openai_fake.requests] == ["strong", "cheap-upstream-v1"]


async def test_a_caller_that_closes_its_side_without_the_word_never_has_the_upstream_asked(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    await ends_unreached(call, openai_fake)


async def test_a_caller_that_leaves_before_the_word_never_has_the_upstream_asked(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    """The provider has one slot, which the call waiting for the word holds: the call after it gets the slot, its own
    `ready_to_send`, only once the service has seen the first caller leave and ended that call for good."""
    async with providers_service(tmp_path, openai_fake.base_url, anthropic_fake.base_url, max_concurrency=1) as stub:
        call = stub.GenerateStreamOnCue(timeout=10)
        await call.write(cued(request("cheap")))
        assert (await call.read()).WhichOneof("kind") == "ready_to_send"
        call.cancel()
        after = stub.GenerateStreamOnCue(timeout=10)
        await after.write(cued(request("cheap")))
        assert (await after.read()).WhichOneof("kind") == "ready_to_send"  # the slot given back
        assert openai_fake.requests == []
        await after.write(SEND)
        assert (await rest(after))[-1].HasField("final")
        assert len(openai_fake.requests) == 1


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


@pytest.mark.parametrize("not_the_word", [provider_pb2.CuedRequest(send=False), provider_pb2.CuedRequest()])
async def test_a_message_other_than_send_true_is_no_word(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, not_the_word: provider_pb2.CuedRequest
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    await call.write(not_the_word)
    await ends_unreached(call, openai_fake)


async def test_the_word_after_a_send_false_lets_the_request_go(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    await call.write(provider_pb2.CuedRequest(send=False))
    await call.write(SEND)
    await call.done_writing()
    assert (await rest(call))[-1].final.usage.output_tokens > 0
    assert len(openai_fake.requests) == 1


async def test_a_second_request_is_refused_and_never_reaches_the_upstream(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    call = stub.GenerateStreamOnCue(timeout=10)
    await call.write(cued(request("cheap")))
    assert (await call.read()).WhichOneof("kind") == "ready_to_send"
    await call.write(cued(request("strong")))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    error = error_of(refused.value)
    assert (error.code, error.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "request")
    assert openai_fake.requests == []
