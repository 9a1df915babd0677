"""An attempt left too little of its caller's deadline to be sent (past the margin the providers keep for their
error's way back, less than MIN_SEND_S) is refused before anything reaches the upstream, `sent: false`: the router
owes nothing for it. Made, it timed out before its request was sent, yet its outcome looked unknown, and the router
charged its worst case. A retry without that time is not made either, and the failure before it is what the caller
is told, with what the failed attempts consumed: never an unsent refusal, since those attempts were sent. The real
service on loopback before the wire-format fakes."""

from __future__ import annotations

import json

import grpc
import pytest

from llmrouter.deadlines import MIN_SEND_S, PROVIDERS_MARGIN_S
from llmrouter.errors import ServiceError
from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.server import TOOL_CUE
from tests.providers.helpers import error_of, request
from tests.providers.test_tool_calls import TOOLS

# The caller's deadline that leaves, past the providers' margin, half the time an attempt needs to be sent.
TOO_LITTLE_S = PROVIDERS_MARGIN_S + MIN_SEND_S / 2


async def failure(call: object) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return error_of(info.value)


async def streamed(stub: provider_pb2_grpc.ProviderStub, req: provider_pb2.GenerateRequest, timeout: float) -> None:
    async for chunk in stub.GenerateStream(req, timeout=timeout):
        assert not chunk.HasField("final"), "answered"


async def cued(stub: provider_pb2_grpc.ProviderStub, req: provider_pb2.GenerateRequest, timeout: float) -> None:
    """GenerateStreamOnCue, the word to send given as soon as the providers are ready for it."""
    call = stub.GenerateStreamOnCue(timeout=timeout)
    await call.write(provider_pb2.CuedRequest(request=req))
    while (chunk := await call.read()) is not grpc.aio.EOF:
        assert not chunk.HasField("final"), "answered"
        if chunk.HasField("ready_to_send"):
            await call.write(provider_pb2.CuedRequest(send=True))


@pytest.mark.parametrize("kind", ["unary", "stream", "cued"])
async def test_an_attempt_left_too_little_time_to_send_is_refused_before_anything_is_sent(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI, kind: str
) -> None:
    req = request("cheap")
    calls = {
        "unary": lambda: stub.Generate(req, timeout=TOO_LITTLE_S),
        "stream": lambda: streamed(stub, req, TOO_LITTLE_S),
        "cued": lambda: cued(stub, req, TOO_LITTLE_S),
    }
    error = await failure(calls[kind]())
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert error.metadata.get("sent") == "false" and "cost_usd" not in error.metadata  # nothing to pay
    assert "too little of the caller's deadline left" in error.message
    assert openai_fake.connections == 0 and openai_fake.requests == []  # not even a connection was opened


# The caller's deadline of the retry tests, and a Retry-After that puts a retry made right after the 429 midway between
# the last moment to send it (the deadline less the margin and MIN_SEND_S) and the providers' own deadline: past the
# first, however soon the 429 came (gRPC rounds the deadline it sends up, by milliseconds).
DEADLINE_S = 1.0
LATE_RETRY_S = DEADLINE_S - PROVIDERS_MARGIN_S - MIN_SEND_S / 2


async def test_a_retry_that_could_not_be_sent_in_time_is_not_made_and_the_failure_before_it_is_told(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    # Made, the retry (which hangs) would have timed out unsent or just sent: an unknown outcome, its worst case owed.
    openai_fake.enqueue(Fault.error(429, retry_after=LATE_RETRY_S), Fault.hang())
    error = await failure(stub.Generate(request("cheap"), timeout=DEADLINE_S))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED")
    assert error.metadata["retries"] == "0" and "sent" not in error.metadata
    assert len(openai_fake.requests) == 1 and openai_fake.connections == 1


async def test_a_stream_retry_that_could_not_be_sent_in_time_reports_what_the_attempts_before_consumed(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    # A cut after some tool-call fragments (generated, billed, retried), then a 429 whose Retry-After leaves no time.
    openai_fake.enqueue(Fault.cut(after_chunks=4), Fault.error(429, retry_after=LATE_RETRY_S), Fault.hang())
    tools = json.dumps({"tools": TOOLS, "tool_choice": "auto"})
    error = await failure(streamed(stub, request("cheap", f"Weather? {TOOL_CUE}", passthrough_json=tools), DEADLINE_S))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED")
    assert error.metadata["retries"] == "1" and "sent" not in error.metadata
    assert int(error.metadata["output_tokens"]) > 0 and float(error.metadata["cost_usd"]) > 0  # the cut one's, owed
    assert len(openai_fake.requests) == 2
