"""A unary call the drain cuts while its escalation grows the hold (after the escalation asked whether its caller
left) makes no stronger attempt: its answer would be generated and charged, and read by no one. The weak answer,
generated, is charged once, at what it cost. A real router (router.build) on loopback over real Redis, its providers a
gRPC server of the test's."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.v1 import common_pb2, provider_pb2, router_pb2
from services.router.admission import Admission
from tests.router.test_drained_past_grace import (
    GRACE_S,
    Held,
    charges_of,
    draining_router,
    held_in,
    ledger_is_spend,
    shutting_down,
)
from tests.router.test_escalation_money import REFUSAL, WEAK_USAGE, weak_cost


class Declining(Held):
    """The cheap model declines (a refusal: escalated); the strong one answers. Each model asked is noted."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.asked.append(request.model)
        if request.model == "cheap":
            return provider_pb2.GenerateResponse(content=REFUSAL, usage=WEAK_USAGE, model="cheap", finish_reason="stop")
        usage = common_pb2.Usage(input_tokens=10, output_tokens=request.max_tokens)
        return provider_pb2.GenerateResponse(content="a fine answer", usage=usage, model="strong", finish_reason="stop")


async def test_a_unary_call_cut_while_its_escalation_grows_the_hold_makes_no_stronger_attempt(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    covering, cover_goes_on = held_in(monkeypatch, Admission, "cover")
    provider = Declining()
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    request = router_pb2.CompleteRequest(
        messages=[message], tenant="acme", quality_target=0.5, request_id=uuid.uuid4().hex
    )
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await covering.wait()  # the weak answer refused: the hold grows for the stronger one
        stopping = asyncio.create_task(running.stop(GRACE_S))
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await call
        cover_goes_on.set()
        await stopping
    assert shutting_down(cut.value).metadata == {"cost_pending": "true", "retryable": "false"}
    assert provider.asked == ["cheap"]  # no stronger answer generated for no one
    (charge,) = await charges_of(redis_url, request.request_id)
    assert (charge["outcome"], charge["model"]) == ("ok", "cheap")
    assert charge["cost_usd"] == format(weak_cost(), "f")
    await ledger_is_spend(redis_url)
