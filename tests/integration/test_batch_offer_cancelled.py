"""A batch cancelled (or its edge stopping) while its lines are being offered to the router (SubmitBatch, PART_LINES at
a time) offers no further part: each part the router takes may defer its lines into a provider batch, admitted, sent
and charged, so a 50,000-line batch cancelled a moment after its start went on sending lines to providers for the
whole of its offer (250 calls, half a minute measured) after the cancel said none would be sent."""

from __future__ import annotations

import asyncio

import grpc

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.deferral import PART_LINES
from tests.integration.conftest import batch_edge, served_router
from tests.integration.test_batch_cancel_waiting import CREATE, status_of
from tests.integration.test_batches import small_file
from tests.waiting import eventually


class OfferedRouter(router_pb2_grpc.RouterServicer):
    """Holds the first offer until released; defers no line (each goes to Complete); records each offer's size and
    each line completed."""

    def __init__(self) -> None:
        self.offers: list[int] = []
        self.completed: list[str] = []
        self.released = asyncio.Event()

    async def SubmitBatch(
        self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitLinesResponse:
        self.offers.append(len(request.lines))
        await self.released.wait()
        return router_pb2.SubmitLinesResponse(
            lines=[router_pb2.DeferredLine(request_id=line.request_id) for line in request.lines]
        )

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        self.completed.append(request.request_id)
        return router_pb2.CompleteResponse(id=request.request_id, model="m", content="ok", cost_usd="0")


async def test_a_batch_cancelled_during_its_offer_offers_no_further_part(store_url: str | None) -> None:
    router = OfferedRouter()
    async with served_router(router) as router_addr, batch_edge(router_addr, store_url) as client:
        file = {"file": ("b.jsonl", small_file("line", 2 * PART_LINES + 1))}  # three parts
        uploaded = await client.post("/files", files=file, data={"purpose": "batch"})
        created = await client.post("/batches", json={"input_file_id": uploaded.json()["id"], **CREATE})
        batch_id = created.json()["id"]
        await eventually(lambda: router.offers, "the first part offered")
        cancelling = await client.post(f"/batches/{batch_id}/cancel")
        assert cancelling.json()["status"] == "cancelling"
        router.released.set()
        cancelled = await status_of(client, batch_id, "cancelled", 10)
    assert router.offers == [PART_LINES], router.offers  # not the two parts after the cancel
    assert router.completed == [] and cancelled["request_counts"]["completed"] == 0


class DoubtedRouter(OfferedRouter):
    """Fails the first offer mid-way (UNAVAILABLE: it may have sent the part's lines, so the batch keeps its offer in
    doubt and is resumed), holds the second until released; records the lines asked about (FindDeferred)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def SubmitBatch(
        self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitLinesResponse:
        if not self.offers:
            self.offers.append(len(request.lines))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the router went away mid-call")
        return await super().SubmitBatch(request, context)

    async def FindDeferred(
        self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitLinesResponse:
        self.asked.extend(line.request_id for line in request.lines)
        return router_pb2.SubmitLinesResponse(
            lines=[router_pb2.DeferredLine(request_id=line.request_id) for line in request.lines]
        )


async def test_a_batch_cancelled_during_an_offer_after_a_lost_reply_asks_about_the_lines_left(
    store_url: str | None,
) -> None:
    """The lost reply's lines may be in the parts left unoffered: the router is asked about them (FindDeferred, which
    admits none), as a cancelled batch's are, so that any it sent are collected rather than charged unanswered."""
    router = DoubtedRouter()
    async with served_router(router) as router_addr, batch_edge(router_addr, store_url) as client:
        file = {"file": ("b.jsonl", small_file("line", 2 * PART_LINES + 1))}
        uploaded = await client.post("/files", files=file, data={"purpose": "batch"})
        created = await client.post("/batches", json={"input_file_id": uploaded.json()["id"], **CREATE})
        batch_id = created.json()["id"]
        await eventually(lambda: len(router.offers) == 2, "the first part offered again", timeout_s=30)
        await client.post(f"/batches/{batch_id}/cancel")
        router.released.set()
        await status_of(client, batch_id, "cancelled", 10)
    assert router.offers == [PART_LINES, PART_LINES], router.offers
    left = {f"{batch_id}:line-{i}" for i in range(PART_LINES, 2 * PART_LINES + 1)}
    assert left <= set(router.asked), len(router.asked)  # the lines of the parts never offered again among them
    assert router.completed == []
