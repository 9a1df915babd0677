"""Escalation's money: a weak answer asked again of a stronger tier is two generations of one request, each charged
once, on one ledger record, within the request's hold and its max_cost_usd, when the caller leaves while the stronger
one is generated, and however the stronger attempt ends (answered, cut with an unknown outcome, or over-reported); a
caller that leaves while the weak answer is generated has that one alone, charged once, and nothing escalated. The
router behind its own gRPC server, real providers and classifier gRPC servers on loopback; the money store on one Redis
server and on a real Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.redis_connect import connect
from llmrouter.v1 import (
    common_pb2,
    provider_pb2,
    provider_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from services.router.outbox import Outbox, OutboxCharge
from services.router.store import PICO, Account, key_id, period_id, to_pico
from services.router.store.keys import AccountKeys
from tests.conftest import ledger_records
from tests.router.servicer_kit import NearScores, router_stub, store_on
from tests.router.test_admission import REGISTRY
from tests.waiting import eventually, rpcs_ended

REFUSAL = "I'm sorry, but I can't help with that request."
CHEAP, STRONG = REGISTRY.get("cheap"), REGISTRY.get("strong")
assert CHEAP is not None and STRONG is not None
WEAK_USAGE = common_pb2.Usage(input_tokens=10, output_tokens=8)
MAX_COST = Decimal("0.002")


class Escalating(provider_pb2_grpc.ProviderServicer):
    """The cheap model declines (a refusal: escalated); the strong one waits for `release`, then answers writing all
    it was allowed (`over` times that when it over-reports), or fails with an unknown outcome."""

    def __init__(self, strong: str = "answer", hold_cheap: bool = False) -> None:
        self.strong = strong  # "answer", "over" or "cut"
        self.max_tokens: dict[str, list[int]] = {}
        self.generating = {"cheap": asyncio.Event(), "strong": asyncio.Event()}
        self.release = {"cheap": asyncio.Event(), "strong": asyncio.Event()}
        if not hold_cheap:
            self.release["cheap"].set()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.max_tokens.setdefault(request.model, []).append(request.max_tokens)
        self.generating[request.model].set()
        await self.release[request.model].wait()
        if request.model == "cheap":
            return provider_pb2.GenerateResponse(
                content=REFUSAL, usage=WEAK_USAGE, model="cheap", provider="p", finish_reason="stop"
            )
        if self.strong == "cut":  # no ErrorInfo: the upstream may have generated it all
            await context.abort(grpc.StatusCode.INTERNAL, "connection reset after the request was sent")
        output = request.max_tokens * (10 if self.strong == "over" else 1)
        usage = common_pb2.Usage(input_tokens=10, output_tokens=output)
        return provider_pb2.GenerateResponse(
            content="a fine answer", usage=usage, model="strong", provider="p", finish_reason="stop"
        )


def ask(**fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(
        messages=[message], tenant="acme", quality_target=0.5, max_cost_usd=str(MAX_COST), **fields
    )


async def settled(url: str) -> tuple[tuple[int, int], tuple[int, int], list[dict[str, Any]]]:
    """The tenant's (spend, key spend), its holds, and its ledger records, once the router has stopped."""
    account = Account("acme", key_id(""))
    async with store_on(url) as store:
        spent = await store.spent(account, period_id("day"))
        held = await store.held_pico(account)
    client = connect(url)
    try:
        records = [r for r in await ledger_records(client) if r["tenant"] == "acme"]
    finally:
        await client.aclose()
    return spent, held, records


@asynccontextmanager
async def escalating_router(
    tmp_path: Path, url: str, provider: Escalating, **settings: Any
) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """A router served over the store at `url`, its classifier's scores near (NearScores): a stub calling it."""
    async with (
        store_on(url) as store,
        router_stub(tmp_path, store, provider, classifier=NearScores(), **settings) as router,
    ):
        yield router


async def left_while_generating(
    router: router_pb2_grpc.RouterStub, provider: Escalating, model: str, stream: bool
) -> None:
    """A call (a buffered stream, read to its decision, or a unary call) its caller leaves once `model`'s answer is
    under way."""
    if stream:
        call: Any = router.CompleteStream(ask(buffer_stream=True), timeout=30)
        assert (await call.read()).WhichOneof("kind") == "decision"
    else:
        call = router.Complete(ask(), timeout=30)
    await provider.generating[model].wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await (call.read() if stream else call)


def weak_cost() -> Decimal:
    assert CHEAP is not None
    return CHEAP.usage_cost_usd(WEAK_USAGE)


def strong_cost(output: int) -> Decimal:
    assert STRONG is not None
    return STRONG.usage_cost_usd(common_pb2.Usage(input_tokens=10, output_tokens=output))


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_leaving_while_the_stronger_answer_is_generated_pays_both_answers_once(
    tmp_path: Path, any_redis_url: str, stream: bool
) -> None:
    provider = Escalating()
    async with escalating_router(tmp_path, any_redis_url, provider) as router:
        await left_while_generating(router, provider, "strong", stream)  # the weak answer generated
        provider.release["strong"].set()
    # The router stopped: its charges still running finished first.
    spent, held, records = await settled(any_redis_url)
    [written] = provider.max_tokens["strong"]
    cost = weak_cost() + strong_cost(written)
    assert spent == (to_pico(cost), to_pico(cost)) and held == (0, 0)
    [record] = records
    assert Decimal(record["cost_usd"]) == cost <= MAX_COST
    assert [g["model"] for g in record["generations"]] == ["cheap", "strong"]
    assert record["escalated"] and record["escalation_signal"] == "refusal"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_leaving_while_the_weak_answer_is_generated_pays_it_alone_and_has_nothing_escalated(
    tmp_path: Path, any_redis_url: str, stream: bool
) -> None:
    """The weak answer under way finishes and is charged; the stronger one, paid and read by no one, is never asked."""
    provider = Escalating(hold_cheap=True)
    provider.release["strong"].set()
    method = "CompleteStream" if stream else "Complete"
    left = rpcs_ended("router", method, "CANCELLED")
    async with escalating_router(tmp_path, any_redis_url, provider) as router:
        await left_while_generating(router, provider, "cheap", stream)
        await eventually(lambda: rpcs_ended("router", method, "CANCELLED") > left, "the router saw its caller leave")
        provider.release["cheap"].set()
    # The router stopped: its charges still running finished first.
    spent, held, [record] = await settled(any_redis_url)
    assert "strong" not in provider.max_tokens
    assert spent == (to_pico(weak_cost()), to_pico(weak_cost())) and held == (0, 0)
    assert Decimal(record["cost_usd"]) == weak_cost() and [g["model"] for g in record["generations"]] == ["cheap"]
    assert not record["escalated"] and "the caller left" in record["reason_detail"]


@pytest.mark.parametrize("strong", ["cut", "over"])
async def test_a_stronger_attempt_cut_or_over_reported_never_takes_the_charge_past_max_cost(
    tmp_path: Path, redis_url: str, strong: str
) -> None:
    """Escalated within what the hold has left after the weak answer: its max_tokens is that room, so its worst case
    (owed when it is cut with an unknown outcome) keeps the request within its hold, and a report past the room is
    charged the hold. Either way both answers' request is charged once, within max_cost_usd."""
    provider = Escalating(strong)
    provider.release["strong"].set()
    async with escalating_router(tmp_path, redis_url, provider) as router:
        reply = await router.Complete(ask(), timeout=30)
    assert reply.content == REFUSAL if strong == "cut" else reply.escalated
    [written] = provider.max_tokens["strong"]
    assert written < REGISTRY.get("strong").max_output_tokens  # type: ignore[union-attr]  # the room, not the model's
    spent, held, [record] = await settled(redis_url)
    charged = Decimal(record["cost_usd"])
    assert Decimal(reply.cost_usd) == charged and spent == (to_pico(charged), to_pico(charged)) and held == (0, 0)
    assert weak_cost() < charged <= MAX_COST
    assert to_pico(charged) <= int(MAX_COST * PICO)


@pytest.mark.parametrize("budget", [None, Decimal("0.001")])
async def test_the_stronger_answer_may_write_the_callers_max_tokens_when_the_budget_can_hold_both(
    tmp_path: Path, any_redis_url: str, budget: Decimal | None
) -> None:
    """Admission held one generation's worst case; the hold grows, as for a fallback, to the weak answer plus the
    stronger one's worst case, rather than cutting the stronger answer below the caller's max_tokens to fit what the
    weak one left (a cut the caller never asked for, told nowhere, and kept in the response cache). A budget that
    cannot hold both keeps the stronger answer to the room the hold has left, and is never passed."""
    provider = Escalating()
    provider.release["strong"].set()
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, max_tokens=100)
    async with escalating_router(tmp_path, any_redis_url, provider, tenant_budget_usd=budget) as router:
        reply = await router.Complete(request, timeout=30)
    assert reply.escalated and reply.model == "strong"
    [written] = provider.max_tokens["strong"]
    assert written == 100 if budget is None else written < 100
    cost = weak_cost() + strong_cost(written)
    spent, held, [record] = await settled(any_redis_url)
    assert Decimal(reply.cost_usd) == Decimal(record["cost_usd"]) == cost
    assert spent == (to_pico(cost), to_pico(cost)) and held == (0, 0)
    assert budget is None or cost <= budget


async def test_a_hold_that_cannot_be_grown_for_the_stronger_answer_leaves_the_weak_one_charged(
    tmp_path: Path, redis_url: str
) -> None:
    """Growing the hold fails on the store's own keys (the key's holds set of another type: an error the store raises
    as it is, not a refusal) after the weak answer was generated: the escalation keeps to the hold's room, and the
    request, both answers, is charged (here kept in the outbox, the store refusing the charge on that key too), not
    failed as an internal error with its weak answer charged nothing."""
    provider = Escalating(hold_cheap=True)
    provider.release["strong"].set()
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, max_tokens=100)
    admin = connect(redis_url)
    try:
        async with escalating_router(tmp_path, redis_url, provider) as router:
            call = router.Complete(request, timeout=30)
            await provider.generating["cheap"].wait()  # admitted: its hold is in the key's holds set
            key_holds = AccountKeys.of(Account("acme", key_id(""))).held()[1]
            await admin.delete(key_holds)
            await admin.set(key_holds, "of another type")
            provider.release["cheap"].set()
            reply = await call
    finally:
        await admin.aclose()
    [written] = provider.max_tokens["strong"]
    cost = weak_cost() + strong_cost(written)
    assert reply.escalated and written < 100 and Decimal(reply.cost_usd) == cost
    [kept] = Outbox(tmp_path / "data").waiting()
    assert isinstance(kept, OutboxCharge) and kept.pico == to_pico(cost)
