"""The word to send written just as the providers' refusal ended the call (the router's word not in by the last moment
to send: DEADLINE_EXCEEDED, `sent: false`), with the providers in a process of their own: the write fails in gRPC's
core, and grpc.aio's write replaced the call's status with its own INTERNAL ("Internal error from Core"), the providers'
ErrorInfo lost. The stream was charged its worst case, as an outcome unknown, where the providers said they sent
nothing, and failed INTERNAL, not with their status. The providers' gRPC server with an event loop in a thread of its
own (as another process has), the router's servicer over the money store on the test's Redis, its loop held (as a
loaded one's is) from the moment it reads `ready_to_send` until the providers' call has ended: the call's end arrives,
unread, as the word goes. Over a channel without interceptors and over one with the call token's."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from grpc.aio import _interceptor

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.channels import bearer_token
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import Account, RedisStore, period_id
from tests.router.servicer_kit import NoDeadline, router_servicer_to
from tests.router.test_admission import REGISTRY
from tests.router.test_providers_shed_calls import providers_in_a_thread

# Streams, at most, to have the word's write fail in gRPC's core CROSSINGS times (it does in most of them).
STREAMS, CROSSINGS = 50, 3
REFUSAL = ServiceError(
    grpc.StatusCode.DEADLINE_EXCEEDED,
    "UPSTREAM_TIMEOUT",
    "p: the caller did not let the request go within the total timeout",
    {"sent": "false"},
)


class RefusedAtTheWord(provider_pb2_grpc.ProviderServicer):
    """Ready to send, then refuses at once, as the providers do when the router's word is not in by the last moment to
    send. Tells `ended` once the call is over on its side, its status sent."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        context.add_done_callback(lambda _: self.ended.set())
        await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await context.abort(REFUSAL.code, REFUSAL.message, REFUSAL.trailing_metadata())


class CoreWrites:
    """A grpc.aio call's core call, counting the writes that failed in gRPC's core (the call ended as they went)."""

    def __init__(self, core: Any) -> None:
        self.core, self.failed = core, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    async def send_serialized_message(self, message: bytes) -> None:
        try:
            await self.core.send_serialized_message(message)
        except Exception:
            self.failed += 1
            raise


class HeldAtTheWord:
    """The router's providers stub, each GenerateStreamOnCue call's `ready_to_send` given to the router only once the
    providers (in their thread) ended the call, the router's event loop held until then (blocking, in the response's
    deserializer), so that it has not read the call's end when it writes the word. Counts the words whose write
    failed in gRPC's core."""

    def __init__(self, channel: grpc.aio.Channel, ended: threading.Event) -> None:
        self.stub, self.ended = provider_pb2_grpc.ProviderStub(channel), ended
        self.calls = channel.stream_stream(
            "/llmrouter.v1.Provider/GenerateStreamOnCue",
            request_serializer=provider_pb2.CuedRequest.SerializeToString,
            response_deserializer=self._held_when_ready,
        )
        self.call: Any = None
        self.writes: list[CoreWrites] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def GenerateStreamOnCue(self, *args: Any, **kwargs: Any) -> Any:
        self.ended.clear()
        self.call = self.calls(*args, **kwargs)
        return self.call

    @property
    def crossings(self) -> int:
        return sum(writes.failed for writes in self.writes)

    def _held_when_ready(self, data: bytes) -> provider_pb2.GenerateChunk:
        chunk = provider_pb2.GenerateChunk.FromString(data)
        if chunk.ready_to_send:
            core = self.call
            if isinstance(core, _interceptor.InterceptedStreamStreamCall):  # its interceptors ran: the call is theirs
                core = core._interceptors_task.result()
            self.writes.append(CoreWrites(core._cython_call))
            core._cython_call = self.writes[-1]
            self.ended.wait(5)  # blocking: the loop held, the call's end not read
        return chunk


@pytest.mark.parametrize("interceptors", [[], bearer_token("token")], ids=["plain", "call-token"])
async def test_a_word_crossing_the_providers_refusal_is_charged_nothing_and_fails_with_their_status(
    tmp_path: Path, redis_store: RedisStore, interceptors: list[grpc.aio.ClientInterceptor]
) -> None:
    refusing = RefusedAtTheWord()
    with providers_in_a_thread(refusing) as providers:
        address = f"127.0.0.1:{providers.port}"
        async with (
            router_servicer_to(address, tmp_path, redis_store) as servicer,
            grpc.aio.insecure_channel(address, interceptors=interceptors) as channel,
        ):
            held = HeldAtTheWord(channel, refusing.ended)
            servicer.serving.providers = held  # type: ignore[assignment]
            for n in range(STREAMS):
                message = common_pb2.ChatMessage(role="user", content=f"Tell me story {n}")  # none from the cache
                request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
                with acting_as(ANONYMOUS), pytest.raises(ServiceError) as raised:
                    async for _ in servicer.CompleteStream(request, NoDeadline()):
                        pass
                assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, raised.value.message
                assert raised.value.reason == "UPSTREAM_TIMEOUT" and raised.value.metadata.get("sent") == "false"
                assert Decimal(raised.value.metadata.get("charged_usd", "0")) == 0, raised.value.metadata
                if held.crossings == CROSSINGS:
                    break
    # Read once the servicer closed, its charges run to their end.
    spent, _ = await redis_store.spent(Account("t", "anonymous"), period_id(servicer.settings.budget_period))
    assert held.crossings == CROSSINGS  # the racy moment reached, each time charged nothing
    assert spent == 0


class ReadyReadAfterTheEnd:
    """The router's providers stub, each GenerateStreamOnCue call's `ready_to_send` read by the router only once it has
    the call's status too (the providers' refusal right after it), as a loaded loop may take both in one turn: the
    call has ended, as the router sees it, when the word is to be given. Counts those calls."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = provider_pb2_grpc.ProviderStub(channel)
        self.ended_before_the_word = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def GenerateStreamOnCue(self, *args: Any, **kwargs: Any) -> Any:
        call = self.stub.GenerateStreamOnCue(*args, **kwargs)
        if isinstance(call, _interceptor.InterceptedStreamStreamCall):  # the call is its interceptors', once they ran
            call._interceptors_task.add_done_callback(lambda ran: self._read_ready_after_the_end(ran.result()))
        else:
            self._read_ready_after_the_end(call)
        return call

    def _read_ready_after_the_end(self, core: Any) -> None:
        core._cython_call = ReadyAfterTheStatus(core._cython_call, self)


class ReadyAfterTheStatus:
    """A grpc.aio call's core call whose read of `ready_to_send` returns once the call's status is in too."""

    def __init__(self, core: Any, stub: ReadyReadAfterTheEnd) -> None:
        self.core, self.stub = core, stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    async def receive_serialized_message(self) -> Any:
        message = await self.core.receive_serialized_message()
        if message is not cygrpc.EOF and provider_pb2.GenerateChunk.FromString(message).ready_to_send:
            await self.core.status()
            self.stub.ended_before_the_word += 1
        return message


@pytest.mark.parametrize("interceptors", [[], bearer_token("token")], ids=["plain", "call-token"])
async def test_a_refusal_read_before_the_word_is_charged_nothing_and_fails_with_their_status(
    tmp_path: Path, redis_store: RedisStore, interceptors: list[grpc.aio.ClientInterceptor]
) -> None:
    """The word to send is not written to a call that has ended: its next read raises the providers' status."""
    with providers_in_a_thread(RefusedAtTheWord()) as providers:
        address = f"127.0.0.1:{providers.port}"
        async with (
            router_servicer_to(address, tmp_path, redis_store) as servicer,
            grpc.aio.insecure_channel(address, interceptors=interceptors) as channel,
        ):
            ending = ReadyReadAfterTheEnd(channel)
            servicer.serving.providers = ending  # type: ignore[assignment]
            message = common_pb2.ChatMessage(role="user", content="Tell me a story")
            request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
            with acting_as(ANONYMOUS), pytest.raises(ServiceError) as raised:
                async for _ in servicer.CompleteStream(request, NoDeadline()):
                    pass
    assert ending.ended_before_the_word == 1
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, raised.value.message
    assert raised.value.reason == "UPSTREAM_TIMEOUT" and raised.value.metadata.get("sent") == "false"
    assert Decimal(raised.value.metadata.get("charged_usd", "0")) == 0, raised.value.metadata
    spent, _ = await redis_store.spent(Account("t", "anonymous"), period_id(servicer.settings.budget_period))
    assert spent == 0
