"""Many requests escalating at once against a budget that cannot pay for all of them: the hold each grows for its
stronger answer is counted against the budget as it grows, so together they never pass it, each request is charged
once (both its generations), and no hold is left. The router behind its own gRPC server, a real providers gRPC server on
loopback, the money store on one Redis server and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path

import grpc

from llmrouter.v1 import common_pb2, router_pb2
from services.router.store import to_pico
from tests.router.test_escalation_money import CHEAP, STRONG, Escalating, escalating_router, settled

BUDGET = Decimal("0.01")


async def test_escalations_at_once_never_pass_the_budget(tmp_path: Path, any_redis_url: str) -> None:
    assert CHEAP is not None and STRONG is not None
    provider = Escalating()
    provider.release["strong"].set()

    def request() -> router_pb2.CompleteRequest:
        message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
        return router_pb2.CompleteRequest(messages=[message], tenant="acme", quality_target=0.5, max_tokens=200)

    async with escalating_router(tmp_path, any_redis_url, provider, tenant_budget_usd=BUDGET) as router:
        replies = await asyncio.gather(
            *(router.Complete(request(), timeout=60) for _ in range(16)), return_exceptions=True
        )
    answered = [r for r in replies if isinstance(r, router_pb2.CompleteResponse)]
    refused = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert len(answered) + len(refused) == 16 and answered and refused
    spent, held, records = await settled(any_redis_url)
    assert held == (0, 0) and spent[0] <= to_pico(BUDGET)
    assert len(records) == len(answered)
    total = Decimal(0)
    for record in records:
        parts = {"cheap": CHEAP, "strong": STRONG}
        made = sum(
            (
                parts[g["model"]].usage_cost_usd(
                    common_pb2.Usage(input_tokens=g["input_tokens"], output_tokens=g["output_tokens"])
                )
                for g in record["generations"]
            ),
            Decimal(0),
        )
        assert Decimal(record["cost_usd"]) == made + Decimal(record["owed_usd"])
        total += Decimal(record["cost_usd"])
    assert spent[0] == to_pico(total)
