"""A stream whose routed model failed before its first token, cut by the drain while its fallback is reached and holds
before its first token: a caller that reads later decisions (the edge) and one that does not (a plain gRPC caller, an
edge of the version before, sent no second decision) are told the cut and charged alike, once: the failed attempt
and the fallback's worst case. A real router (router.build) on loopback over real Redis, its providers a gRPC server
of the test's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter import later_decisions
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2
from tests.router.test_drained_past_grace import (
    GRACE_S,
    Held,
    charges_of,
    draining_router,
    ledger_is_spend,
    shutting_down,
)
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: a router drained past its grace period


class DownThenHeld(Held):
    """The cheap model's upstream, reached, fails (UNAVAILABLE: a fallback); the strong one's, reached, holds before
    its first token until released."""

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        cued = await anext(messages)
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(messages)  # the word to send it
        self.reached += 1
        if cued.request.model == "cheap":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream down")
        await self.release.wait()
        raise AssertionError("a stream cut by the shutdown is not read on")


async def test_a_stream_cut_while_its_fallback_holds_is_told_and_charged_alike_whether_its_caller_reads_later_decisions(
    tmp_path: Path, redis_url: str
) -> None:
    provider = DownThenHeld()
    prompt = f"Hello {uuid.uuid4().hex}"  # the same for both: the same worst cases owed

    def asked() -> router_pb2.CompleteRequest:
        message = common_pb2.ChatMessage(role="user", content=prompt)
        return router_pb2.CompleteRequest(
            messages=[message], tenant="acme", quality_target=0.5, request_id=uuid.uuid4().hex, max_tokens=64
        )

    plain_request, announcing_request = asked(), asked()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        plain = stub.CompleteStream(plain_request, timeout=30)
        announcing = stub.CompleteStream(announcing_request, timeout=30, metadata=later_decisions.ANNOUNCED)
        assert (await plain.read()).decision.model == (await announcing.read()).decision.model == "cheap"
        assert (await announcing.read()).decision.model == "strong"  # the fallback, told to this caller alone
        await eventually(lambda: provider.reached == 4, "both fallbacks reached")
        stopping = asyncio.create_task(running.stop(GRACE_S))
        told = []
        for call in (plain, announcing):
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call.read()  # the plain caller's next chunk is the cut: no decision was held back for it
            told.append(shutting_down(cut.value))
        await stopping
    (plain_charge,) = await charges_of(redis_url, plain_request.request_id)
    (announcing_charge,) = await charges_of(redis_url, announcing_request.request_id)
    for error, charge in zip(told, (plain_charge, announcing_charge), strict=True):
        assert Decimal(error.metadata["charged_usd"]) == Decimal(charge["cost_usd"]) > 0
    assert told[0].metadata == told[1].metadata
    assert (plain_charge["model"], plain_charge["cost_usd"]) == (
        announcing_charge["model"],
        announcing_charge["cost_usd"],
    )
    await ledger_is_spend(redis_url)
