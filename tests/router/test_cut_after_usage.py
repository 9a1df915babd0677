"""A providers stream failing as a timeout (its upstream cut by the call's deadline) after the upstream reported its
whole usage (the providers mark it usage_final: services/providers/dispatch.py) is charged that usage, not the
attempt's worst case: nothing it generated is unknown. Without the mark, a timeout is of unknown outcome, owed its
worst case on top of what the providers measured. The router's servicer over the in-process store; a real providers
gRPC server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import USAGE_FINAL, ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY

USAGE = common_pb2.Usage(input_tokens=20, output_tokens=30)


class CutAfterUsage(provider_pb2_grpc.ProviderServicer):
    """Fails a stream as the providers fail one cut by its deadline, with the usage the upstream reported."""

    def __init__(self, final: bool, measured: bool = True) -> None:
        self.final, self.measured = final, measured

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        cost = REGISTRY.models[0].usage_cost_usd(USAGE)
        metadata = {"provider": "p", "model": request.model, "retries": "0", "estimated": "false"}
        if self.measured:
            metadata |= {"input_tokens": "20", "output_tokens": "30", "cost_usd": format(cost, "f")}
        if self.final and request.usage_final:  # told only to a caller that asks, as the providers tell it
            metadata[USAGE_FINAL] = "true"
        error = ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "p: no answer in time", metadata)
        await context.abort(error.code, error.message, error.trailing_metadata())
        yield provider_pb2.GenerateChunk()  # never reached: a generator, as the servicer's method is


async def charged(tmp_path: Path, final: bool, measured: bool = True) -> Decimal:
    """What a stream of the cheap model, cut so, was charged in the ledger."""
    store = MemoryStore()
    message = common_pb2.ChatMessage(role="user", content="Look it up.")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    async with router_servicer(tmp_path, store, CutAfterUsage(final, measured)) as servicer:
        with acting_as(ANONYMOUS), pytest.raises(ServiceError):
            async for _ in servicer.CompleteStream(request, NoDeadline()):
                pass
    [record] = list(store.ledger)
    return Decimal(record["cost_usd"])


async def test_a_timeout_after_the_whole_usage_was_reported_is_charged_that_usage(tmp_path: Path) -> None:
    cheap = REGISTRY.get("cheap")
    assert cheap is not None and REGISTRY.models[0] is cheap
    assert await charged(tmp_path, final=True) == cheap.usage_cost_usd(USAGE)


async def test_a_timeout_of_unknown_outcome_is_owed_its_worst_case_too(tmp_path: Path) -> None:
    cheap = REGISTRY.get("cheap")
    assert cheap is not None
    assert await charged(tmp_path, final=False) > cheap.usage_cost_usd(USAGE)


async def test_a_whole_usage_marked_without_its_measure_is_no_bill(tmp_path: Path) -> None:
    """The mark with no counts (the providers leave them out of a failure they price at nothing: their registry,
    reloaded on its own, at a price of 0 the request was not admitted at; or a buggy providers service) is charged
    the worst case, not nothing."""
    worst = await charged(tmp_path, final=False, measured=False)
    assert worst > 0
    assert await charged(tmp_path, final=True, measured=False) == worst
