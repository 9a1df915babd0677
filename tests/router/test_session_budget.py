"""A session on a model its tenant's budget can no longer pay for: the turn goes where it alone would (a cheaper model
the budget pays for), as when the session's model is unavailable, and the session stays on its model for the turns the
budget pays for again. Refused instead, the turn was told the budget "is spent" and not to retry, while the same
request without its session_id was served. The router behind its own gRPC server, real providers and classifier gRPC
servers on loopback, over both money stores."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import (
    common_pb2,
    provider_pb2,
    provider_pb2_grpc,
    router_pb2,
)
from services.router.store import Account, Store, key_id, period_id, to_pico
from tests.router.servicer_kit import NearScores, NoDeadline, router_servicer, router_stub
from tests.router.test_admission import REGISTRY
from tests.router.test_collect_model import REGISTRY as BATCH_REGISTRY

ROOM = Decimal("0.0003")  # what the budget has left: a short answer of the cheap model, not of the strong one


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=20, output_tokens=10)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model, provider="p")


def turn(**fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=f"Tell me more {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(
        messages=[message], tenant="acme", session_id="chat-1", max_tokens=100, escalation="off", **fields
    )


async def test_a_session_model_the_budget_cannot_pay_for_is_set_aside_for_the_turn_alone(
    tmp_path: Path, store: Store
) -> None:
    account = Account("acme", key_id(""))
    admitted: list[str] = []  # the model each admission is for, as recorded beside its pending charge
    admit = store.admit

    async def recording(*args: Any) -> Any:
        admitted.append(args[3])
        return await admit(*args)

    store.admit = recording  # type: ignore[method-assign,assignment]
    async with router_stub(tmp_path, store, Answering(), classifier=NearScores(), session_ttl_s=600) as router:
        first = await router.Complete(turn(quality_target=1), timeout=10)  # a hard turn: the session is on strong
        assert first.model == "strong"
        limit = to_pico(Decimal(first.cost_usd) + ROOM)
        await store.set_limit("tenant", "acme", limit)

        admitted.clear()
        easy = await router.Complete(turn(quality_target=0.5), timeout=10)  # the turn alone would take cheap
        assert admitted == ["strong", "cheap"]  # refused for the session's model, then admitted for the turn's own
        assert easy.model == "cheap" and not easy.decision.session_affinity
        assert easy.decision.model == "cheap"
        assert "session affinity set aside: the remaining tenant budget cannot pay for strong" in easy.decision.reason
        spent = (await store.spent(account, period_id("day")))[0]
        assert spent == to_pico(Decimal(first.cost_usd) + Decimal(easy.cost_usd)) <= limit
        assert await store.held_pico(account) == (0, 0)

        await store.set_limit("tenant", "acme", None)  # the budget raised: the session is still on strong
        later = await router.Complete(turn(quality_target=0.5), timeout=10)
        assert later.model == "strong" and later.decision.session_affinity

        spent = (await store.spent(account, period_id("day")))[0]
        await store.set_limit("tenant", "acme", spent)  # nothing left, for the turn alone either
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router.Complete(turn(quality_target=0.5), timeout=10)
        error = ServiceError.from_rpc_error(refused.value)
        assert (error.reason, error.metadata.get("retryable")) == ("BUDGET_EXCEEDED", "false")
        assert (await store.spent(account, period_id("day")))[0] == spent


class BatchAnswering(Answering):
    """Answers now, and runs provider batches (both models have a batch price: tests.router.test_collect_model)."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[BATCH_REGISTRY.info(m) for m in BATCH_REGISTRY.models])

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        return provider_pb2.SubmitBatchResponse(batch_id="pbatch-1")


async def test_a_batch_line_of_a_session_is_held_only_for_its_batch_priced_model(tmp_path: Path, store: Store) -> None:
    """A batch line is admitted for its one batch-priced model, or not deferred (the edge sends it to Complete): a
    session's model the budget cannot pay for is not set aside there for a model at its real-time price, which would
    be held for a day and sent in a provider batch at prices it was never admitted for."""
    account = Account("acme", key_id(""))
    async with router_servicer(
        tmp_path, store, BatchAnswering(), BATCH_REGISTRY, NearScores(), session_ttl_s=600
    ) as servicer:
        with acting_as(ANONYMOUS):
            first = await servicer.Complete(turn(quality_target=1), NoDeadline())
            assert first.model == "strong"
            await store.set_limit("tenant", "acme", to_pico(Decimal(first.cost_usd) + Decimal("0.0001")))
            line = turn(quality_target=0.5, request_id="line-1")
            (sent,) = (await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line]), NoDeadline())).lines
    assert not sent.deferred  # the strong model's batch hold is past the budget: the line goes to Complete
    assert await store.held_pico(account) == (0, 0)
    assert await store.pending_charge(account, "line-1") is None
