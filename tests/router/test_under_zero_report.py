"""A providers service's report of a negative token count (no upstream bills one: the gateways take such a count for
none, and count locally) is charged the hold, as a report past it is, never its negative cost: charged as it stood, the
tenant's and key's spend went down by it, so the budget let through that much more than its limit. So is a provider
batch line's result reporting one, as a line's past its hold is. The router (behind its own gRPC server, or its
servicer called as that server would) over a real providers gRPC server on loopback, the money store on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.deferred import UNDER_REPORTED
from services.router.store import PICO, RedisStore, period_id, to_pico
from tests.router import test_collect_model as batches
from tests.router.servicer_kit import NoDeadline, router_servicer, router_stub, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_escalation_money import settled

# Ten million output tokens below nothing: -$15 at the cheap model's price, where its answer costs a cent at most.
NEGATIVE = common_pb2.Usage(input_tokens=10, output_tokens=-10_000_000)
# Partly below nothing: its cost still above nothing ($0.00005), a third of what its 100 output tokens alone cost.
PARTLY_NEGATIVE = common_pb2.Usage(input_tokens=-200, output_tokens=100)
REPORTS = pytest.mark.parametrize("report", [NEGATIVE, PARTLY_NEGATIVE], ids=["negative", "partly-negative"])


class UnderReporting(provider_pb2_grpc.ProviderServicer):
    """The cheap model answers, reporting a negative token count, unary or streamed."""

    def __init__(self, report: common_pb2.Usage) -> None:
        self.report = report

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        return provider_pb2.GenerateResponse(
            content="a fine answer", usage=self.report, model="cheap", provider="p", finish_reason="stop"
        )

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        yield provider_pb2.GenerateChunk(delta="a fine answer")
        final = provider_pb2.GenerateResponse(usage=self.report, model="cheap", provider="p", finish_reason="stop")
        yield provider_pb2.GenerateChunk(final=final)


@REPORTS
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_negative_report_is_charged_the_hold(
    tmp_path: Path, redis_url: str, stream: bool, report: common_pb2.Usage
) -> None:
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", model="cheap", max_tokens=100)
    async with (
        store_on(redis_url) as store,
        router_stub(tmp_path, store, UnderReporting(report)) as router,
    ):
        if stream:
            chunks = [chunk async for chunk in router.CompleteStream(request, timeout=30)]
            reply = chunks[-1].final
        else:
            reply = await router.Complete(request, timeout=30)
    spent, held, [record] = await settled(redis_url)
    charged = Decimal(record["cost_usd"])
    assert charged > 0 and Decimal(reply.cost_usd) == charged
    assert spent == (to_pico(charged), to_pico(charged)) and held == (0, 0)
    assert "usage reported below nothing" in record["reason_detail"]


class UnderReportedBatch(batches.BatchProvider):
    """The provider batch ended, its result for each line reporting a negative token count."""

    def __init__(self, report: common_pb2.Usage) -> None:
        super().__init__()
        self.report = report

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        answer = provider_pb2.GenerateResponse(content="an answer", usage=self.report, finish_reason="stop")
        results = [
            provider_pb2.BatchLineResult(request_id=i, succeeded=True, response=answer) for i in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


@REPORTS
async def test_a_batch_line_reported_negative_is_charged_its_hold(
    tmp_path: Path, redis_store: RedisStore, report: common_pb2.Usage
) -> None:
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
    async with router_servicer(tmp_path, redis_store, UnderReportedBatch(report), batches.REGISTRY) as router:
        with acting_as(batches.TENANT_CALLER):
            submit = router_pb2.SubmitLinesRequest(lines=[batches.LINE])
            (sent,) = (await router.SubmitBatch(submit, NoDeadline())).lines
            (line,) = (await router.CollectBatch(collect, NoDeadline())).lines
    spent = await redis_store.spent(batches.ACCOUNT, period_id("day"))
    held = Decimal(sent.held_usd)
    assert held > 0 and line.error == UNDER_REPORTED and Decimal(line.charged_usd) == held
    assert spent == (to_pico(held), to_pico(held)) and Decimal(spent[0]) / PICO == held
