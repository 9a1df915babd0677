"""A request's state as it moves through the router: admitted and routed, then served."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from llmrouter.registry import ModelSpec, Registry
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2
from services.router import policy
from services.router.sessions import Session
from services.router.settings import MAX_REQUEST_S
from services.router.store import Account, Hold

Mode = Literal["off", "auto", "strict"]


@dataclass
class Routed:
    """A request admitted and routed, not yet served."""

    request: router_pb2.CompleteRequest
    request_id: str
    account: Account
    limits: policy.Limits
    plan: policy.Plan
    decision: router_pb2.Decision
    max_tokens: dict[str, int]  # per model of the plan: the max_tokens sent, the most it may write and cost
    started: float = field(default_factory=time.perf_counter)
    timeout_s: float = MAX_REQUEST_S  # the most the request may run from `started` (RouterSettings.request_timeout_s)
    hold: Hold | None = None  # what admission holds against the budgets until the charge
    settled: bool = False  # charged (which drops the hold)
    # What failed attempts (fallbacks, escalation) cost: what they consumed, or their worst case if unknown.
    owed: Decimal = Decimal(0)
    # What its settlement charged (capped at the hold), a failure's error says it; None when it met a charge made before
    # (the reconciler's) whose amount this router could not read: the ledger has it.
    charged: Decimal | None = Decimal(0)
    released: bool = False  # its settlement, of 0 with nothing delivered, freed its request id for a retry
    # Its charge under way (Charger.settle), which runs on, shielded, when the call is cancelled: what it charged is
    # known once it ends (Charger.charged).
    charging: asyncio.Future[None] | None = None
    failure: str = "failed"  # the ledger outcome when the request ends without an answer
    note: str = ""  # what its ledger line's reason_detail says after the routing's reason (why it was charged so)
    registry: Registry | None = None  # the snapshot the plan came from, kept for the request's life
    escalation: Mode = "auto"  # when a weak answer is asked again of a stronger tier (escalation.py)
    verifier_threshold: float | None = None  # the request's own P(good) threshold for the verifier's signal
    session: Session | None = None  # the conversation this turn belongs to, as it stood before the turn
    # The caller of a call served to its end whatever it does (unary, a buffered stream) left: the generation under
    # way finishes and is charged, but no new one (an escalation, a fallback) is started for an answer no one reads.
    caller_left: bool = False
    # Serving began: a providers call may have run, of an outcome unknown to a failure the router did not expect.
    providers_asked: bool = False
    # The hold an extend asked for that did not answer (out of reach, cancelled, a bug), or that an admission whose undo
    # was kept nowhere asked for (Admission.admit): the store may hold it all the same, and the reconciler then charges
    # that one.
    unanswered_hold_pico: int = 0
    # Its settlement met a charge made before (the reconciler's): the charge it tells is that one, not its own.
    charged_before: bool = False
    # The models of the plan an attempt of this request failed on: no escalation goes back to one (it failed just now,
    # and an outcome unknown would be owed its worst case again).
    failed_models: set[str] = field(default_factory=set)

    def most_held_pico(self) -> int:
        """The most the store may hold for it, so the most the ledger can charge it."""
        assert self.hold is not None  # only admitted requests hold anything
        return max(self.hold.pico, self.unanswered_hold_pico)

    def time_left(self, context: Any) -> float:
        """What the request may still run: its own time limit, or the caller's deadline when that comes first."""
        left = self.timeout_s - (time.perf_counter() - self.started)
        caller = context.time_remaining()
        return left if caller is None else min(left, caller)


@dataclass
class Served:
    """What the providers delivered for one request, summed over escalation."""

    model: ModelSpec
    content: str = ""
    refusal: str = ""  # the model's refusal (OpenAI's message.refusal), when it declined
    provider: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cost: Decimal = Decimal(0)
    # Of input_tokens, those the providers' prompt caches served (read) and took (written): each at its own price.
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    retries: int = 0
    finish_reason: str = ""
    escalated: bool = False
    escalation_signal: str = ""  # why it was escalated: empty, truncated, refusal, low_confidence, verifier ...
    # Whether the served answer's max_tokens was lowered after admission, below routed.max_tokens, to fit the money
    # left (an escalated answer's room after the weak one was paid): the response cache keeps no answer cut by it.
    room_capped: bool = False
    # Why the answer owes itself to this request's circumstances rather than its prompt ('' when it does not): an
    # escalation its signal called for not made (no time, no room a budget or failed attempts left, the stronger model
    # failed: the request's own max_cost_usd leaving none is no circumstance), or a weaker fallback's answer while the
    # plan's first choice failed; or a weak answer the verifier could not judge before the request's time ran out. The
    # response cache keeps none. (A verifier that cannot say with time to spare is no such circumstance: missing from a
    # classifier without its artefact, it would keep every answer out.)
    circumstance: str = ""
    tool_calls_json: str = ""
    mean_logprob: float | None = None  # of the served answer's tokens, when the provider gave log-probabilities
    logprobs_json: str = ""  # the served answer's, when the caller asked for them
    # Each generation billed, as (model, its usage): the tokens above summed, each at its own model's prices (an
    # escalated answer's weak one is another model's), so the ledger shows what `cost` is made of.
    generations: list[tuple[str, common_pb2.Usage]] = field(default_factory=list)
    # The usage of the generation whose answer is served (None: the only one there is): what the strongest model would
    # have taken to write it, the ledger's baseline. Not every generation's summed: an escalated request asked for its
    # prompt twice, and the strongest model alone would have answered it once.
    answer_usage: common_pb2.Usage | None = None

    def add(self, reply: provider_pb2.GenerateResponse, model: ModelSpec) -> bool:
        """A generation, charged: its answer is the one served unless an answer came before and this one has none
        (an escalated answer with no words, refusal or tool calls), which leaves the weak answer served. Whether
        its answer is served."""
        served = not self.generations or has_answer(reply)
        if served:
            # Whole: the words, who wrote them, why they ended and how sure of them it was are one generation's. One
            # that only calls tools leaves none of the weak one's words beside its calls, nor a refusal.
            self.model, self.provider = model, reply.provider
            self.content, self.refusal, self.tool_calls_json = reply.content, reply.refusal, reply.tool_calls_json
            self.finish_reason = reply.finish_reason
            self.mean_logprob = reply.mean_logprob if reply.HasField("mean_logprob") else None
            self.logprobs_json = reply.logprobs_json
            self.answer_usage = reply.usage
        self.input_tokens += reply.usage.input_tokens
        self.output_tokens += reply.usage.output_tokens
        self.cached_input_tokens += reply.usage.cached_input_tokens
        self.cache_write_input_tokens += reply.usage.cache_write_input_tokens
        self.estimated |= reply.usage.estimated
        # At the prices the request was admitted with (the same formula as the providers', which may by now
        # run a reloaded registry).
        self.cost += model.usage_cost_usd(reply.usage)
        self.generations.append((model.name, reply.usage))
        self.retries += reply.retries
        return served

    @property
    def usage(self) -> common_pb2.Usage:
        """The tokens of every generation, summed."""
        return common_pb2.Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            estimated=self.estimated,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens,
        )


def has_answer(reply: provider_pb2.GenerateResponse) -> bool:
    """Whether a generation answered: words (more than blanks, as escalation.signal reads them), a refusal or tool
    calls."""
    return bool(reply.content.strip() or reply.refusal or reply.tool_calls_json)


def counts_below_nothing(usage: common_pb2.Usage) -> bool:
    """A report with a negative token count, which no upstream bills: its cost is no cost, even when the rest of it
    (output past a negative input) keeps the sum above nothing, a sum that would charge less than what was written."""
    counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens)
    return min(counts) < 0


def generation_entry(model: str, usage: common_pb2.Usage) -> dict[str, Any]:
    """A generation as the ledger records it: its model and tokens, with those of its input the prompt cache served or
    took when there are any (cost = uncached input, cached input, cache writes and output, each at its price)."""
    entry: dict[str, Any] = {"model": model, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cached_input_tokens:
        entry["cached_input_tokens"] = usage.cached_input_tokens
    if usage.cache_write_input_tokens:
        entry["cache_write_input_tokens"] = usage.cache_write_input_tokens
    return entry
