"""The Operator gRPC service: thin glue from Stats, Budgets, SetBudget and KeyMoves to services/router/operations.py."""

from __future__ import annotations

from typing import Any

from llmrouter.v1 import operator_pb2, operator_pb2_grpc
from services.ledger.stats import Group
from services.router.budgets import BudgetView, usd
from services.router.operations import Operations, account_viewer, changed_by, viewer
from services.router.store import KeyMoveRecord


def group_message(group: Group) -> operator_pb2.StatsGroup:
    return operator_pb2.StatsGroup(
        key=group.key,
        requests=group.requests,
        success_rate=group.rate(group.succeeded),
        latency_p50_ms=group.percentile(0.50),
        latency_p95_ms=group.percentile(0.95),
        latency_p99_ms=group.percentile(0.99),
        escalation_rate=group.rate(group.escalated),
        cache_hit_rate=group.rate(group.cache_hits),
        fallback_rate=group.rate(group.fallbacks),
        input_tokens=group.input_tokens,
        output_tokens=group.output_tokens,
        cost_usd=usd(group.cost_pico),
        baseline_cost_usd=usd(group.baseline_pico),
        saved_usd=usd(group.saved_pico),
        model_share=group.model_share(),
    )


def budget_message(view: BudgetView) -> operator_pb2.Budget:
    if view.every_tenant:  # no one tenant's spend: "*", and no numbers (Budgets shows them per tenant)
        return operator_pb2.Budget(
            scope=view.scope,
            name=view.name,
            tenant="*",
            limit_usd=usd(view.limit_pico),
            period=view.period,
            period_end=view.period_end,
            overridden=view.overridden,
            tenant_wide=True,
        )
    return operator_pb2.Budget(
        scope=view.scope,
        name=view.name,
        tenant=view.tenant,
        limit_usd=usd(view.limit_pico),
        spent_usd=usd(view.spent_pico),
        held_usd=usd(view.held_pico),
        remaining_usd=usd(view.remaining_pico),
        carried_usd=usd(view.carried_pico or None),
        period=view.period,
        period_end=view.period_end,
        overridden=view.overridden,
        tenant_wide=view.tenant_wide,
    )


def key_move_message(move: KeyMoveRecord) -> operator_pb2.KeyMove:
    return operator_pb2.KeyMove(
        key_id=move.key_id,
        from_tenant=move.before or "",
        from_none=move.before is None,
        to_tenant=move.tenant,
        by=move.by,
        at=move.at,
    )


class OperatorServicer(operator_pb2_grpc.OperatorServicer):
    def __init__(self, operations: Operations) -> None:
        self.operations = operations

    async def Stats(self, request: operator_pb2.StatsRequest, context: Any) -> operator_pb2.StatsResponse:
        who = account_viewer(request.tenant, request.admin, request.api_key)
        total, groups = await self.operations.stats(who, request.since, request.until, request.group_by)
        return operator_pb2.StatsResponse(total=group_message(total), groups=[group_message(g) for g in groups])

    async def Budgets(self, request: operator_pb2.BudgetsRequest, context: Any) -> operator_pb2.BudgetsResponse:
        views = await self.operations.budgets(account_viewer(request.tenant, request.admin, request.api_key))
        return operator_pb2.BudgetsResponse(budgets=[budget_message(v) for v in views])

    async def SetBudget(self, request: operator_pb2.SetBudgetRequest, context: Any) -> operator_pb2.Budget:
        who = viewer("", request.admin)
        by = changed_by(request.api_key)
        view = await self.operations.set_budget(who, request.scope, request.name, request.limit_usd, by)
        return budget_message(view)

    async def KeyMoves(self, request: operator_pb2.KeyMovesRequest, context: Any) -> operator_pb2.KeyMovesResponse:
        moves = await self.operations.key_moves(viewer("", request.admin), request.limit)
        return operator_pb2.KeyMovesResponse(moves=[key_move_message(move) for move in moves])
