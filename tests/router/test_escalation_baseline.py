"""An escalated request's baseline (what the strongest available model would have cost, from which the ledger's stats
report the savings) is that model writing the answer served, once: priced on both generations' tokens summed, the
prompt counted twice, a request escalated to the strongest model itself showed savings though it cost more than
asking that model alone (the weak answer paid on top). The router behind its own gRPC server, a real providers gRPC
server on loopback, the money store on Redis."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from llmrouter.v1 import common_pb2
from tests.router.test_escalation_money import STRONG, Escalating, ask, escalating_router, settled, strong_cost


async def test_a_request_escalated_to_the_strongest_model_claims_no_savings(tmp_path: Path, redis_url: str) -> None:
    assert STRONG is not None
    provider = Escalating()  # the cheap model refuses; the strong one, the strongest available, answers
    provider.release["strong"].set()
    async with escalating_router(tmp_path, redis_url, provider) as router:
        reply = await router.Complete(ask(), timeout=30)
    assert reply.escalated and reply.model == "strong"
    [written] = provider.max_tokens["strong"]
    _, _, [record] = await settled(redis_url)
    [weak, strong] = record["generations"]
    assert (weak["model"], strong["model"]) == ("cheap", "strong")
    # Always the strongest model: its one generation, the answer served, at its prices.
    served = common_pb2.Usage(input_tokens=strong["input_tokens"], output_tokens=strong["output_tokens"])
    assert Decimal(record["baseline_cost_usd"]) == STRONG.usage_cost_usd(served) == strong_cost(written)
    assert Decimal(record["baseline_cost_usd"]) < Decimal(record["cost_usd"])  # the weak answer was paid for in vain
