"""A batch line answered and charged by a collect whose reply was lost, then a providers outage longer than the next
collect's deadline: that collect ended the line "settled before", at its charge, without the answer the provider gave,
which was lost to the caller though it paid for it. The collect now keeps each line it settles, as it tells it, in
the money store before the charge, and a later collect tells that again. The router's servicer over Redis and the
real providers service on loopback, before the fake OpenAI Batch API (its outage: a 503 to every request); the
money's clock held by the test, the collect's waits moving it."""

from __future__ import annotations

import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import router_pb2
from services.router.deferred import ANSWER_KEPT_BYTES, kept_line, told_line
from services.router.servicer import RouterServicer
from services.router.store import PICO, MemoryStore, RedisStore, Store, period_id
from tests.conftest import ledger_records
from tests.fakes import FakeOpenAI, Fault
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import NoDeadline
from tests.router.test_collect_charge_reply_lost import COLLECT, ChargeReplyLost
from tests.router.test_collect_model import ACCOUNT, LINE, TENANT_CALLER, batch_cost, collect_of, send_line
from tests.router.test_collect_passing_failures import Deadline, WaitingClock, clocked_router
from tests.router.test_collect_settled_lines import ForgettingAfterOnePoll
from tests.router.test_collect_unreadable_batch import polls, served


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue("redis_store") if request.param == "redis" else MemoryStore()


async def spent(store: Store) -> int:
    return (await store.spent(ACCOUNT, period_id("day")))[0]


async def records(store: Store) -> list[dict[str, Any]]:
    kept = await ledger_records(store.redis) if isinstance(store, RedisStore) else list(store.ledger)  # type: ignore[attr-defined]
    return [r for r in kept if r["tenant"] == "acme"]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> WaitingClock:
    return WaitingClock(monkeypatch)


async def collected(router: RouterServicer, collect: router_pb2.CollectBatchRequest) -> router_pb2.CollectBatchResponse:
    """The collect of a provider batch the fake runs as it is polled: asked until it ended."""
    for _ in range(10):
        reply = await router.CollectBatch(collect, NoDeadline())
        if reply.ended:
            return reply
    raise AssertionError("the fake provider batch never ended")


async def test_an_answer_whose_collect_reply_was_lost_is_told_through_a_providers_outage(
    store: Store, tmp_path: Path, clock: WaitingClock
) -> None:
    with FakeOpenAI() as upstream:
        async with served(tmp_path, store, upstream) as router:  # type: ignore[arg-type]
            router.deferred.wait = clock.wait
            with acting_as(TENANT_CALLER):
                sent = await send_line(router)
                collect = collect_of(sent)
                lost = await collected(router, collect)  # its reply never reaches the caller
                (answered,) = lost.lines
                assert answered.succeeded and answered.response.content, lost
                charged = await spent(store)
                assert charged > 0
                upstream.enqueue(*[Fault.error(503)] * 1000)  # the provider out of reach past the caller's time
                before = polls(upstream)
                reply = await router.CollectBatch(collect, Deadline(60.0))
                again = await router.CollectBatch(collect, Deadline(60.0))
            tried = polls(upstream) - before
    (line,) = reply.lines
    assert (reply.ended, line.succeeded) == (True, True), reply
    assert line.response == answered.response  # the answer charged, its cost that charge
    assert Decimal(line.response.cost_usd) == Decimal(charged) / PICO
    assert again == reply
    assert tried > 2 and clock.waits  # the provider was asked, through its outage, within the caller's time
    assert await spent(store) == charged  # charged once
    assert [r["outcome"] for r in await records(store)] == ["ok"]


def test_a_kept_line_is_bounded_and_read_only_for_its_batch() -> None:
    line = router_pb2.CollectedLine(request_id="r1", succeeded=True)
    line.response.content = "an answer"
    line.response.logprobs_json = "[" + ",".join(f'{{"token": "t{i}", "logprob": -{i}.5}}' for i in range(10)) + "]"
    kept = kept_line("pbatch-1", line)
    assert kept is not None
    told = told_line(kept, "pbatch-1")
    # Its log-probabilities (~25x its text) never kept: a tenant's cheap lines would fill the money Redis.
    assert told is not None and (told.response.content, told.response.logprobs_json) == ("an answer", "")
    assert told_line(kept, "pbatch-2") is None  # kept for another batch: not this one's answer
    line.response.content = secrets.token_hex(ANSWER_KEPT_BYTES)  # past the bound: no compression brings it within
    assert kept_line("pbatch-1", line) is None


async def test_the_first_line_kept_stays(store: Store) -> None:
    """A line is kept once: of two collects settling it at once, the second to keep it (its charge then refused as
    charged before, told at that charge) keeps nothing over the first. Else one that gave the line up near its window's
    end (the provider unread) would leave its error over the answer charged, for the next collect to tell."""
    answered = kept_line("pbatch-1", router_pb2.CollectedLine(request_id="r1", succeeded=True))
    given_up = kept_line("pbatch-1", router_pb2.CollectedLine(request_id="r1", error="gave up", charged_usd="1"))
    assert answered is not None and given_up is not None
    await store.keep_answer(ACCOUNT, "r1", answered, 60.0)
    await store.keep_answer(ACCOUNT, "r1", given_up, 60.0)
    assert await store.kept_answer(ACCOUNT, "r1") == answered


async def test_a_line_kept_for_another_batch_is_replaced(store: Store) -> None:
    """The tenant's request id used again in a new provider batch while its earlier line is kept: the new line is kept
    over it (no collect of the new batch would tell the old one), and stays as the first kept for its batch."""
    old, new, later = (
        kept_line(batch, router_pb2.CollectedLine(request_id="r1", succeeded=True, error=why))
        for batch, why in (("pbatch-1", ""), ("pbatch-10", ""), ("pbatch-10", "later"))
    )
    assert old is not None and new is not None and later is not None
    assert await store.keep_answer(ACCOUNT, "r1", old, 60.0)
    assert await store.keep_answer(ACCOUNT, "r1", new, 60.0)  # pbatch-10 begins with pbatch-1: not the same batch
    assert not await store.keep_answer(ACCOUNT, "r1", later, 60.0)
    assert await store.kept_answer(ACCOUNT, "r1") == new


async def test_the_line_whose_charge_landed_replaces_the_one_kept_first(store: Store) -> None:
    """Of two collects settling a line at once, the one whose charge landed keeps its line over the other's, kept
    first (Deferred._keep_over)."""
    given_up, answered = (
        kept_line("pbatch-1", router_pb2.CollectedLine(request_id="r1", succeeded=succeeded))
        for succeeded in (False, True)
    )
    assert given_up is not None and answered is not None
    assert await store.keep_answer(ACCOUNT, "r1", given_up, 60.0)
    assert not await store.keep_answer(ACCOUNT, "r1", answered, 60.0)
    assert await store.keep_answer(ACCOUNT, "r1", answered, 60.0, replace=True)
    assert await store.kept_answer(ACCOUNT, "r1") == answered


async def test_an_answer_whose_charges_reply_was_lost_is_told_through_a_providers_outage(
    tmp_path: Path, proxy: LossyProxy, redis_url: str, clock: WaitingClock
) -> None:
    """The line is kept before its charge: its charge's reply lost (the store out of reach, as the collect heard it:
    it fails, nothing told), the charge made all the same, the next collect tells the answer charged though the
    provider forgot the batch meanwhile. Kept after the charge, it was never kept. A real Redis behind a proxy that
    loses the charge's reply; a stand-in providers service answering once, then forgetting the batch."""
    store = ChargeReplyLost(proxy.url_for(redis_url))
    provider = ForgettingAfterOnePoll()
    try:
        async with clocked_router(tmp_path, store, provider, clock) as router:
            with acting_as(TENANT_CALLER):
                await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
                store.proxy = proxy
                with pytest.raises(ServiceError) as failed:
                    await router.CollectBatch(COLLECT, NoDeadline())
                assert failed.value.code == grpc.StatusCode.UNAVAILABLE  # its caller collects again
                reply = await router.CollectBatch(COLLECT, Deadline(60.0))
        charged = await spent(store)
    finally:
        await store.close()
    (line,) = reply.lines
    assert (reply.ended, line.succeeded, line.response.content) == (True, True, "an answer"), reply
    assert Decimal(line.response.cost_usd) == Decimal(charged) / PICO
    assert charged == batch_cost("strong")  # charged once, by the collect whose reply was lost
