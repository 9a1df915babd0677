"""A batch line whose answer says its cost is pending (the router could not read what the ledger charged it:
CompleteResponse.cost_pending) is counted pending, not at 0: its output line says x_router.cost_pending, the batch
says how many of its lines are so (x_router.cost_pending_lines), and the edge counts it in
llmrouter_edge_batch_cost_pending_lines_total, not in llmrouter_edge_batch_cost_usd_total. It was counted 0 there
silently. The real edge over a stand-in router on loopback gRPC, read with the official openai SDK."""

from __future__ import annotations

import secrets
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.edge.keys import key_line
from services.router.admission import _duplicate
from services.router.store import Verdict
from tests.integration.conftest import quiet_edge_settings, sdk_edge, served_router
from tests.integration.test_batch_parking import submit
from tests.integration.test_provider_batches import finished, lines_of

EXACT = "0.000123"


class SomePending(router_pb2_grpc.RouterServicer):
    """Answers the first line (custom_id parked-0) with its cost pending, the second at EXACT, and refuses the third
    as a duplicate whose charge it cannot tell (as admission does when the line's charged marker says no amount)."""

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        answer = router_pb2.CompleteResponse(id=request.request_id, model="cheap-model", content="hi")
        if request.request_id.endswith(":parked-0"):
            answer.cost_pending = True
        elif request.request_id.endswith(":parked-1"):
            answer.cost_usd = EXACT
        else:
            error = _duplicate(Verdict("duplicate"), request.request_id)
            await context.abort(error.code, error.message, error.trailing_metadata())
        return answer


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def batch_through(
    router: router_pb2_grpc.RouterServicer, prefix: str, **settings: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A batch of three lines sent by a tenant of its own through a real edge before `router`, once it has ended: the
    batch, what each line's body says of its cost (x_router) by custom id, and the error file's lines. It asserts the
    outcome both tests share (two lines pending, the third charged EXACT, each counted so in the edge's metrics)."""
    tenant, key = f"{prefix}-{secrets.token_hex(4)}", f"sk-{prefix}-{secrets.token_urlsafe(12)}"
    cost, pending = (
        counted("llmrouter_edge_batch_cost_usd_total"),
        counted("llmrouter_edge_batch_cost_pending_lines_total"),
    )
    async with served_router(router) as router_addr:
        edge_settings = quiet_edge_settings(router_addr, api_keys=SecretStr(key_line(tenant, key)), **settings)
        async with sdk_edge(edge_settings, key) as client:
            done = await finished(client, await submit(client, 3), timeout_s=30)
            answers = await lines_of(client, done.output_file_id)
            errors = await lines_of(client, done.error_file_id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 2, 1)
    assert (done.model_extra or {})["x_router"] == {"cost_pending_lines": 2}
    told = {custom_id: line["response"]["body"]["x_router"] for custom_id, line in {**answers, **errors}.items()}
    assert counted("llmrouter_edge_batch_cost_pending_lines_total") == pending + 2
    assert counted("llmrouter_edge_batch_cost_usd_total") - cost == pytest.approx(float(EXACT))
    return done, told, errors


async def test_a_line_whose_cost_is_pending_is_counted_pending_not_at_nothing() -> None:
    _, told, errors = await batch_through(SomePending(), "pending")
    for pending_line in ("parked-0", "parked-2"):
        assert told[pending_line]["cost_pending"] is True and "cost_usd" not in told[pending_line], told
    assert told["parked-1"]["cost_usd"] == EXACT
    assert errors["parked-2"]["response"]["body"]["error"]["code"] == "duplicate_request"


class DeferringSomePending(router_pb2_grpc.RouterServicer):
    """Defers every line to one provider batch; collected, the first line (parked-0) is an answer whose cost is pending,
    the second a failure whose charge is pending (CollectedLine.cost_pending: charged before under a marker saying no
    amount), told so only to an edge that says it reads it (reads_cost_pending), the third an answer at EXACT."""

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: Any) -> router_pb2.SubmitLinesResponse:
        deferred = [
            router_pb2.DeferredLine(
                request_id=line.request_id, deferred=True, model="cheap-model", provider_batch_id="pb-1", held_usd="1"
            )
            for line in request.lines
        ]
        return router_pb2.SubmitLinesResponse(lines=deferred)

    async def CollectBatch(
        self, request: router_pb2.CollectBatchRequest, context: Any
    ) -> router_pb2.CollectBatchResponse:
        lines = []
        for request_id in request.request_ids:
            answer = router_pb2.CompleteResponse(id=request_id, model="cheap-model", content="hi")
            if request_id.endswith(":parked-0"):
                answer.cost_pending = True
                lines.append(router_pb2.CollectedLine(request_id=request_id, succeeded=True, response=answer))
            elif request_id.endswith(":parked-1"):
                if not request.reads_cost_pending:  # as the router fails it for an edge of the version before
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the provider batch could not be read")
                lines.append(router_pb2.CollectedLine(request_id=request_id, error="charged before", cost_pending=True))
            else:
                answer.cost_usd = EXACT
                lines.append(router_pb2.CollectedLine(request_id=request_id, succeeded=True, response=answer))
        return router_pb2.CollectBatchResponse(status="ended", ended=True, lines=lines)


async def test_a_collected_line_whose_cost_is_pending_is_counted_pending_not_at_nothing() -> None:
    _, told, errors = await batch_through(DeferringSomePending(), "deferred", batch_poll_s=0.05)
    for pending_line in ("parked-0", "parked-1"):
        assert told[pending_line]["cost_pending"] is True and "cost_usd" not in told[pending_line], told
    assert told["parked-2"]["cost_usd"] == EXACT
    # Charged, at an amount unknown: an outcome unknown (it may have run), not a failure the provider billed nothing.
    assert errors["parked-1"]["response"]["body"]["error"]["code"] == "provider_batch_outcome_unknown"


class DeferringOneLeftHeld(DeferringSomePending):
    """As DeferringSomePending, but the first line (parked-0) is answered as the router answers a line whose admission
    may have left its hold standing (never sent, its charge pending at most its hold: DeferredLine.cost_pending); the
    second is collected as an answer whose cost is pending, the third at EXACT."""

    async def SubmitBatch(self, request: router_pb2.SubmitLinesRequest, context: Any) -> router_pb2.SubmitLinesResponse:
        reply = await super().SubmitBatch(request, context)
        for line in reply.lines:
            if line.request_id.endswith(":parked-0"):
                line.provider_batch_id, line.error, line.cost_pending = "", "its hold may stand", True
        return reply

    async def CollectBatch(
        self, request: router_pb2.CollectBatchRequest, context: Any
    ) -> router_pb2.CollectBatchResponse:
        assert not any(i.endswith(":parked-0") for i in request.request_ids)  # in no provider batch: never collected
        lines = []
        for request_id in request.request_ids:
            answer = router_pb2.CompleteResponse(id=request_id, model="cheap-model", content="hi")
            if request_id.endswith(":parked-1"):
                answer.cost_pending = True
            else:
                answer.cost_usd = EXACT
            lines.append(router_pb2.CollectedLine(request_id=request_id, succeeded=True, response=answer))
        return router_pb2.CollectBatchResponse(status="ended", ended=True, lines=lines)


async def test_a_line_whose_hold_may_stand_is_counted_pending_not_at_its_hold_nor_sent_again() -> None:
    """Written to the error file as the router told it, its cost pending (not its hold, which it may never be charged,
    nor 0), and never sent to Complete (the stand-in has none: a line sent there would fail UNIMPLEMENTED)."""
    _, told, errors = await batch_through(DeferringOneLeftHeld(), "left-held", batch_poll_s=0.05)
    for pending_line in ("parked-0", "parked-1"):
        assert told[pending_line]["cost_pending"] is True and "cost_usd" not in told[pending_line], told
    assert told["parked-2"]["cost_usd"] == EXACT
    assert errors["parked-0"]["response"]["body"]["error"]["code"] == "provider_batch_outcome_unknown"
    assert "its hold may stand" in errors["parked-0"]["response"]["body"]["error"]["message"]
