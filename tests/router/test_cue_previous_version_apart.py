"""Streams against a providers service of the version before (no GenerateStreamOnCue) in a process of its own, as a
rolling upgrade has it: each is served with GenerateStream. Such a service ends the cued call at once, unread; the
router's request, written meanwhile, fails in gRPC's core, which then reports the call INTERNAL, not UNIMPLEMENTED: such
streams failed UPSTREAM_ERROR. The providers' gRPC server with an event loop in a thread of its own (as another process
has), the router's servicer over the money store on the test's Redis, its loop held (as a loaded one's is) from the
moment its request may be written until the providers ended the call: the call's end arrives, unread, as it writes."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import grpc

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import RedisStore
from tests.router.servicer_kit import NoDeadline, router_servicer_to
from tests.router.test_admission import REGISTRY
from tests.router.test_providers_shed_calls import providers_in_a_thread

# Streams, at most, to have the router's request fail in gRPC's core LOST_STATUSES times: each stream's does in 36 to 94
# in 100 (grpcio 1.85), the others written before the call's end arrived.
STREAMS, LOST_STATUSES = 200, 3


class PreviousVersion(provider_pb2_grpc.ProviderServicer):
    """A providers service of the version before: GenerateStream alone, which writes three words. It tells `ended` when
    it has refused a GenerateStreamOnCue call (gRPC's generated base: UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    def GenerateStreamOnCue(self, request_iterator: Any, context: Any) -> Iterator[provider_pb2.GenerateChunk]:
        try:
            return super().GenerateStreamOnCue(request_iterator, context)
        finally:
            self.ended.set()

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        for _ in range(3):
            yield provider_pb2.GenerateChunk(delta="word ")
        usage = common_pb2.Usage(input_tokens=10, output_tokens=3)
        yield provider_pb2.GenerateChunk(final=provider_pb2.GenerateResponse(usage=usage, model=request.model))


class WrittenOnceEnded:
    """The router's providers stub, the request of each GenerateStreamOnCue call written only once the providers (in
    their thread) refused the call, the router's event loop held until then, so that it has not read the call's end;
    counting the writes that failed in gRPC's core, the call's status replaced with gRPC's INTERNAL."""

    def __init__(self, stub: provider_pb2_grpc.ProviderStub, ended: threading.Event) -> None:
        self.stub, self.ended = stub, ended
        self.lost_statuses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def GenerateStreamOnCue(self, *args: Any, **kwargs: Any) -> Any:
        self.ended.clear()
        call = self.stub.GenerateStreamOnCue(*args, **kwargs)
        write = call.write

        async def written_once_ended(request: provider_pb2.CuedRequest) -> None:
            with suppress(grpc.RpcError):  # the call's end already read: nothing to hold, the write says so
                await call.wait_for_connection()  # the call reaches the providers only once its metadata is sent
            self.ended.wait(5)  # blocking: the loop held, the call's end not read
            try:
                await write(request)
            except grpc.RpcError as err:
                self.lost_statuses += err.code() == grpc.StatusCode.INTERNAL
                raise

        call.write = written_once_ended
        return call


async def test_every_stream_is_served_by_a_providers_service_of_the_version_before_apart(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    previous = PreviousVersion()
    with providers_in_a_thread(previous) as providers:
        async with router_servicer_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store) as servicer:
            providers_stub = WrittenOnceEnded(servicer.serving.providers, previous.ended)
            servicer.serving.providers = cast(provider_pb2_grpc.ProviderStub, providers_stub)
            for n in range(STREAMS):
                message = common_pb2.ChatMessage(role="user", content=f"Tell me story {n}")  # none from the cache
                request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
                with acting_as(ANONYMOUS):
                    chunks = [chunk async for chunk in servicer.CompleteStream(request, NoDeadline())]
                assert "".join(chunk.delta for chunk in chunks) == "word word word "
                assert chunks[-1].HasField("final")
                if providers_stub.lost_statuses == LOST_STATUSES:
                    break
    assert providers_stub.lost_statuses == LOST_STATUSES  # the racy moment reached, each time served all the same
