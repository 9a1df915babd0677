"""The Router gRPC service: admission (rate limit, budget), routing (classifier + policy), the provider call
with fallback and escalation, and exactly-once accounting."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc

from llmrouter.errors import ServiceError, invalid
from llmrouter.registry import ModelSpec, Registry
from llmrouter.tokens import count_message_tokens, count_tokens
from llmrouter.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    provider_pb2,
    provider_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from services.router import metrics, policy
from services.router.models import AvailableModels
from services.router.settings import RouterSettings
from services.router.store import Account, Allowance, Hold, Store, key_id, to_pico

log = logging.getLogger("llmrouter.router")

ROLES = {"system", "developer", "user", "assistant", "tool"}
# Provider failures worth another model: the next one may well answer. Bad requests are not retried.
FALLBACK_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


@dataclass
class Routed:
    """A request admitted and routed, not yet served."""

    request: router_pb2.CompleteRequest
    request_id: str
    account: Account
    limits: policy.Limits
    plan: policy.Plan
    decision: router_pb2.Decision
    started: float = field(default_factory=time.perf_counter)
    hold: Hold | None = None  # what admission holds against the budgets until the charge
    settled: bool = False  # charged (which drops the hold)


@dataclass
class Served:
    """What the providers delivered for one request, summed over escalation."""

    model: ModelSpec
    content: str = ""
    provider: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cost: Decimal = Decimal(0)
    retries: int = 0
    finish_reason: str = ""
    escalated: bool = False
    tool_calls_json: str = ""

    def add(self, reply: provider_pb2.GenerateResponse, model: ModelSpec) -> None:
        self.model, self.provider = model, reply.provider
        self.content, self.finish_reason = reply.content or self.content, reply.finish_reason
        self.tool_calls_json = reply.tool_calls_json or self.tool_calls_json
        self.input_tokens += reply.usage.input_tokens
        self.output_tokens += reply.usage.output_tokens
        self.estimated |= reply.usage.estimated
        self.cost += Decimal(reply.cost_usd or "0")
        self.retries += reply.retries


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


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        store: Store,
        classifier: classifier_pb2_grpc.ClassifierStub,
        providers: provider_pb2_grpc.ProviderStub,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.classifier = classifier
        self.providers = providers
        self.available = AvailableModels(registry, providers, settings.models_refresh_s)
        self._settling: set[asyncio.Task[None]] = set()
        self.allowance = Allowance(
            settings.budget_period,
            settings.rate_limit_rpm,
            None if settings.tenant_budget_usd is None else to_pico(settings.tenant_budget_usd),
            None if settings.key_budget_usd is None else to_pico(settings.key_budget_usd),
        )

    # --- RPCs -------------------------------------------------------------------------------------------
    async def ListModels(self, request: common_pb2.ListModelsRequest, context: Any) -> common_pb2.ListModelsResponse:
        models = await self.available.get(context.time_remaining())
        return common_pb2.ListModelsResponse(models=[m.info() for m in models])

    async def Decide(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.Decision:
        return (await self._route(request, context, admit=False)).decision

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        routed = await self._route(request, context)
        try:
            return await self._complete(routed, context)
        finally:
            await self._release_unsettled(routed)

    async def CompleteStream(
        self, request: router_pb2.CompleteRequest, context: Any
    ) -> AsyncIterator[router_pb2.CompleteChunk]:
        routed = await self._route(request, context)
        try:
            async with aclosing(self._complete_stream(routed, context)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            await self._release_unsettled(routed)

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    # --- serving ----------------------------------------------------------------------------------------
    async def _complete(self, routed: Routed, context: Any) -> router_pb2.CompleteResponse:
        cached = await self._from_cache(routed)
        if cached is not None:
            return cached
        served = await self._generate(routed, context)
        response = self._response(routed, served)
        await self._settle(routed, response)
        await self._to_cache(routed, response)
        return response

    async def _complete_stream(self, routed: Routed, context: Any) -> AsyncGenerator[router_pb2.CompleteChunk]:
        yield router_pb2.CompleteChunk(decision=routed.decision)
        cached = await self._from_cache(routed)
        if cached is not None:
            if cached.content:
                yield router_pb2.CompleteChunk(delta=cached.content)
            cached.content = ""
            yield router_pb2.CompleteChunk(final=cached)
            return
        stream = StreamState(routed.plan.order[0].model)
        try:
            # aclosing: when the caller leaves, the provider stream is cancelled now, not at garbage collection.
            async with aclosing(self._generate_stream(routed, context, stream)) as deltas:
                async for delta in deltas:
                    yield router_pb2.CompleteChunk(delta=delta)
            assert stream.served is not None  # _generate_stream returns only with the final chunk, or raises
            response = self._response(routed, stream.served)
            await self._settle(routed, response)
            await self._to_cache(routed, response)
            response.content = ""
            yield router_pb2.CompleteChunk(final=response)
        except (ServiceError, asyncio.CancelledError, GeneratorExit) as exc:
            # Failed or abandoned mid-stream: what reached the caller was served and is charged once.
            if stream.parts and stream.served is None:
                outcome = "interrupted" if isinstance(exc, ServiceError) else "cancelled"
                partial = stream.partial(routed, exc.metadata if isinstance(exc, ServiceError) else {})
                await self._settle(routed, self._response(routed, partial), outcome)
            raise

    # --- admission and routing --------------------------------------------------------------------------
    async def _route(self, request: router_pb2.CompleteRequest, context: Any, admit: bool = True) -> Routed:
        """Validate, route, and (last, so nothing after it can fail before serving) admit: claim the request
        id, count it against the rate limit, hold its costliest estimate against the budgets."""
        limits = self._limits(request)
        account = Account(request.tenant or "default", key_id(request.api_key))
        models = await self.available.get(context.time_remaining())
        if request.model and request.model != "auto":
            if self.registry.get(request.model) is None:
                raise ServiceError(
                    grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", f"model {request.model!r} does not exist"
                )
            options = policy.evaluate(models, None, limits)
            plan, version = policy.explicit(options, request.model), ""
        else:
            scores, version = await self._classify(request, context)
            options = policy.evaluate(models, scores, limits)
            plan = policy.plan(self.registry, options, limits, classified=scores is not None)
        decision = router_pb2.Decision(
            model=plan.order[0].model.name,
            reason=plan.reason,
            quality_target=limits.quality_target,
            classifier_version=version,
            candidates=[
                router_pb2.Candidate(
                    model=o.model.name,
                    predicted_quality=o.quality,
                    estimated_cost_usd=str(o.cost),
                    eligible=not o.excluded,
                    excluded_because=o.excluded,
                )
                for o in plan.options
            ],
        )
        routed = Routed(request, request.request_id or uuid.uuid4().hex, account, limits, plan, decision)
        if admit:
            routed.hold = Hold(routed.request_id, max(to_pico(o.cost) for o in plan.order))
            await self._admit(account, routed.hold)
        return routed

    def _limits(self, request: router_pb2.CompleteRequest) -> policy.Limits:
        if not request.messages:
            raise invalid("messages must not be empty", "messages")
        for i, message in enumerate(request.messages):
            if message.role not in ROLES:
                raise invalid(f"messages[{i}].role must be one of {sorted(ROLES)}", f"messages[{i}].role")
        if not any(m.content.strip() for m in request.messages):
            raise invalid("messages have no content", "messages")
        if request.HasField("quality_target") and not 0 <= request.quality_target <= 1:
            raise invalid("quality_target must be within [0, 1]", "quality_target")
        if request.HasField("max_tokens") and request.max_tokens <= 0:
            raise invalid("max_tokens must be positive", "max_tokens")
        if request.HasField("max_latency_ms") and request.max_latency_ms <= 0:
            raise invalid("max_latency_ms must be positive", "max_latency_ms")
        if request.HasField("temperature") and not 0 <= request.temperature <= 2:
            raise invalid("temperature must be within [0, 2]", "temperature")
        max_cost = None
        if request.max_cost_usd:
            try:
                max_cost = Decimal(request.max_cost_usd)
            except InvalidOperation:
                raise invalid("max_cost_usd must be a decimal number", "max_cost_usd") from None
            if not max_cost.is_finite() or max_cost < 0:
                raise invalid("max_cost_usd must be a non-negative number", "max_cost_usd")
        extra: Any = {}
        if request.passthrough_json:
            try:
                extra = json.loads(request.passthrough_json)
            except ValueError:
                extra = None
            if not isinstance(extra, dict):
                raise invalid("passthrough_json must be a JSON object", "passthrough_json")
        return policy.Limits(
            quality_target=(
                request.quality_target if request.HasField("quality_target") else self.settings.default_quality_target
            ),
            input_tokens=count_message_tokens(request.messages),
            max_output_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            expected_output_tokens=self.settings.expected_output_tokens,
            max_cost_usd=max_cost,
            max_latency_ms=request.max_latency_ms if request.HasField("max_latency_ms") else None,
            needs_tools=bool(extra.get("tools")),
        )

    async def _admit(self, account: Account, hold: Hold) -> None:
        settings = self.settings
        refused = await self.store.admit(account, self.allowance, hold)
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
        if refused:
            metrics.BUDGET_REJECTIONS.inc()
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "BUDGET_EXCEEDED",
                f"the {refused} budget for this {settings.budget_period} is spent",
                {"budget": refused},
            )

    async def _classify(self, request: router_pb2.CompleteRequest, context: Any) -> tuple[dict[str, float] | None, str]:
        """The classifier's predictions for the last user turn; None when it cannot answer in time."""
        prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), request.messages[-1].content)
        timeout = min(context.time_remaining() or math.inf, self.settings.classifier_timeout_s)
        try:
            reply = await self.classifier.Score(classifier_pb2.ScoreRequest(prompts=[prompt]), timeout=timeout)
        except grpc.RpcError as err:
            log.warning("classifier unavailable; routing without it", extra={"code": str(err.code())})
            return None, ""
        return dict(reply.results[0].quality), reply.model_version

    def _generate_request(self, routed: Routed, model: ModelSpec) -> provider_pb2.GenerateRequest:
        request = routed.request
        return provider_pb2.GenerateRequest(
            model=model.name,
            messages=request.messages,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            temperature=request.temperature if request.HasField("temperature") else None,
            request_id=routed.request_id,
            passthrough_json=request.passthrough_json,
        )

    async def _generate(self, routed: Routed, context: Any) -> Served:
        order = routed.plan.order
        for index, option in enumerate(order):
            try:
                reply = await self.providers.Generate(
                    self._generate_request(routed, option.model), timeout=context.time_remaining()
                )
            except grpc.RpcError as err:
                self._fall_back_or_raise(ServiceError.from_rpc_error(err), order, index)
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
        try:
            reply = await self.providers.Generate(
                self._generate_request(routed, target.model), timeout=context.time_remaining()
            )
        except grpc.RpcError as err:
            log.warning("escalation failed; keeping the weak answer", extra={"error": err.details()})
            return
        except asyncio.CancelledError:
            # The caller left while the stronger model worked: the weak answer was generated all the same.
            await self._settle(routed, self._response(routed, served), "cancelled")
            raise
        metrics.ESCALATIONS.labels(weak.model.name, target.model.name).inc()
        served.add(reply, target.model)
        served.escalated = True

    async def _generate_stream(self, routed: Routed, context: Any, stream: StreamState) -> AsyncGenerator[str]:
        """Yields deltas and fills `stream`. Falls back to the next model only before the first delta."""
        order = routed.plan.order
        for index, option in enumerate(order):
            stream.model = option.model
            call = self.providers.GenerateStream(
                self._generate_request(routed, option.model), timeout=context.time_remaining()
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
                self._fall_back_or_raise(error, order, index)
                continue
            finally:
                call.cancel()
            raise ServiceError(grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR", "provider stream ended without usage")

    def _fall_back_or_raise(self, error: ServiceError, order: list[policy.Option], index: int) -> None:
        if error.code not in FALLBACK_CODES or index + 1 >= len(order):
            raise error
        log.warning(
            "provider failed; falling back",
            extra={"model": order[index].model.name, "next": order[index + 1].model.name, "reason": error.reason},
        )
        metrics.FALLBACKS.labels(order[index].model.name, order[index + 1].model.name).inc()

    # --- accounting -------------------------------------------------------------------------------------
    def _response(self, routed: Routed, served: Served) -> router_pb2.CompleteResponse:
        return router_pb2.CompleteResponse(
            id=routed.request_id,
            content=served.content,
            model=served.model.name,
            provider=served.provider,
            usage=common_pb2.Usage(
                input_tokens=served.input_tokens, output_tokens=served.output_tokens, estimated=served.estimated
            ),
            cost_usd=str(served.cost),
            latency_ms=int((time.perf_counter() - routed.started) * 1000),
            decision=routed.decision,
            cache_hit=False,
            escalated=served.escalated,
            retries=served.retries,
            finish_reason=served.finish_reason,
            tool_calls_json=served.tool_calls_json,
        )

    async def _settle(self, routed: Routed, response: router_pb2.CompleteResponse, outcome: str = "ok") -> None:
        """Charge once, whatever happens to the caller meanwhile: the charge runs shielded to its end."""
        task = asyncio.ensure_future(self._charge(routed, response, outcome))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _charge(self, routed: Routed, response: router_pb2.CompleteResponse, outcome: str) -> None:
        cost = Decimal(response.cost_usd or "0")
        baseline_model = self.available.baseline()
        baseline = (
            baseline_model.cost_usd(response.usage.input_tokens, response.usage.output_tokens)
            if baseline_model and not response.cache_hit
            else cost
        )
        record = {
            "request_id": routed.request_id,
            "ts": time.time(),
            "tenant": routed.account.tenant,
            "key": routed.account.key,
            "model": response.model,
            "provider": response.provider,
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
            "tokens_estimated": response.usage.estimated,
            "cost_usd": str(cost),
            "baseline_cost_usd": str(baseline),
            "latency_ms": response.latency_ms,
            "reason": routed.plan.code,
            "cache_hit": response.cache_hit,
            "escalated": response.escalated,
            "retries": response.retries,
            "outcome": outcome,
        }
        assert routed.hold is not None  # only admitted requests are served
        period = self.settings.budget_period
        charged = await self.store.charge(routed.account, period, routed.hold, to_pico(cost), record)
        routed.settled = True
        if not charged:
            log.warning("request id charged before; not charged again", extra={"request_id": routed.request_id})
            return
        log.info("request served", extra=record)
        model = response.model
        metrics.REQUESTS.labels(model, routed.plan.code, outcome).inc()
        metrics.COST.labels(model).inc(float(cost))
        metrics.BASELINE_COST.inc(float(baseline))
        metrics.TOKENS.labels(model, "input").inc(response.usage.input_tokens)
        metrics.TOKENS.labels(model, "output").inc(response.usage.output_tokens)

    async def _release_unsettled(self, routed: Routed) -> None:
        """A request that ends without a charge (refused upstream, failed, cancelled) frees its hold."""
        if routed.hold is not None and not routed.settled:
            await asyncio.shield(self.store.release(routed.account, routed.hold))

    # --- cache ------------------------------------------------------------------------------------------
    def _cache_key(self, routed: Routed) -> str:
        request = router_pb2.CompleteRequest()
        request.CopyFrom(routed.request)
        request.api_key, request.request_id, request.session_id = "", "", ""
        request.tenant = routed.account.tenant  # tenants never see each other's answers
        return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()

    async def _from_cache(self, routed: Routed) -> router_pb2.CompleteResponse | None:
        if not self.settings.cache_ttl_s:
            return None
        raw = await self.store.cache_get(self._cache_key(routed))
        metrics.CACHE.labels("hit" if raw else "miss").inc()
        if raw is None:
            return None
        response = router_pb2.CompleteResponse.FromString(raw)
        response.id, response.cache_hit, response.cost_usd = routed.request_id, True, "0"
        response.latency_ms = int((time.perf_counter() - routed.started) * 1000)
        response.decision.CopyFrom(routed.decision)
        response.decision.reason = "served from the response cache"
        await self._settle(routed, response, "cache_hit")
        return response

    async def _to_cache(self, routed: Routed, response: router_pb2.CompleteResponse) -> None:
        """Best effort: the answer is served and charged already; failing the call now would bill a retry."""
        if not (self.settings.cache_ttl_s and (response.content or response.tool_calls_json)):
            return
        try:
            await self.store.cache_set(self._cache_key(routed), response.SerializeToString(), self.settings.cache_ttl_s)
        except Exception:
            log.warning("response cache unavailable; answer served uncached", exc_info=True)
