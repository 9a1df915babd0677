"""A batch run that cannot offer its lines (the router out of reach) ends, parked for a second, then two, four...
up to an adoption pass: it was run again only at the next pass, up to 15 s on, however soon the router came back
(a restart), and not sooner while its place went unused."""

from __future__ import annotations

import time

import grpc
import pytest

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches import runner
from services.batches.runner import LEASE_S
from tests.integration.conftest import batch_edge, served_router
from tests.integration.test_batch_cancel_waiting import create, status_of


class ComingBackRouter(router_pb2_grpc.RouterServicer):
    """Out of reach for its first `down` offers (UNAVAILABLE, as a router's address answers while it restarts),
    recording when each came; then without provider batches, answering each line."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.offers: list[float] = []
        self.completed: list[str] = []  # the request ids of the lines sent

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext) -> None:
        self.offers.append(time.monotonic())
        if len(self.offers) <= self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the router is restarting")
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no provider batches")

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        self.completed.append(request.request_id)
        return router_pb2.CompleteResponse(id=request.request_id, model="back", content="ok", cost_usd="0")


async def test_a_batch_whose_router_is_out_of_reach_is_run_again_after_a_short_back_off(
    store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first back-off (1 s) halved: 0.5, 1 and 2 s, not 1, 2 and 4. What is checked is that each is waited
    # for, doubled each time, and no longer (the batch runs again at its end, not at the next adoption pass).
    monkeypatch.setattr(runner, "UNREACHED_FIRST_S", 0.5)
    router = ComingBackRouter(down=3)
    async with served_router(router) as router_addr, batch_edge(router_addr, store_url) as client:
        batch_id = await create(client, "back")
        done = await status_of(client, batch_id, "completed", LEASE_S / 2 - 2)  # before the next adoption pass
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    gaps = [later - sooner for sooner, later in zip(router.offers, router.offers[1:], strict=False)]
    assert len(gaps) == 3, gaps
    for tries, gap in enumerate(gaps):  # 0.5 s, 1 s, 2 s: a router down is not called again and again
        backed_off_s = runner.UNREACHED_FIRST_S * 2**tries
        # Late by less than the first back-off: no gap fits two steps, so a back-off that does not double fails.
        assert backed_off_s - 0.05 <= gap <= backed_off_s + 0.4, gaps
