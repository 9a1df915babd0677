"""Serving a routed request: the provider calls, with fallback to the next model of the plan when a provider
fails, and escalation of a weak answer (services/router/escalation.py) to a stronger tier. What a failed
attempt cost is owed by the request; another attempt is made only when the hold can grow to cover it."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc

from llmrouter.deadlines import MIN_SEND_S, PROVIDERS_MARGIN_S, REACH_PROVIDERS_S
from llmrouter.errors import NEVER_CONNECTED, USAGE_FINAL, ServiceError
from llmrouter.registry import ModelSpec
from llmrouter.tokens import count_text_tokens
from llmrouter.upstream_messages import UPSTREAM_REASONS, upstream_message
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router import escalation, metrics, policy
from services.router.admission import Admission, unpriced_cap
from services.router.costs import affordable_output, floor_pico, least_pico, worst_pico
from services.router.cued_stream import Cue, provider_chunks
from services.router.end_users import EndUserScope
from services.router.routed import Routed, Served, counts_below_nothing
from services.router.store import PICO, to_pico

log = logging.getLogger("llmrouter.router")

# Provider failures worth another model: the next one may well answer. Bad requests are not retried.
FALLBACK_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
# Failures after which the upstream may have generated (and billed) anything up to the attempt's worst case.
UNKNOWN_OUTCOME = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# No provider call (first, fallback, escalation) with less time left: the providers would refuse it unsent, in vain.
MIN_CALL_S = REACH_PROVIDERS_S + PROVIDERS_MARGIN_S + MIN_SEND_S


@dataclass
class StreamState:
    """A stream in flight: the model answering, what reached the caller, and the summary once complete."""

    model: ModelSpec
    worst: Decimal = Decimal(0)  # the worst case of the attempt in progress
    parts: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)  # the pieces of the model's refusal that reached the caller
    served: Served | None = None
    # What the providers' failed retries of the attempt in progress consumed (a `consumed` chunk): charged only when
    # no final chunk or error metadata, which count it again, reaches the router.
    consumed: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    # The output tokens of the attempt's tool calls so far (`tool_call_tokens` chunks): generated and billed, though
    # the caller gets them only whole, in the final chunk, so charged beside the text when the stream is left.
    tool_call_tokens: int = 0
    # The attempt's input as its upstream reported it (an `input` chunk), its tokens as the upstream bills them: charged
    # when the stream is left, rather than the router's own estimate of the prompt (another tokenizer's count).
    input: common_pb2.Usage | None = None
    # Whether the attempt in progress surely never reached its upstream (the providers wait for the router's word).
    cue: Cue = field(default_factory=Cue)

    @property
    def delivered(self) -> bool:
        """Whether any of the answer (its text or its refusal) reached the caller: no fallback after that."""
        return bool(self.parts or self.refusal)

    @property
    def consumed_usd(self) -> Decimal:
        return self.model.usage_cost_usd(self.consumed)

    def providers_failure(self, request_id: str) -> ServiceError | None:
        """How the attempt's providers call failed, if it had when the caller left: as the caller who stayed is told
        it, with what the providers measured."""
        failure = self.cue.failure
        return None if failure is None else provider_failure(failure, request_id)

    def owe_failed_attempt(self, routed: Routed, error: ServiceError) -> None:
        """The attempt in progress failed before any of it was delivered: the request owes what it cost (attempt_cost,
        with what its failed retries consumed when the providers' account of them never arrived; nothing of an
        unknown outcome when it ended before the word to send, which no upstream had). Over from here: a caller
        leaving next has no attempt in progress to owe for."""
        if "cost_usd" not in error.metadata:
            routed.owed += self.consumed_usd
        if self.cue.unreached:  # ended (its deadline, the providers service gone) before the word to send
            error.metadata["sent"] = "false"
        routed.owed += attempt_cost(error, self.model, self.worst)
        self.worst, self.consumed, self.tool_call_tokens = Decimal(0), common_pb2.Usage(), 0
        self.input, self.cue.unreached, self.cue.failure = None, False, None

    def owe_unknown_rest(self, routed: Routed, failed: ServiceError | None, partial: Served) -> None:
        """A stream whose providers call broke in transit after some of it was delivered (that service died, or drained
        past its grace): what its upstream generated past what reached the router is unknown, and billed. The attempt
        owes its worst case, as any of unknown outcome, of which `partial`, charged, is part."""
        if failed is not None and cut_in_transit(failed):
            routed.owed += max(self.worst + self.consumed_usd - partial.cost, Decimal(0))

    async def partial(self, routed: Routed, measured: Mapping[str, str]) -> Served:
        """What an interrupted stream served: as the provider measured it, else counted here."""
        text, refusal = "".join(self.parts), "".join(self.refusal)
        if "cost_usd" in measured:
            usage, cost = measured_usage(measured), measured_usd(self.model, measured)
        else:  # counted here, with what failed retries consumed (no metadata counted it: the caller left, or a cut)
            # When the upstream said nothing yet: counted in the model's own tokens where they are known, as the
            # providers count a stream cut before its usage (cl100k_base, the routing's estimate, counts a prompt in
            # Hindi near three times gpt-4o's o200k_base tokens: past the hold, the charge was capped there).
            estimate = common_pb2.Usage(input_tokens=routed.limits.input_bound.estimate(self.model))
            started = self.input if self.input is not None else estimate
            # In chunks that let other requests run: a hostile upstream's answer may be megabytes.
            written = await count_text_tokens(text + refusal, self.model.estimating_encoding) + self.tool_call_tokens
            usage = common_pb2.Usage(
                input_tokens=started.input_tokens + self.consumed.input_tokens,
                # Never past the attempt's max_tokens, which no upstream writes past: a count over it is the estimating
                # tokenizer's (cl100k_base counts Hindi near three times Llama 3's tokens), and took the charge past
                # the hold, where it was capped.
                output_tokens=min(written, routed.max_tokens[self.model.name]) + self.consumed.output_tokens,
                estimated=True,
                cached_input_tokens=started.cached_input_tokens + self.consumed.cached_input_tokens,
                cache_write_input_tokens=started.cache_write_input_tokens + self.consumed.cache_write_input_tokens,
            )
            cost = self.model.usage_cost_usd(usage)
        return Served(
            self.model,
            content=text,
            refusal=refusal,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            estimated=usage.estimated,
            cost=cost,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_input_tokens=usage.cache_write_input_tokens,
            finish_reason="error",
            generations=[(self.model.name, usage)],
        )


class Serving:
    def __init__(
        self,
        providers: provider_pb2_grpc.ProviderStub,
        admission: Admission,
        verifier: escalation.Verifier | None = None,
    ) -> None:
        self.providers = providers
        self.admission = admission
        self.verifier = verifier

    async def generate(self, routed: Routed, context: Any) -> Served:
        _check_time_left(routed, context)
        routed.providers_asked = True
        order = routed.plan.order
        for index, option in enumerate(order):
            # Token log-probabilities inform escalation, so they are asked for only when it could follow.
            stronger = None if routed.escalation == "off" else _escalation_target(routed, option)
            try:
                reply = await self.providers.Generate(
                    generate_request(
                        routed, option.model, self.admission.end_users, want_confidence=stronger is not None
                    ),
                    timeout=routed.time_left(context),
                )
            except grpc.RpcError as err:
                error = provider_failure(err, routed.request_id)
                routed.owed += attempt_cost(error, option.model, worst_usd(routed, option.model))
                routed.failed_models.add(option.model.name)
                await self._fall_back_or_raise(routed, error, index, routed.time_left(context))
                continue
            served = Served(option.model)
            served.add(reply, option.model)
            served.circumstance = _weaker_fallback(routed, option)
            await self._escalate_if_weak(routed, context, served, option)
            return served
        raise AssertionError("unreachable: the last option raises")

    async def _escalate_if_weak(self, routed: Routed, context: Any, served: Served, weak: policy.Option) -> None:
        """A weak answer (a signal of escalation.py) is asked again of the cheapest stronger tier, once, never of a
        model an attempt of this request failed on (a weaker fallback's answer, its first choice down); the first answer
        stays charged either way, because it was generated."""
        target = _escalation_target(routed, weak)
        if target is None or routed.escalation == "off":
            return
        # Whether max_cost_usd or a budget's remainder lowered the answering model's max_tokens: the decision says so of
        # the plan's first choice alone, and a weaker fallback may have answered.
        capped = routed.max_tokens[served.model.name] < unpriced_cap(served.model, routed.limits)
        why: str | None = escalation.signal(served, routed.escalation, routed.limits.max_output_tokens, capped)
        if not why:
            prompt = next((m.content for m in reversed(routed.request.messages) if m.role == "user"), "")
            why = await escalation.doubt(
                self.verifier, prompt, served, routed.escalation, routed.time_left(context), routed.verifier_threshold
            )
            if why is None and routed.time_left(context) < MIN_CALL_S:
                # Unjudged for want of the request's time (its caller's deadline, what the weak answer took), which the
                # response cache's key does not hold: a request with time to spare would be judged.
                served.circumstance = "no time left to verify"
        if not why:
            return
        if _kept_for_no_reader(routed, served, why):
            return
        if routed.time_left(context) < MIN_CALL_S:  # the providers would refuse it unsent
            log.warning("no time left to escalate; keeping the weak answer", extra={"signal": why})
            served.circumstance = "no time left"
            return
        max_tokens = await self._escalation_room(routed, served, target.model)
        if _kept_for_no_reader(routed, served, why):  # left, or cut by the drain, while the hold grew
            return
        shortest = min(routed.limits.min_output_tokens, routed.max_tokens[target.model.name])
        unpriced = unpriced_cap(target.model, routed.limits)
        if why == "truncated" and max_tokens < unpriced:
            # Money (max_cost_usd, the budgets) cutting the stronger model at no more than the weak answer wrote would
            # cut it shorter still: its answer served in the longer one's stead, both paid for.
            shortest = max(shortest, min(served.output_tokens + 1, unpriced))
        if max_tokens < shortest:
            if _cap_alone_refuses(routed, served, target.model, shortest):  # as the caller asked: nothing to warn of
                log.info("max_cost_usd leaves no room to escalate; keeping the weak answer", extra={"signal": why})
            else:
                log.warning("no room left in the hold to escalate; keeping the weak answer", extra={"signal": why})
                served.circumstance = "no room left in the hold"
            return
        try:
            reply = await self.providers.Generate(
                generate_request(routed, target.model, self.admission.end_users, max_tokens),
                timeout=routed.time_left(context),
            )
        except grpc.RpcError as err:
            log.warning("escalation failed; keeping the weak answer", extra={"error": err.details()})
            failed = ServiceError.from_rpc_error(err)
            routed.owed += attempt_cost(failed, target.model, worst_usd(routed, target.model, max_tokens))
            served.circumstance = "the stronger model failed"
            # What it owes is on the ledger line with no generation of its own: said there, with what was tried and why.
            routed.note = f"escalation to {target.model.name} ({why}) failed ({failed.reason}): the weak answer kept"
            return
        metrics.ESCALATIONS.labels(weak.model.name, target.model.name).inc()
        if served.add(reply, target.model):
            served.room_capped = max_tokens < routed.max_tokens[target.model.name]
        else:
            routed.note = f"escalated to {target.model.name}, which answered nothing: the weak answer kept"
        served.escalated, served.escalation_signal = True, why

    async def _escalation_room(self, routed: Routed, served: Served, target: ModelSpec) -> int:
        """The most the stronger model may write after the weak answer. Both answers are charged: the hold grows, as
        for a fallback, to the stronger one's worst case on top of the first (and of what failed attempts owe); when
        it cannot (max_cost_usd, the budgets; a weak answer reported past the hold), the stronger one may write only
        what the hold has left. Admission holds one generation's worst case: left as it is, the hold cuts the stronger
        answer below the caller's max_tokens whenever the weak one cost anything."""
        assert routed.hold is not None  # only admitted requests are served
        cap, billed = routed.max_tokens[target.name], routed.limits.billed_input(target)
        spent = to_pico(served.cost + routed.owed)
        if affordable_output(target, billed, routed.hold.pico - spent) < cap:
            try:
                await self.admission.cover(routed, worst_pico(target, billed, cap), served.cost)
            except Exception:  # an error of the store's own keys: the weak answer, generated, is still charged
                log.exception("hold not grown to escalate; the stronger answer keeps to its room")
        return min(cap, affordable_output(target, billed, routed.hold.pico - spent))

    async def generate_stream(
        self, routed: Routed, context: Any, stream: StreamState
    ) -> AsyncGenerator[router_pb2.CompleteChunk]:
        """Yields the answer's chunks (its deltas and refusal pieces) and fills `stream`. Falls back to the next model
        only before the first of them."""
        _check_time_left(routed, context)
        routed.providers_asked = True
        order = routed.plan.order
        for index, option in enumerate(order):
            stream.model, stream.worst = option.model, worst_usd(routed, option.model)
            stream.consumed, stream.tool_call_tokens, stream.input = common_pb2.Usage(), 0, None
            request = generate_request(routed, option.model, self.admission.end_users)
            request.retry_budget_usd = format(retry_budget(routed, stream.worst), "f")
            request.admitted_prices.CopyFrom(
                option.model.prices()
            )  # the budget's prices, not the providers' registry's
            request.tool_call_progress = request.input_progress = request.refusal_progress = True
            request.usage_final = True  # attempt_cost reads the mark
            chunks = provider_chunks(self.providers, request, lambda: routed.time_left(context), stream.cue)
            try:
                async for chunk in chunks:
                    kind = chunk.WhichOneof("kind")
                    if kind == "delta":
                        stream.parts.append(chunk.delta)
                        yield router_pb2.CompleteChunk(delta=chunk.delta)
                    elif kind == "refusal_delta":
                        stream.refusal.append(chunk.refusal_delta)
                        yield router_pb2.CompleteChunk(refusal_delta=chunk.refusal_delta)
                    elif kind == "tool_call_tokens":
                        stream.tool_call_tokens = chunk.tool_call_tokens
                    elif kind == "input":
                        stream.input = chunk.input
                    elif kind == "consumed":  # counts the failed attempt's input and tool calls: the next one's anew
                        stream.consumed, stream.tool_call_tokens, stream.input = chunk.consumed.usage, 0, None
                    elif kind == "final":
                        stream.served = Served(option.model)
                        stream.served.add(chunk.final, option.model)
                        stream.served.content = "".join(stream.parts)
                        stream.served.refusal = "".join(stream.refusal)
                        stream.served.circumstance = _weaker_fallback(routed, option)
                        return
                    # Any other kind is one a newer providers service sends (a rolling upgrade): skipped, as a oneof's
                    # new member is meant to be, the stream read on to its final chunk. Taken for the final one, it
                    # ended the stream there, the text after it never delivered and the charge read from no usage.
            except grpc.RpcError as err:
                error = provider_failure(err, routed.request_id)
                if stream.delivered:
                    raise error from None
                stream.owe_failed_attempt(routed, error)
                await self._fall_back_or_raise(routed, error, index, routed.time_left(context))
                yield router_pb2.CompleteChunk(decision=answered_by(routed.decision, order[index + 1].model.name))
                continue
            finally:
                await chunks.aclose()  # cancels the providers call now
            # Ended without its final chunk: what the upstream generated is unknown. Once some of it was delivered, it
            # is charged as a cut stream; before that (an answer of tool calls alone delivers nothing until its final
            # chunk), the attempt is owed its worst case, as any of unknown outcome, with what its retries consumed;
            # nothing when it ended before the word to send, which no upstream had.
            if not stream.delivered and stream.cue.unreached:
                routed.note = "the providers stream ended before the upstream was reached: the attempt cost nothing"
            elif not stream.delivered:
                routed.owed += stream.worst + stream.consumed_usd
                stream.worst, stream.consumed, stream.tool_call_tokens = Decimal(0), common_pb2.Usage(), 0
            raise ServiceError(grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR", "provider stream ended without usage")

    async def _fall_back_or_raise(self, routed: Routed, error: ServiceError, index: int, time_left: float) -> None:
        """After a failed attempt, its cost owed: fall back to the next model only if it is worth it, the request's
        time leaves room for it, and the hold can grow to cover what is owed plus the next attempt's worst case; else
        raise."""
        order = routed.plan.order
        if error.code not in FALLBACK_CODES or index + 1 >= len(order):
            raise error
        if time_left < MIN_CALL_S or routed.caller_left:  # no time for it, or no one to read its answer
            raise error
        following = order[index + 1].model
        if not await self.admission.cover(routed, to_pico(worst_usd(routed, following))):
            raise error
        log.warning(
            "provider failed; falling back",
            extra={"model": order[index].model.name, "next": following.name, "reason": error.reason},
        )
        metrics.FALLBACKS.labels(order[index].model.name, following.name).inc()


def _escalation_target(routed: Routed, weak: policy.Option) -> policy.Option | None:
    """Where a weak answer by `weak` would be escalated: the cheapest stronger tier of the plan, of the models no
    attempt of the request failed on."""
    assert routed.registry is not None  # set with the plan
    untried = [o for o in routed.plan.order if o.model.name not in routed.failed_models]
    return policy.escalation_target(untried, weak, routed.registry)


def _kept_for_no_reader(routed: Routed, served: Served, why: str) -> bool:
    """Whether the weak answer is kept because its caller left (or the drain cut its call, which reads as leaving):
    a stronger answer would be paid for, and read by no one."""
    if not routed.caller_left:
        return False
    log.info("the caller left; keeping the weak answer", extra={"signal": why})
    served.circumstance = routed.note = "the caller left: no escalation made, the weak answer kept"
    return True


def could_escalate(routed: Routed, model: ModelSpec) -> bool:
    """Whether a unary call answered by `model` could have escalated the answer: a plain stream's answer then is not
    the one a unary call would be served (services/router/cache.py)."""
    assert routed.registry is not None  # set with the plan
    if routed.escalation == "off":
        return False
    option = next((o for o in routed.plan.order if o.model.name == model.name), None)
    return option is not None and policy.escalation_target(routed.plan.order, option, routed.registry) is not None


def answered_by(decision: router_pb2.Decision, model: str) -> router_pb2.Decision:
    """The decision as a stream tells it once `model` answers in place of the model routed to (a fallback, an escalated
    buffered stream): its caller names the stream's model from it, as an unstreamed answer's is named by its model."""
    told = router_pb2.Decision()
    told.CopyFrom(decision)
    told.model = model
    return told


def _cap_alone_refuses(routed: Routed, served: Served, target: ModelSpec, shortest: int) -> bool:
    """Whether max_cost_usd alone, after the weak answer was paid, leaves the stronger model no room for its shortest
    answer: then the weak answer is the request's own (its cap is part of the response cache's key), not owed to a
    budget's remainder or to what failed attempts cost. Paid at the least its tokens can cost: what it cost here owes
    something to the provider's prompt cache (a write dearer than a read), whose state is the moment's. Never when the
    weak answer's report is past the hold: its tokens, false, left no room, not the cap (no answer to cache as the
    request's own)."""
    assert routed.hold is not None  # only admitted requests are served
    cap = routed.limits.max_cost_usd
    if cap is None or to_pico(served.cost + routed.owed) > routed.hold.pico:
        return False
    room = floor_pico(cap) - least_pico(served.model, served.input_tokens, served.output_tokens)
    return affordable_output(target, routed.limits.billed_input(target), room) < shortest


def _weaker_fallback(routed: Routed, option: policy.Option) -> str:
    """Why the answer is a weaker tier's than the plan's first choice, which failed ('' when it is not): kept, it would
    be served in the first choice's stead once that recovers. A stronger fallback's answer is kept."""
    first = routed.plan.order[0].model
    assert routed.registry is not None  # set with the plan
    if routed.registry.tier_rank(option.model) < routed.registry.tier_rank(first):
        return f"{first.name} failed"
    return ""


def provider_failure(err: grpc.RpcError, request_id: str) -> ServiceError:
    """A providers call's failure as this router's caller is told it: a provider's failure in fixed words for its
    kind and status (llmrouter.upstream_messages), whatever the providers service said. One of a version before
    quoted the provider's error body; its words are logged with the request id. A call that broke between the services
    (no ErrorInfo) keeps gRPC's text, which the server interceptor logs and replaces."""
    error = ServiceError.from_rpc_error(err)
    if error.explained and error.reason in UPSTREAM_REASONS:
        log.warning(
            "provider call failed",
            extra={"request_id": request_id, "reason": error.reason, "error": error.message},
        )
        error.message = upstream_message(error.reason, error.metadata)
    return error


def _check_time_left(routed: Routed, context: Any) -> None:
    """A first attempt, like a fallback, needs time to reach its upstream: made with none (the caller's deadline
    passed while a unary call's generation, shielded, looked up the cache), it would fail before reaching even the
    providers, a bare DEADLINE_EXCEEDED owed its worst case as an unknown outcome; with little, they refuse it."""
    if routed.time_left(context) < MIN_CALL_S:
        raise ServiceError(
            grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "no time left for a provider call; none was made"
        )


def generate_request(
    routed: Routed,
    model: ModelSpec,
    end_users: EndUserScope,
    max_tokens: int | None = None,
    want_confidence: bool = False,
) -> provider_pb2.GenerateRequest:
    """The provider call for one model of the plan, never allowed to write more than admission held for; its end-user
    fields scoped as admission counted them (Admission.end_users)."""
    request = routed.request
    return provider_pb2.GenerateRequest(
        model=model.name,
        messages=request.messages,
        max_tokens=routed.max_tokens[model.name] if max_tokens is None else max_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        request_id=routed.request_id,
        passthrough_json=end_users.passthrough_json(request.passthrough_json, routed.account.tenant),
        want_confidence=want_confidence,
    )


def worst_usd(routed: Routed, model: ModelSpec, max_tokens: int | None = None) -> Decimal:
    """The most one generation by `model` can cost for this request: billed the most input it can be, writing
    all it may."""
    output = routed.max_tokens[model.name] if max_tokens is None else max_tokens
    return Decimal(worst_pico(model, routed.limits.billed_input(model), output)) / PICO


def retry_budget(routed: Routed, worst: Decimal) -> Decimal:
    """What the providers' retries of an attempt may consume on top of its own worst case: the room the hold
    leaves after what is owed, so that the attempt's charge stays within the hold."""
    assert routed.hold is not None  # only admitted requests are served
    return max(Decimal(routed.hold.pico - to_pico(routed.owed + worst)), Decimal(0)) / PICO


def attempt_cost(error: ServiceError, model: ModelSpec, worst: Decimal) -> Decimal:
    """What a failed provider call costs: what the providers measured it consumed (failed retries included),
    plus, when the upstream may have generated without saying so, the attempt's worst case."""
    measured = measured_usd(model, error.metadata) if "cost_usd" in error.metadata else Decimal(0)
    if measured < 0 or _measured_below_nothing(error.metadata):
        # A negative count, which no upstream bills: no measure, so the worst case, as for an outcome unknown. Owed as
        # it stands, it took what the request is charged below what its answer's own tokens cost.
        return worst
    # Nothing unknown when no upstream had the request, nor when the providers report the upstream's whole usage
    # before a failure otherwise of unknown outcome cut the call (usage_final, services/providers/dispatch.py: a stream
    # that said it finished and what it bills, cut before its end marker): the measure is the bill. Marked without a
    # measure (providers of a version before left out what they priced at nothing; or a buggy service's), it is no
    # bill: the worst case stands.
    whole = error.metadata.get(USAGE_FINAL) == "true" and "cost_usd" in error.metadata
    known = error.metadata.get("sent") == "false" or whole
    unknown = (error.code in UNKNOWN_OUTCOME or cut_in_transit(error)) and not known
    return measured + (worst if unknown else 0)


def measured_usage(measured: Mapping[str, str]) -> common_pb2.Usage:
    """The tokens the providers measured, as a failure's metadata carries them; 0 for those it does not give (a
    providers service of the version before gives no cache counts: all of the input at the input price)."""

    def count(name: str) -> int:
        return int(measured.get(name, 0))

    return common_pb2.Usage(
        input_tokens=count("input_tokens"),
        output_tokens=count("output_tokens"),
        cached_input_tokens=count("cached_input_tokens"),
        cache_write_input_tokens=count("cache_write_input_tokens"),
    )


def _measured_below_nothing(measured: Mapping[str, str]) -> bool:
    try:
        return counts_below_nothing(measured_usage(measured))
    except ValueError:  # counts no int: measured_usd prices the providers' cost_usd, checked beside this
        return False


def measured_usd(model: ModelSpec, measured: Mapping[str, str]) -> Decimal:
    """What the tokens the providers measured (a failure's metadata) cost at the prices the request was admitted
    with: the providers price them at theirs, and reload the registry on their own, so during a price change their
    cost_usd is at other prices. Their cost_usd when no tokens are given."""
    if "input_tokens" not in measured or "output_tokens" not in measured:
        return Decimal(measured["cost_usd"])
    try:
        return model.usage_cost_usd(measured_usage(measured))
    except ValueError:
        return Decimal(measured["cost_usd"])


def cut_in_transit(error: ServiceError) -> bool:
    """A providers call that broke between the services (the providers process died, or drained past its grace,
    mid-call: UNAVAILABLE without their ErrorInfo). The upstream may have the request and bill it, as after an
    upstream connection lost once the request was sent; unless gRPC never connected to the providers at all, or their
    server shed the call before any handler ran (ServiceError.shed)."""
    return not error.explained and not error.shed and not error.message.startswith(NEVER_CONNECTED)
