"""Admission: a request's limits, who pays for it, and letting it in (request id, rate limit, and a hold of
its costliest estimate against the budgets) or refusing it with a clear reason."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation

import grpc

from llmrouter.auth import current_identity
from llmrouter.errors import ServiceError, invalid
from llmrouter.tokens import count_message_tokens
from llmrouter.v1 import router_pb2
from llmrouter.validation import validate
from services.router import metrics, policy
from services.router.routed import Routed
from services.router.settings import RouterSettings
from services.router.store import Account, Allowance, Hold, Store, key_id, to_pico


def account_for(request: router_pb2.CompleteRequest) -> Account:
    """Who pays for a request: the one place the paying tenant and key are derived. The tenant and key named
    in the request when the caller may act for tenants (the edge, which authenticated the end user);
    otherwise the authenticated caller itself, whatever the request says."""
    caller = current_identity()
    if caller.may_act_for_tenants:
        return Account(request.tenant or "default", key_id(request.api_key))
    return Account(caller.tenant or caller.name, f"caller:{caller.name}")


def limits(request: router_pb2.CompleteRequest, settings: RouterSettings) -> policy.Limits:
    """The request, validated, as the limits routing must respect."""
    valid = validate(request)
    if request.HasField("quality_target") and not 0 <= request.quality_target <= 1:
        raise invalid("quality_target must be within [0, 1]", "quality_target")
    if request.HasField("max_latency_ms") and request.max_latency_ms <= 0:
        raise invalid("max_latency_ms must be positive", "max_latency_ms")
    return policy.Limits(
        quality_target=(
            request.quality_target if request.HasField("quality_target") else settings.default_quality_target
        ),
        input_tokens=count_message_tokens(request.messages),
        max_output_tokens=request.max_tokens if request.HasField("max_tokens") else None,
        expected_output_tokens=settings.expected_output_tokens,
        max_cost_usd=_max_cost(request.max_cost_usd),
        max_latency_ms=request.max_latency_ms if request.HasField("max_latency_ms") else None,
        needs_tools=bool(valid.passthrough.get("tools")),
    )


def _max_cost(raw: str) -> Decimal | None:
    if not raw:
        return None
    try:
        max_cost = Decimal(raw)
    except InvalidOperation:
        raise invalid("max_cost_usd must be a decimal number", "max_cost_usd") from None
    if not max_cost.is_finite() or max_cost < 0:
        raise invalid("max_cost_usd must be a non-negative number", "max_cost_usd")
    return max_cost


class Admission:
    def __init__(self, settings: RouterSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.allowance = Allowance(
            settings.budget_period,
            settings.rate_limit_rpm,
            None if settings.tenant_budget_usd is None else to_pico(settings.tenant_budget_usd),
            None if settings.key_budget_usd is None else to_pico(settings.key_budget_usd),
        )

    async def admit(self, routed: Routed) -> None:
        """Claim the request id, count it against the rate limit and hold its costliest estimate against the
        budgets; raises when any of them refuses."""
        hold = Hold(routed.request_id, max(to_pico(o.cost) for o in routed.plan.order))
        refused = await self.store.admit(routed.account, self.allowance, hold)
        if not refused:
            routed.hold = hold
            return
        settings = self.settings
        if refused == "duplicate":
            raise ServiceError(
                grpc.StatusCode.ALREADY_EXISTS,
                "DUPLICATE_REQUEST",
                f"request id {hold.request_id!r} was used before: each request needs its own",
                {"field": "request_id"},
            )
        if refused == "rate":
            metrics.RATE_LIMITED.inc()
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
                f"rate limit of {settings.rate_limit_rpm} requests per minute reached",
                {"retry_after_s": str(60 - int(time.time()) % 60)},
            )
        metrics.BUDGET_REJECTIONS.inc()
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
            f"the {refused} budget for this {settings.budget_period} is spent",
            {"budget": refused},
        )
