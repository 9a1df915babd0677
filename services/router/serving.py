"""Serving a routed request: the provider calls, with fallback to the next model of the plan when a provider
fails, and escalation of an empty answer to a stronger tier."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec, Registry
from llmrouter.tokens import count_tokens
from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from services.router import charging, metrics, policy
from services.router.costs import affordable_output
from services.router.routed import Routed, Served
from services.router.store import to_pico

log = logging.getLogger("llmrouter.router")

# Provider failures worth another model: the next one may well answer. Bad requests are not retried.
FALLBACK_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


@dataclass
class StreamState:
    """A stream in flight: the model answering, what reached the caller, and the summary once complete."""

    model: ModelSpec
    parts: list[str] = field(default_factory=list)
    served: Served | None = None

    def partial(self, routed: Routed, measured: Mapping[str, str]) -> Served:
        """What an interrupted stream served: as the provider measured it, else counted here."""
        text = "".join(self.parts)
        if "cost_usd" in measured:
            input_tokens, output_tokens = int(measured.get("input_tokens", 0)), int(measured.get("output_tokens", 0))
            cost, estimated = Decimal(measured["cost_usd"]), False
        else:
            input_tokens, output_tokens = routed.limits.input_tokens, count_tokens(text)
            cost, estimated = self.model.cost_usd(input_tokens, output_tokens), True
        return Served(
            self.model,
            content=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            estimated=estimated,
            cost=cost,
            finish_reason="error",
        )


class Serving:
    def __init__(
        self, registry: Registry, providers: provider_pb2_grpc.ProviderStub, charger: charging.Charger
    ) -> None:
        self.registry = registry
        self.providers = providers
        self.charger = charger

    async def generate(self, routed: Routed, context: Any) -> Served:
        order = routed.plan.order
        for index, option in enumerate(order):
            try:
                reply = await self.providers.Generate(
                    generate_request(routed, option.model), timeout=context.time_remaining()
                )
            except grpc.RpcError as err:
                _fall_back_or_raise(ServiceError.from_rpc_error(err), order, index)
                continue
            served = Served(option.model)
            served.add(reply, option.model)
            if not reply.content.strip() and not reply.tool_calls_json:  # a tool call is an answer
                await self._escalate(routed, context, served, option)
            return served
        raise AssertionError("unreachable: the last option raises")

    async def _escalate(self, routed: Routed, context: Any, served: Served, weak: policy.Option) -> None:
        """An empty answer is a weak one: ask the cheapest stronger tier once; the first answer stays
        charged either way, because it was generated."""
        target = policy.escalation_target(routed.plan.order, weak, self.registry)
        if target is None:
            return
        # Both answers are charged: the stronger one may write only what the hold has left after the first.
        assert routed.hold is not None  # only admitted requests are served
        affordable = affordable_output(
            target.model, routed.limits.input_tokens, routed.hold.pico - to_pico(served.cost)
        )
        max_tokens = min(routed.max_tokens[target.model.name], affordable)
        if max_tokens < min(routed.limits.min_output_tokens, routed.max_tokens[target.model.name]):
            log.warning("no room left in the hold to escalate; keeping the weak answer")
            return
        try:
            reply = await self.providers.Generate(
                generate_request(routed, target.model, max_tokens), timeout=context.time_remaining()
            )
        except grpc.RpcError as err:
            log.warning("escalation failed; keeping the weak answer", extra={"error": err.details()})
            return
        except asyncio.CancelledError:
            # The caller left while the stronger model worked: the weak answer was generated all the same.
            await self.charger.settle(routed, charging.response(routed, served), "cancelled")
            raise
        metrics.ESCALATIONS.labels(weak.model.name, target.model.name).inc()
        served.add(reply, target.model)
        served.escalated = True

    async def generate_stream(self, routed: Routed, context: Any, stream: StreamState) -> AsyncGenerator[str]:
        """Yields deltas and fills `stream`. Falls back to the next model only before the first delta."""
        order = routed.plan.order
        for index, option in enumerate(order):
            stream.model = option.model
            call = self.providers.GenerateStream(
                generate_request(routed, option.model), timeout=context.time_remaining()
            )
            try:
                async for chunk in call:
                    if chunk.WhichOneof("kind") == "delta":
                        stream.parts.append(chunk.delta)
                        yield chunk.delta
                    else:
                        stream.served = Served(option.model)
                        stream.served.add(chunk.final, option.model)
                        stream.served.content = "".join(stream.parts)
                        return
            except grpc.RpcError as err:
                error = ServiceError.from_rpc_error(err)
                if stream.parts:
                    raise error from None
                _fall_back_or_raise(error, order, index)
                continue
            finally:
                call.cancel()
            raise ServiceError(grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR", "provider stream ended without usage")


def generate_request(routed: Routed, model: ModelSpec, max_tokens: int | None = None) -> provider_pb2.GenerateRequest:
    """The provider call for one model of the plan, never allowed to write more than admission held for."""
    request = routed.request
    return provider_pb2.GenerateRequest(
        model=model.name,
        messages=request.messages,
        max_tokens=routed.max_tokens[model.name] if max_tokens is None else max_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        request_id=routed.request_id,
        passthrough_json=request.passthrough_json,
    )


def _fall_back_or_raise(error: ServiceError, order: list[policy.Option], index: int) -> None:
    if error.code not in FALLBACK_CODES or index + 1 >= len(order):
        raise error
    log.warning(
        "provider failed; falling back",
        extra={"model": order[index].model.name, "next": order[index + 1].model.name, "reason": error.reason},
    )
    metrics.FALLBACKS.labels(order[index].model.name, order[index + 1].model.name).inc()
