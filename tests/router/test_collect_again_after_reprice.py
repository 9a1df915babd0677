"""A provider batch line collected (and charged at the prices it was admitted with), then collected again after a
price change within its window (the reply to the first collect lost): the second collect reads its outcome again at
the registry's new prices, and telling the line what the ledger charged it took an answer costing more there than it
was charged for a false report: the caller was told an error (OVER_REPORTED) and never got the answer it paid for.
The router's servicer over Redis; a real providers gRPC server whose Batch API answers every line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from llmrouter.auth import acting_as
from llmrouter.v1 import router_pb2
from services.router.store import RedisStore, period_id, to_pico
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_batch_admitted_prices import COLLECT, batch_cost, reprice
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider


async def test_a_line_collected_again_after_a_price_rise_is_told_its_answer(
    redis_store: RedisStore, tmp_path: Path
) -> None:
    async with router_servicer(tmp_path, redis_store, BatchProvider(), REGISTRY) as servicer:
        with acting_as(TENANT_CALLER):
            await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
            (first,) = (await servicer.CollectBatch(COLLECT, NoDeadline())).lines
            reprice(servicer, tmp_path / "models.yaml")  # the strong model's batch prices raised by half
            (again,) = (await servicer.CollectBatch(COLLECT, NoDeadline())).lines
    admitted = batch_cost(REGISTRY)
    assert first.succeeded and Decimal(first.response.cost_usd) == admitted
    assert (await redis_store.spent(ACCOUNT, period_id("day")))[0] == to_pico(admitted)
    assert again.succeeded, again.error
    assert again.response.content == first.response.content
    assert Decimal(again.response.cost_usd) == admitted
