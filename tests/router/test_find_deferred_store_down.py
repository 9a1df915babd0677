"""FindDeferred while the money store is out of reach. A batch cancelled (or past its window) after an offer whose
reply it lost asks the router what became of that offer's lines; the router reads each line's pending charge to
answer. Unable to read it, the router must fail the call (the edge backs off and asks again), not answer the lines
"not deferred": the edge takes that answer for good and forgets the offer, so a line the router had sent in a
provider batch is never collected (its answer lost, and its hold charged when it lapses a day later, while an
expired batch's error file says `batch_expired`, charged nothing). A real router gRPC server over Redis through a
proxy that can go down; the edge's Deferral."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.batches import deferral
from services.batches.deferral import OFFER_IN_DOUBT, Deferral, Unreached
from services.batches.store import MemoryStore as BatchStore
from services.batches.store import batch_key
from services.router.store import Account, RedisStore
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_collect_model import REGISTRY
from tests.router.test_resubmitted_batch_lines import BATCH, BATCH_ID, CREATE_S, LINES, SlowBatchProvider


@pytest.fixture
async def proxied_store(proxy: LossyProxy, redis_url: str) -> AsyncIterator[RedisStore]:
    async with store_on(proxy.url_for(redis_url)) as made:
        yield made


async def test_lines_looked_for_while_the_store_is_out_of_reach_are_asked_for_again(
    proxy: LossyProxy,
    proxied_store: RedisStore,
    redis_store: RedisStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = BatchStore()
    account, line = Account("acme", "anonymous"), f"{BATCH_ID}:c1"
    async with (
        served_router(tmp_path, proxied_store, SlowBatchProvider(), REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        edge = Deferral(files, router_pb2_grpc.RouterStub(channel), poll_s=0.1)
        monkeypatch.setattr(deferral, "CALL_S", CREATE_S / 4)  # the edge's call ends before the router's reply
        assert await edge.offer(BATCH_ID, dict(BATCH), LINES, set()) == Unreached()
        monkeypatch.undo()
        for _ in range(100):  # the router ran the call to its end: the line admitted and sent in pbatch-1
            pending = await redis_store.pending_charge(account, line)
            if pending is not None and pending.provider_batch == "pbatch-1":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the line was never sent in a provider batch")
        # The batch is cancelled: its next run asks the router about the offer in doubt, the store out of reach.
        batch = {**BATCH, **await files.get(batch_key(BATCH_ID))}
        assert OFFER_IN_DOUBT in batch
        proxy.go_down()
        try:
            found = await edge.recover(BATCH_ID, batch, LINES, set())
        finally:
            proxy.come_back()
        # No answer: the batch is resumed later, its offer still in doubt.
        assert found == Unreached()
        assert OFFER_IN_DOUBT in await files.get(batch_key(BATCH_ID))
        for _ in range(50):  # the router's connections to its store reopen
            found = await edge.recover(BATCH_ID, batch, LINES, set())
            if not isinstance(found, Unreached):
                break
            await asyncio.sleep(0.1)
    assert found == {0: {"model": "strong", "provider_batch_id": "pbatch-1"}}


def line_request() -> router_pb2.CompleteRequest:
    """LINES' one line as the edge offers it: its request id, who pays, its model."""
    message = common_pb2.ChatMessage(role="user", content="Explain tides")
    return router_pb2.CompleteRequest(
        messages=[message], model="strong", max_tokens=200, request_id=f"{BATCH_ID}:c1", tenant="acme"
    )


async def test_offers_and_questions_while_the_store_is_out_of_reach_say_so(
    proxy: LossyProxy, proxied_store: RedisStore, tmp_path: Path
) -> None:
    """SubmitBatch and FindDeferred fail UNAVAILABLE (STORE_UNAVAILABLE) when they cannot look a line up, admitting
    nothing, and the edge asks again later: a SubmitBatch line taken as not sent before would go to Complete, refused
    as a duplicate once the store is back if it was sent in a recorded batch. Before, both failed INTERNAL on an
    exception (a name left undefined), the retry resting on the edge backing off from any failure."""
    lines = router_pb2.SubmitLinesRequest(lines=[line_request()])
    async with (
        served_router(tmp_path, proxied_store, SlowBatchProvider(), REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        proxy.go_down()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as offered:
                await stub.SubmitBatch(lines, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as asked:
                await stub.FindDeferred(lines, timeout=10)
        finally:
            proxy.come_back()
        found = await stub.FindDeferred(lines, timeout=10)
    for failed in (offered, asked):
        error = ServiceError.from_rpc_error(failed.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert [(line.request_id, line.deferred) for line in found.lines] == [(f"{BATCH_ID}:c1", False)]  # none admitted
