"""A stream whose caller leaves while its charge is on its way to the money store: the charge runs to its end
(shielded), and the clean-up every stream ends with must not release the hold beside it. Over a store that is
out of reach, the release would reach the outbox first and, replayed first, settle the request at nothing, the
charge then refused as late. The router's servicer over the in-process store; a real providers gRPC server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import Account, MemoryStore, StoreUnavailable, period_id, to_pico
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY


class Answering(provider_pb2_grpc.ProviderServicer):
    """A providers service that streams a short answer with its usage."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        for word in ("an ", "answer"):
            yield provider_pb2.GenerateChunk(delta=word)
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        yield provider_pb2.GenerateChunk(final=provider_pb2.GenerateResponse(usage=usage, model=request.model))


class Unreachable(MemoryStore):
    """The in-process store behind a partition: a charge hangs on its open connection until it times out, a
    release (a new connection) is refused at once. `down = False` heals it."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.charging = asyncio.Event()

    async def charge(self, *args: Any, **kwargs: Any) -> bool:
        if self.down:
            self.charging.set()
            await asyncio.sleep(0.5)
            raise StoreUnavailable()
        return await super().charge(*args, **kwargs)


async def test_a_caller_leaving_while_its_stream_is_charged_never_has_the_hold_released_beside_it(
    tmp_path: Path,
) -> None:
    store = Unreachable()
    async with router_servicer(tmp_path, store, Answering()) as servicer:
        message = common_pb2.ChatMessage(role="user", content="Hello there")
        request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)

        async def read() -> None:
            with acting_as(ANONYMOUS):
                async for _ in servicer.CompleteStream(request, NoDeadline()):
                    store.down = True  # the partition begins once the request was admitted

        reading = asyncio.create_task(read())
        await store.charging.wait()  # every token delivered, the charge on its way
        reading.cancel()  # the caller leaves before the final chunk
        await asyncio.gather(reading, return_exceptions=True)
        await servicer.close()  # the shielded charge runs to its end: into the outbox
    outbox, settings = servicer.charger.outbox, servicer.settings
    store.down = False
    await outbox.replay(store)
    charged = to_pico(REGISTRY.get("cheap").cost_usd(10, 5))  # type: ignore[union-attr]
    assert await store.spent(Account("t", "anonymous"), period_id(settings.budget_period)) == (charged, charged)
