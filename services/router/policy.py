"""The routing policy, free of I/O: from predicted qualities, prices and the caller's limits to a plan, the
ordered models to try. The first is the decision; the rest are fallbacks when a provider fails."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import FORMAT_FIELDS, ModelSpec, ProviderSpec, Registry
from services.router.costs import floor_pico, worst_pico
from services.router.exclusions import (
    BLANK_STOP_REFUSED,
    FORMAT_UNHONOURED,
    LOCAL_UNAVAILABLE,
    LOGIT_BIAS_UNAPPLIED,
    LOGPROBS_UNRETURNED,
    NO_BLANK_STOP,
    NO_LOGIT_BIAS,
    NO_LOGPROBS,
    NO_RAW_ARGUMENTS,
    NO_TOOLS,
    NOT_SERVED,
    OBJECT_ARGUMENTS_ONLY,
    TEMPERATURE_CAPPED,
    UNAVAILABLE,
    UNAVAILABLE_REASONS,
)
from services.router.input_bound import InputBound
from services.router.store import PICO


@dataclass(frozen=True)
class Limits:
    quality_target: float
    input_tokens: int  # the prompt counted in cl100k_base: sizes it against context windows, ranks by cost
    max_output_tokens: int | None  # the caller's cap, if any
    expected_output_tokens: int  # for the cost estimates that rank models, never for what is held
    input_bound: InputBound  # per model, the most input its provider can bill: what money is held for
    max_cost_usd: Decimal | None = None
    max_latency_ms: int | None = None
    needs_tools: bool = False
    response_format: str = ""  # the response_format type the answer must have (json_object, json_schema); '' any
    needs_logprobs: bool = False  # the caller asked for the answer's token log-probabilities (logprobs, top_logprobs)
    needs_logit_bias: bool = False  # the caller sent a logit_bias, which only some upstreams apply
    # The first tool call whose arguments are no JSON object, which only some upstreams take (Validated); '' none.
    raw_arguments_at: str = ""
    temperature: float | None = None  # the caller's, if any: some APIs take less than others (registry max_temperature)
    blank_stop: bool = False  # the caller's stop holds a sequence of only whitespace, which some APIs refuse
    min_output_tokens: int = 1  # the shortest useful answer: a model that cannot afford it is not eligible
    # The fields rendered into the prompt (tools, tool_choice, response_format), as billed; each counted by itself
    # only once the prompt is refused for its length (routing.planned): the field to name then (over_alone).
    prompt_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fields_alone: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def billed_input(self, model: ModelSpec) -> int:
        return self.input_bound.tokens(model)


@dataclass(frozen=True)
class Option:
    model: ModelSpec
    quality: float
    cost: Decimal  # estimated, for this prompt
    excluded: str  # why a hard limit rules it out; '' when it is within every limit


@dataclass(frozen=True)
class Plan:
    options: list[Option]  # every candidate, as evaluated, for the decision record
    order: list[Option]  # what to try, first to last
    code: str  # low-cardinality reason, a metric label
    reason: str  # the same for humans
    # A session's plan (sessions.stick): the turn's own, which admission goes back to when the budget's remainder
    # cannot pay for the session's model (Admission._fit).
    own: Plan | None = None


def predicted_quality(model: ModelSpec, scores: Mapping[str, float] | None) -> float | None:
    if model.quality_from and scores is not None and model.quality_from in scores:
        return scores[model.quality_from]
    return model.quality_prior


def evaluate(models: Sequence[ModelSpec], scores: Mapping[str, float] | None, limits: Limits) -> list[Option]:
    options = []
    for model in models:
        output = min(limits.max_output_tokens or limits.expected_output_tokens, model.max_output_tokens)
        cost = model.cost_usd(limits.input_tokens, output)
        # The caller's max_tokens (at most the model's own limit) must fit the context window; without it,
        # max_tokens is lowered to the room left. max_cost_usd lowers it too: only a short answer must fit.
        wanted = min(limits.max_output_tokens or limits.min_output_tokens, model.max_output_tokens)
        shortest = min(limits.min_output_tokens, wanted)
        # A short answer after the most input the provider can bill must fit max_cost_usd as admission caps it
        # (output_caps): its cost rounded up to the pico-dollar, as held and charged, within the cap rounded down.
        # Compared unrounded, a price of a fraction of a pico-dollar a token made a model eligible whose cap paid for
        # no token: sent max_tokens 0, which the gateways read as none (Anthropic's default of thousands), held for
        # no output at all.
        least_worst_pico = worst_pico(model, limits.billed_input(model), shortest)
        excluded = ""
        if limits.input_tokens + wanted > model.context_window:
            # Said as it is: a short prompt refused for the answer the caller asked room for is no prompt too long.
            answer = (
                f" with an answer of up to {wanted} tokens"
                if limits.input_tokens + shortest <= model.context_window
                else ""
            )
            excluded = f"prompt of {limits.input_tokens} tokens{answer} exceeds context window {model.context_window}"
        elif limits.max_cost_usd is not None and least_worst_pico > floor_pico(limits.max_cost_usd):
            excluded = (
                f"the prompt and a {shortest}-token answer may cost {Decimal(least_worst_pico) / PICO:f}, "
                f"over max_cost_usd {capped_usd(limits.max_cost_usd)}"
            )
        elif limits.max_latency_ms is not None and model.latency_slo_ms > limits.max_latency_ms:
            excluded = f"latency SLO {model.latency_slo_ms} ms over max_latency_ms {limits.max_latency_ms}"
        elif limits.needs_tools and not model.tools:
            excluded = NO_TOOLS
        elif not model.honours(limits.response_format):
            excluded = (
                f"{FORMAT_UNHONOURED} {limits.response_format} "
                f"(registry: {FORMAT_FIELDS[limits.response_format]} is false)"
            )
        elif limits.needs_logprobs and not model.logprobs:
            excluded = NO_LOGPROBS
        elif limits.needs_logit_bias and not model.logit_bias:
            excluded = NO_LOGIT_BIAS
        elif limits.raw_arguments_at and not model.raw_tool_arguments:
            excluded = NO_RAW_ARGUMENTS
        elif limits.temperature is not None and limits.temperature > model.max_temperature:
            capped = f"{TEMPERATURE_CAPPED} {model.max_temperature} (registry: max_temperature)"
            excluded = f"{capped}, not {limits.temperature}"
        elif limits.blank_stop and not model.blank_stop:
            excluded = NO_BLANK_STOP
        quality = predicted_quality(model, scores)
        options.append(Option(model, -1.0 if quality is None else quality, cost, excluded))
    return options


def without_unavailable(options: list[Option], usable: set[str], providers: Mapping[str, ProviderSpec]) -> list[Option]:
    """The options with every model the providers cannot serve here excluded, saying why it can be (`providers`:
    the registry's): they stay in the decision as candidates, and never in a plan."""
    return [
        o
        if o.model.name in usable or o.excluded
        else dataclasses.replace(o, excluded=unavailable_because(providers.get(o.model.provider)))
        for o in options
    ]


def unavailable_because(provider: ProviderSpec | None) -> str:
    """Why a model of `provider` is not served here. Only a provider that needs a key is said to lack it: the
    providers service serves the local model whenever it is built, and a remote one needing no key always."""
    if provider is not None and provider.kind == "local":
        return LOCAL_UNAVAILABLE
    if provider is not None and provider.needs_key:
        return UNAVAILABLE
    return NOT_SERVED


def capped_usd(cap: Decimal) -> str:
    """A caller's cap as the caller gave it: in plain notation, as every amount shown ('0.0000001', never '1E-7'), when
    it is whole pico-dollars; finer, in scientific notation ('1E-30'), which names the caller's own value where the cap
    rounded down to the pico-dollar read '0', and stays short where plain notation of 1e-999999999 would take a
    gigabyte."""
    applied = Decimal(floor_pico(cap)) / PICO
    return format(applied, "f") if applied == cap else format(cap, "E")


# How a request the classifier could not score is routed (ROUTER_CLASSIFIER_FALLBACK): `length`, the tier its
# prompt's length picks (services/router/length_rule.py); `strongest`, the strongest tier; `cheapest`, the cheapest
# model; each within the request's limits.
FallbackRule = Literal["length", "strongest", "cheapest"]


@dataclass(frozen=True)
class Fallback:
    rule: FallbackRule
    tier: str = ""  # length: the tier picked for the prompt
    why: str = ""  # length: how it was picked, for the reason


STRONGEST = Fallback("strongest")


def plan(
    registry: Registry, options: list[Option], limits: Limits, classified: bool, fallback: Fallback = STRONGEST
) -> Plan:
    """The cheapest model predicted to reach `quality_target` of the best candidate's predicted quality. The
    target is relative, so a prompt the classifier reads poorly (every prediction low) still goes to a cheap
    model that is about as good as any, never to the priciest by default. Without the classifier, `fallback`."""
    within = [o for o in options if not o.excluded]
    if not within:
        raise _nothing_fits(options, limits)
    if not classified:
        return _unclassified(registry, options, within, fallback)
    order, best = near_best(within, limits.quality_target)
    first = order[0]
    reason = (
        f"cheapest model predicted within {limits.quality_target:.2f} of the best "
        f"({best.model.name} {best.quality:.2f}): predicted {first.quality:.2f}, est. ${first.cost:f}"
    )
    return Plan(options, order, "cheapest_near_best", reason)


def near_best(within: list[Option], target: float) -> tuple[list[Option], Option]:
    """The options in the order to try at a relative target (the cheapest predicted within it of the best first,
    then the rest, best predicted first), and the best. Also how the reference mix is routed (length_rule.py)."""
    best = max(within, key=lambda o: (o.quality, -o.cost))
    bar = min(target * best.quality, best.quality)  # the best meets it, even unknown (-1)
    meeting = sorted((o for o in within if o.quality >= bar), key=lambda o: (o.cost, -o.quality))
    below = sorted((o for o in within if o.quality < bar), key=lambda o: (-o.quality, o.cost))
    return meeting + below, best


def _unclassified(registry: Registry, options: list[Option], within: list[Option], fallback: Fallback) -> Plan:
    """Every option within limits, in the fallback's order: each stays there for a provider's failure and for
    escalation to a stronger tier."""
    code = "classifier_unavailable"  # whatever the rule: dashboards and alerts count the requests routed without it
    if fallback.rule == "cheapest":
        order = sorted(within, key=lambda o: (o.cost, -registry.tier_rank(o.model)))
        return Plan(options, order, code, "classifier unavailable: cheapest model within limits")
    if fallback.rule == "length":
        # The tier picked first, cheapest first; none of it within limits, the next stronger tier (the prompt needs
        # at least that), then the weaker ones, strongest first.
        picked = registry.tiers.index(fallback.tier)

        def distance(o: Option) -> tuple[int, int, Decimal]:
            rank = registry.tier_rank(o.model)
            return (0, rank, o.cost) if rank >= picked else (1, -rank, o.cost)

        order = sorted(within, key=distance)
        first = order[0].model
        where = "" if first.tier == fallback.tier else f"; none of {fallback.tier} within limits, {first.tier}"
        return Plan(options, order, code, f"classifier unavailable: {fallback.why}{where}")
    order = sorted(within, key=lambda o: (-registry.tier_rank(o.model), o.cost))
    return Plan(options, order, code, "classifier unavailable: strongest tier within limits")


def explicit(options: list[Option], name: str, limits: Limits) -> Plan:
    """A model the caller named is honoured, limits still apply; no fallback to another model."""
    option = next((o for o in options if o.model.name == name), None)
    if option is None:
        raise ServiceError(grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", f"model {name!r} is not available")
    if option.excluded:
        raise _nothing_fits([option], limits)
    return Plan(options, [option], "explicit_model", f"model {name} requested by the caller")


def escalation_target(order: list[Option], current: Option, registry: Registry) -> Option | None:
    """The cheapest option of a stronger tier than the current one, for a weak answer."""
    stronger = [o for o in order if registry.tier_rank(o.model) > registry.tier_rank(current.model)]
    return min(stronger, key=lambda o: o.cost, default=None)


def over_alone(fields_alone: Mapping[str, int], window: int) -> str:
    """The field rendered into the prompt (tools, tool_choice, response_format) that is over `window` by itself
    (Limits.fields_alone): what the caller must shorten; else `messages`, as OpenAI names a prompt too long."""
    return next((name for name, tokens in fields_alone.items() if tokens > window), "messages")


def _nothing_fits(every: list[Option], limits: Limits) -> ServiceError:
    # What the caller can change is about the models available here; the others are listed only when none is.
    options = [o for o in every if o.excluded not in UNAVAILABLE_REASONS] or every
    if all(o.excluded.startswith("prompt of") for o in options):
        window = max((o.model.context_window for o in options), default=None)
        named = "messages" if window is None else over_alone(limits.fields_alone, window)
        why = options[0].excluded if options else "no models"
        if named != "messages":  # what the caller must shorten: the messages could be one word and still not fit
            why = f"{named} alone, rendered into the prompt, is over {window} tokens, the largest window available"
        return ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
            f"the prompt does not fit any available model: {why}",
            {"field": named},  # messages: OpenAI's param for it, the completion's share included
        )
    reasons = "; ".join(f"{o.model.name}: {o.excluded}" for o in options)
    if options and all(o.excluded.startswith(OBJECT_ARGUMENTS_ONLY) for o in options):
        # Said first in the caller's terms: the field it sent, with the models that cannot take it.
        arguments = limits.raw_arguments_at
        names = ", ".join(o.model.name for o in options)
        return ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "NO_ELIGIBLE_MODEL",
            f"{arguments} must be a JSON object for {names}: no model within limits ({reasons})",
            {"field": arguments},
        )
    # When the caller's own cost or latency cap, or the tools, response_format, logprobs, logit_bias, temperature or
    # stop asked, is what rules out every model, name it as the field to change.
    field = None
    if options and all("max_cost_usd" in o.excluded for o in options):
        field = {"field": "max_cost_usd"}
    elif options and all("max_latency_ms" in o.excluded for o in options):
        field = {"field": "max_latency_ms"}
    elif options and all(o.excluded == NO_TOOLS for o in options):
        field = {"field": "tools"}
    elif options and all(o.excluded.startswith(FORMAT_UNHONOURED) for o in options):
        field = {"field": "response_format"}
    elif options and all(o.excluded.startswith(LOGPROBS_UNRETURNED) for o in options):
        field = {"field": "logprobs"}
    elif options and all(o.excluded.startswith(LOGIT_BIAS_UNAPPLIED) for o in options):
        field = {"field": "logit_bias"}
    elif options and all(o.excluded.startswith(TEMPERATURE_CAPPED) for o in options):
        field = {"field": "temperature"}
    elif options and all(o.excluded.startswith(BLANK_STOP_REFUSED) for o in options):
        field = {"field": "stop"}
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, "NO_ELIGIBLE_MODEL", f"no model within limits ({reasons})", field
    )
