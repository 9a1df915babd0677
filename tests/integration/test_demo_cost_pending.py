"""The demo `make run` prints, when an answer's cost is pending (x-router-cost-pending: the router could not read
what the ledger charged it): that answer's cost says pending and the run's cost counts it apart, not as a number the
demo made up. It failed on the header it read (Decimal of a missing x-router-cost-usd). The real edge over a stand-in
router on loopback gRPC."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from typing import Any

import pytest

from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.demo import PROMPTS, run_demo
from tests.integration.conftest import quiet_edge_settings, served_edge, served_router

EXACT = "0.000123"
REGISTRY = load_registry()
MODEL = REGISTRY.models[0].name


class FirstPending(router_pb2_grpc.RouterServicer):
    """Decides every prompt for MODEL; answers the first prompt with its cost pending, every other at EXACT."""

    def __init__(self) -> None:
        self.answered = 0

    async def Decide(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.Decision:
        candidate = router_pb2.Candidate(model=MODEL, predicted_quality=0.9, estimated_cost_usd="0.001", eligible=True)
        return router_pb2.Decision(model=MODEL, reason="cheapest", quality_target=0.5, candidates=[candidate])

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        answer = router_pb2.CompleteResponse(id=request.request_id, model=MODEL, content="hi", usage=usage)
        answer.decision.reason = "cheapest"
        if self.answered == 0:
            answer.cost_pending = True
        else:
            answer.cost_usd = EXACT
        self.answered += 1
        return answer


async def test_the_demo_says_a_pending_cost_and_counts_it_apart(capsys: pytest.CaptureFixture[str]) -> None:
    async with served_router(FirstPending()) as router_addr:
        settings = quiet_edge_settings(router_addr)
        async with served_edge(settings) as base:
            await asyncio.to_thread(run_demo, base.removesuffix("/v1"), REGISTRY)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in ([d] for d, _ in PROMPTS)}
    assert rows[PROMPTS[0][0]][3] == "pending", rows
    assert all(rows[d][3] == f"${Decimal(EXACT):.6f}" for d, _ in PROMPTS[1:]), rows
    here = Decimal(next(line for line in out.splitlines() if line.startswith("total ")).split()[1].lstrip("$"))
    assert here == Decimal(EXACT) * (len(PROMPTS) - 1)  # the pending answer in no total
    assert re.search(r"This run cost \$[0-9.]+, and 1 answer\(s\) whose cost is pending", out), out
