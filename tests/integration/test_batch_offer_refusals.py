"""Which refusals of a batch's offer (SubmitBatch) say the router admitted none of its lines (router_refusals.py): only
then is the batch not marked as having an offer whose reply was lost (OFFER_IN_DOUBT). Left marked, a batch cancelled
or past its window must first ask the router (FindDeferred) about lines it never read, waiting while the router is out
of reach; marked wrongly, one whose lines the router did send to a provider batch would never collect them (each
charged its hold, no answer in the batch's files). The router's own gRPC server refuses each offer deterministically
(an interceptor before its servicer) on loopback; the edge's batch store is a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from llmrouter.errors import OVERLOADED, ServiceError, overloaded
from llmrouter.interceptors import Continuation
from llmrouter.overload import RETRY_DELAY_S
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches.deferral import OFFER_IN_DOUBT, Deferral, Unreached
from services.batches.runner import UNREACHED
from services.batches.store import RedisStore, batch_key
from tests.integration.conftest import batch_edge
from tests.integration.test_batch_cancel_waiting import create, status_of
from tests.router.test_resubmitted_batch_lines import BATCH, BATCH_ID, LINES

SUBMIT_BATCH = "/llmrouter.v1.Router/SubmitBatch"
FIND_DEFERRED = "/llmrouter.v1.Router/FindDeferred"
Refusal = tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]


class RefusingCalls(grpc.aio.ServerInterceptor):
    """Each call of a method named in `refusals` (its path) refused with its status before the servicer sees it, as
    `refusals` stands when the call comes; the other methods served."""

    def __init__(self, refusals: dict[str, Refusal]) -> None:
        self.refusals = refusals

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if details.method not in self.refusals:
            return await continuation(details)
        code, message, trailing = self.refusals[details.method]

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message, trailing)

        return grpc.unary_unary_rpc_method_handler(refuse)


class AskedRouter(router_pb2_grpc.RouterServicer):
    """Answers FindDeferred (none of the lines sent), recording when each ask reached it (wall clock, as a batch's
    parked_until); never reached by an offer."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def FindDeferred(
        self, request: router_pb2.SubmitLinesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitLinesResponse:
        self.asked.append(time.time())
        return router_pb2.SubmitLinesResponse(
            lines=[router_pb2.DeferredLine(request_id=line.request_id) for line in request.lines]
        )


@asynccontextmanager
async def refusing_router(refusals: dict[str, Refusal], servicer: AskedRouter) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[RefusingCalls(refusals)])
    router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def explained(error: ServiceError) -> Refusal:
    """The refusal as one of our services sends it (ErrorInfo, RetryInfo)."""
    return error.code, error.message, error.trailing_metadata()


def in_another_domain(error: ServiceError) -> Refusal:
    """The refusal with its ErrorInfo in another domain than ours (a proxy's): not our router's word."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain="upstream.example", metadata=error.metadata))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[info])
    return error.code, error.message, (("grpc-status-details-bin", status.SerializeToString()),)


SHED: Refusal = (grpc.StatusCode.CANCELLED, "", ())  # dropped by the router's gRPC server, unhandled
CUT_MID_CALL: Refusal = (grpc.StatusCode.UNAVAILABLE, "Socket closed", ())  # the router went away mid-call
ADMITTED_NOTHING = {
    "shed by the router's gRPC server": SHED,
    "the router's own OVERLOADED": explained(overloaded("router", 2)),
}
MAYBE_ADMITTED = {
    # It may have sent the lines.
    "cut mid-call": CUT_MID_CALL,
    # Passed on by a router that read the call: not a refusal at the router's door.
    "the providers' OVERLOADED": explained(overloaded("providers", 2)),
    "an OVERLOADED in another domain": in_another_domain(overloaded("router", 2)),
}


async def offered(
    refusal: Refusal, redis_url: str, marks: dict[str, str] | None = None
) -> tuple[dict[int, dict[str, str]] | Unreached, dict[str, bytes]]:
    """The offer of a batch's lines (its hash with `marks` too) to a router refusing it: what the offer returned, and
    the batch's hash then."""
    store = RedisStore(redis_url)
    try:
        batch = {**BATCH, **{name: value.encode() for name, value in (marks or {}).items()}}
        await store.put(batch_key(BATCH_ID), dict(batch))
        async with (
            refusing_router({SUBMIT_BATCH: refusal}, AskedRouter()) as address,
            grpc.aio.insecure_channel(address) as channel,
        ):
            result = await Deferral(store, router_pb2_grpc.RouterStub(channel), 0.1).offer(
                BATCH_ID, batch, LINES, set()
            )
        return result, await store.get(batch_key(BATCH_ID))
    finally:
        await store.close()


@pytest.mark.parametrize("refusal", ADMITTED_NOTHING.values(), ids=ADMITTED_NOTHING.keys())
async def test_an_offer_the_router_admitted_nothing_of_is_not_left_in_doubt(refusal: Refusal, redis_url: str) -> None:
    result, batch = await offered(refusal, redis_url)
    assert isinstance(result, Unreached)
    assert OFFER_IN_DOUBT not in batch, batch


@pytest.mark.parametrize("refusal", MAYBE_ADMITTED.values(), ids=MAYBE_ADMITTED.keys())
async def test_an_offer_the_router_may_have_admitted_stays_in_doubt(refusal: Refusal, redis_url: str) -> None:
    result, batch = await offered(refusal, redis_url)
    assert result == Unreached(overloaded_s=None)  # parked as for a router out of reach, not for a delay
    assert batch.get(OFFER_IN_DOUBT) == b"1", batch


async def test_a_batch_whose_offers_were_shed_is_cancelled_at_once_without_asking_the_router(redis_url: str) -> None:
    """Its offers all shed by the router's gRPC server (none read), the batch backs off as from a router out of reach;
    cancelled, it ends at once and asks the router (FindDeferred) nothing: none of its lines can be at a provider."""
    router = AskedRouter()
    admin = redis.from_url(redis_url)
    try:
        async with (
            refusing_router({SUBMIT_BATCH: SHED}, router) as router_addr,
            batch_edge(router_addr, redis_url) as client,
        ):
            batch_id = await create(client, "shed")
            deadline = time.monotonic() + 10
            while int(await admin.hget(batch_key(batch_id), UNREACHED) or 0) < 2:  # parked 2 s now
                assert time.monotonic() < deadline, "the batch did not back off"
                await asyncio.sleep(0.02)
            marked = await admin.hexists(batch_key(batch_id), OFFER_IN_DOUBT)
            await client.post(f"/batches/{batch_id}/cancel")
            cancelled = await status_of(client, batch_id, "cancelled", 1)  # not at the park's end
    finally:
        await admin.aclose()
    assert not marked
    assert router.asked == []  # nothing asked about lines the router never read
    assert cancelled["request_counts"] == {"total": 2, "completed": 0, "failed": 0}


def router_overloaded(retry_info_s: int | None, **metadata: str) -> Refusal:
    """The router's OVERLOADED with these ErrorInfo metadata beside its service, and RetryInfo when given."""
    return explained(
        ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED, "busy", {"service": "router", **metadata}, retry_info_s
        )
    )


# The delay the batch waits, read from the refusal: RetryInfo first (gRPC's standard word), then the ErrorInfo's
# retry_after_s when usable, else the delay the router's admission gives.
DELAYS = {
    "RetryInfo over retry_after_s": (router_overloaded(3, retry_after_s="7"), 3.0),
    "retry_after_s without RetryInfo": (router_overloaded(None, retry_after_s="4"), 4.0),
    "neither": (router_overloaded(None), float(RETRY_DELAY_S)),
    "a retry_after_s below nothing": (router_overloaded(None, retry_after_s="-5"), float(RETRY_DELAY_S)),
    "a retry_after_s not finite": (router_overloaded(None, retry_after_s="nan"), float(RETRY_DELAY_S)),
}


@pytest.mark.parametrize(("refusal", "delay_s"), DELAYS.values(), ids=DELAYS.keys())
async def test_an_offer_refused_overloaded_waits_the_delay_the_router_asked_for(
    refusal: Refusal, delay_s: float, redis_url: str
) -> None:
    result, batch = await offered(refusal, redis_url)
    assert result == Unreached(overloaded_s=delay_s)
    assert OFFER_IN_DOUBT not in batch, batch


@pytest.mark.parametrize("refusal", ADMITTED_NOTHING.values(), ids=ADMITTED_NOTHING.keys())
async def test_an_offer_after_one_whose_reply_was_lost_stays_in_doubt_whatever_refused(
    refusal: Refusal, redis_url: str
) -> None:
    """An earlier offer's reply was lost: the router may hold lines of it in provider batches. A later offer it
    admitted nothing of says nothing of those: dropping the mark, a batch cancelled or past its window would never
    ask for them (FindDeferred), and they would go uncollected, each charged its hold, unanswered in its files."""
    result, batch = await offered(refusal, redis_url, {OFFER_IN_DOUBT: "1"})
    assert isinstance(result, Unreached)
    assert batch.get(OFFER_IN_DOUBT) == b"1", batch
