"""Streams against a providers service of the version before (no GenerateStreamOnCue) in a process of its own, as a
rolling upgrade has it: each is served with GenerateStream. Such a service ends the cued call at once, unread; the
router's request, written meanwhile, fails in gRPC's core, which then reports the call INTERNAL, not UNIMPLEMENTED: such
streams failed UPSTREAM_ERROR. The providers' gRPC server with an event loop in a thread of its own (as
another process has), the router's servicer over the money store on the test's Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import RedisStore
from tests.router.servicer_kit import NoDeadline, router_servicer_to
from tests.router.test_admission import REGISTRY
from tests.router.test_providers_shed_calls import providers_in_a_thread

STREAMS = 60  # without the fix, about half the runs fail (whether a run loses the race varies run to run)


class PreviousVersion(provider_pb2_grpc.ProviderServicer):
    """A providers service of the version before: GenerateStream alone, which writes three words."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        for _ in range(3):
            yield provider_pb2.GenerateChunk(delta="word ")
        usage = common_pb2.Usage(input_tokens=10, output_tokens=3)
        yield provider_pb2.GenerateChunk(final=provider_pb2.GenerateResponse(usage=usage, model=request.model))


async def test_every_stream_is_served_by_a_providers_service_of_the_version_before_apart(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    message = common_pb2.ChatMessage(role="user", content="Tell me a story")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    with providers_in_a_thread(PreviousVersion()) as providers:
        async with router_servicer_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store) as servicer:
            for _ in range(STREAMS):
                with acting_as(ANONYMOUS):
                    chunks = [chunk async for chunk in servicer.CompleteStream(request, NoDeadline())]
                assert "".join(chunk.delta for chunk in chunks) == "word word word "
                assert chunks[-1].HasField("final")
