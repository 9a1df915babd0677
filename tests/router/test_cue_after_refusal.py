"""The word to send written just as the providers' refusal ended the call (a slot freed at the last moment to send,
the deadline's refusal on its way): gRPC's write raises InvalidStateError on a finished call, not the call's error.
The stream must end with the providers' own status (a fallback, a clear error, `sent: false` read from it), never
with InvalidStateError, which the router would answer as an internal error."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from llmrouter.v1 import provider_pb2
from services.router.cued_stream import Cue, provider_chunks

REFUSED = grpc.aio.AioRpcError(
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.aio.Metadata(),
    grpc.aio.Metadata(("sent", "false")),
    "no time left to send",
)


class RefusedAsTheWordWentCall:
    """Ready to send; the providers' refusal ends the call before the word is written."""

    def __init__(self) -> None:
        self.ready_given = False

    def __aiter__(self) -> RefusedAsTheWordWentCall:
        return self

    async def write(self, message: provider_pb2.CuedRequest) -> None:
        if message.send:  # as grpc.aio does on a call already done
            raise asyncio.InvalidStateError("RPC already finished.")

    async def done_writing(self) -> None:
        pass

    async def __anext__(self) -> Any:
        if not self.ready_given:
            self.ready_given = True
            return provider_pb2.GenerateChunk(ready_to_send=True)
        raise REFUSED

    def cancel(self) -> None:
        pass


class Providers:
    def GenerateStreamOnCue(self, timeout: float | None = None) -> RefusedAsTheWordWentCall:
        return RefusedAsTheWordWentCall()


async def test_a_word_written_to_a_call_the_providers_ended_ends_with_their_status() -> None:
    chunks = provider_chunks(Providers(), provider_pb2.GenerateRequest(model="m"), lambda: 5.0, Cue())  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in chunks:
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dict(raised.value.trailing_metadata()) == {"sent": "false"}
