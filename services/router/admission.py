"""Admission: a request's limits, who pays for it, the most each model of its plan may write, and letting it
in (request id, rate limit, a hold of its worst-case cost against the budgets) or refusing it clearly."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
from decimal import Decimal
from typing import Any

import grpc

from llmrouter.auth import current_identity
from llmrouter.errors import ServiceError, invalid
from llmrouter.passthrough import has_blank_stop, prompt_fields, prompt_json
from llmrouter.registry import ModelSpec, RegistrySource
from llmrouter.tokens import count_fields_alone, count_prompt_tokens, fewest_prompt_tokens
from llmrouter.v1 import router_pb2
from llmrouter.validation import (
    AmountError,
    check_call_ids,
    check_message_count,
    check_request_fields,
    parse_amount,
    validate,
)
from services.router import faults, metrics, policy
from services.router.costs import affordable_output, floor_pico, worst_pico
from services.router.end_users import EndUserScope
from services.router.input_bound import bound_input
from services.router.key_tenants import KeyTenants
from services.router.outbox import NotRecorded, Outbox
from services.router.rate_refused import RateRefused
from services.router.routed import Routed
from services.router.settings import RouterSettings
from services.router.store import (
    PICO,
    Account,
    Allowance,
    Hold,
    Prices,
    Store,
    StoreUnavailable,
    Verdict,
    key_id,
    marked_until,
    money_now,
    period_id,
    to_pico,
)
from services.router.store.keys import rate_retry_after_s, rate_window
from services.router.undoing import Undoing, UndoWaiting

log = logging.getLogger("llmrouter.router")

# No request costs anywhere near this; a larger cap is refused rather than converted to pico-dollars, which for a
# number like 1e300000 takes the event loop seconds (and past 1e999987 raises decimal.Overflow).
MAX_COST_USD = Decimal(10) ** 9

# A budget refusal says what the budget has left; the hold is resized to it and tried again. Another request
# may take that room first, so the retries are bounded.
ADMIT_ATTEMPTS = 3
# Caller-chosen names stored with every charge (ledger record, request id keys): a caller decides their size, so
# they are bounded, far above any real id (a batch line's request id is at most 239).
MAX_ID_CHARS = 256
KEY_ID = re.compile(r"[0-9a-f]{16}|anonymous")


def check_id(value: str, name: str) -> None:
    """A caller-chosen name the router keeps or looks up (request id, session id, tenant): at most MAX_ID_CHARS, and
    no NUL, which PostgreSQL's text refuses (the SQL ledger would lose the charge, or fail the lookup)."""
    if len(value) > MAX_ID_CHARS:
        raise invalid(f"{name} must be at most {MAX_ID_CHARS} characters", name)
    if "\x00" in value:
        raise invalid(f"{name} must not contain a NUL character", name)


def account_for(request: router_pb2.CompleteRequest) -> Account:
    """Who pays for a request: the one place the paying tenant and key are derived. The tenant and key named
    in the request when the caller may act for tenants (the edge, which authenticated the end user);
    otherwise the authenticated caller itself, whatever the request says."""
    caller = current_identity()
    if caller.may_act_for_tenants:
        if request.api_key and request.api_key_id:  # two keys named: paying with either could be the wrong one
            raise invalid("api_key_id is instead of api_key: name one key", "api_key_id")
        if request.api_key_id:
            if not KEY_ID.fullmatch(request.api_key_id):
                raise invalid("api_key_id must be 16 hex digits or 'anonymous'", "api_key_id")
            return Account(request.tenant or "default", request.api_key_id)
        return Account(request.tenant or "default", key_id(request.api_key))
    return Account(caller.tenant or caller.name, f"caller:{caller.name}")


def output_caps(plan: policy.Plan, limits: policy.Limits, decision: router_pb2.Decision) -> dict[str, int]:
    """Per model of the plan, the most it may write: the caller's max_tokens, the model's output limit, the
    room left in its context window (after the prompt's estimate), and what max_cost_usd can pay for (after
    the most input the model can be billed). The decision says when the last lowered the chosen model's
    max_tokens."""
    caps = {}
    for option in plan.order:
        model = option.model
        cap = unpriced_cap(model, limits)
        if limits.max_cost_usd is not None:
            affordable = affordable_output(model, limits.billed_input(model), floor_pico(limits.max_cost_usd))
            if affordable < cap and option is plan.order[0]:
                _say_capped(decision, plan, affordable, "max_cost_usd")
            cap = min(cap, affordable)
        caps[model.name] = cap
    return caps


def unpriced_cap(model: ModelSpec, limits: policy.Limits) -> int:
    """The most `model` may write on this request before money has its say: the caller's max_tokens, the model's output
    limit and the room left in its context window."""
    cap = min(model.max_output_tokens, model.context_window - limits.input_tokens)
    return cap if limits.max_output_tokens is None else min(cap, limits.max_output_tokens)


class Admission:
    def __init__(self, settings: RouterSettings, registry: RegistrySource, store: Store, outbox: Outbox) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.undoing = Undoing(store, outbox)
        self.key_tenants = KeyTenants(store, self.undoing)
        self.end_users = EndUserScope(settings.end_user_hash_secret)
        self.rate_refused = RateRefused()
        # The tenant label of the router's tenant-labelled metrics (its refusals here, routing's routed requests): one
        # for all, so a tenant has the same label (its name or 'other') in each.
        self.tenant_labels = metrics.BoundedLabels(settings.metrics_tenants)
        self.allowance = Allowance(
            settings.budget_period,
            settings.rate_limit_rpm,
            # Limits round down, as caps do: a budget is never exceeded, not even by a fraction of a pico-dollar.
            None if settings.tenant_budget_usd is None else floor_pico(settings.tenant_budget_usd),
            None if settings.key_budget_usd is None else floor_pico(settings.key_budget_usd),
            settings.rate_limit_tpm,
        )

    @property
    def max_context(self) -> int:
        """A prompt over every context window (of the registry in force) is refused; counting it further is
        wasted work."""
        return max(m.context_window for m in self.registry.current.models)

    async def limits(self, request: router_pb2.CompleteRequest) -> policy.Limits:
        """The request, validated, as the limits routing must respect."""
        for name in ("request_id", "session_id", "tenant"):  # each is kept with the charge, in the money store
            check_id(getattr(request, name), name)
        check_message_count(request.messages)
        if fewest_prompt_tokens(len(request.messages)) > self.max_context:  # known without reading them
            raise self._over_every_window()
        valid = validate(request)
        check_call_ids(valid.tool_calls)
        check_request_fields(valid.passthrough)
        aims = [name for name in ("quality_target", "strong_share", "quality_kept") if request.HasField(name)]
        for name in aims:
            if not 0 <= getattr(request, name) <= 1:
                raise invalid(f"{name} must be within [0, 1]", name)
        if len(aims) > 1:
            both = " and ".join(aims)
            raise invalid(f"set one of quality_target, strong_share and quality_kept, not {both}", aims[-1])
        if request.HasField("max_latency_ms") and request.max_latency_ms <= 0:
            raise invalid("max_latency_ms must be positive", "max_latency_ms")
        max_cost = _max_cost(request.max_cost_usd)
        tools = bool(valid.passthrough.get("tools"))
        response_format = _response_format(valid.passthrough)
        # Counted as the providers bill it: with the passthrough fields rendered into the prompt alone (PROMPT_FIELDS).
        billed_json = prompt_json(valid.passthrough)
        billed = dataclasses.replace(valid, passthrough=prompt_fields(valid.passthrough))
        input_tokens = await count_prompt_tokens(request.messages, billed_json, tools, self.max_context)
        if input_tokens > self.max_context:  # refused before anything else sees it (the classifier above all)
            counted = await count_fields_alone(billed.passthrough, tools, self.max_context)
            raise self._over_every_window(policy.over_alone(counted, self.max_context))
        bound = await bound_input(
            self.registry.current, request.messages, billed_json, billed, tools, input_tokens, self.max_context
        )
        settings = self.settings
        return policy.Limits(
            quality_target=(
                request.quality_target if request.HasField("quality_target") else settings.default_quality_target
            ),
            input_tokens=input_tokens,
            max_output_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            expected_output_tokens=settings.expected_output_tokens,
            input_bound=bound,
            max_cost_usd=max_cost,
            max_latency_ms=request.max_latency_ms if request.HasField("max_latency_ms") else None,
            needs_tools=tools,
            response_format=response_format,
            needs_logprobs=_logprobs_asked(valid.passthrough),
            needs_logit_bias=_logit_bias_asked(valid.passthrough, request.model),
            raw_arguments_at=valid.raw_arguments_at,
            temperature=request.temperature if request.HasField("temperature") else None,
            blank_stop=has_blank_stop(valid.passthrough),
            min_output_tokens=settings.min_output_tokens,
            prompt_fields=billed.passthrough,
        )

    def _over_every_window(self, field: str = "messages") -> ServiceError:
        """The refusal of a prompt over every context window, naming `field`: `messages` (OpenAI's param for it), or a
        field rendered into the prompt that is over it alone (policy.over_alone)."""
        what = "the prompt" if field == "messages" else f"{field} alone, rendered into the prompt,"
        return invalid(
            f"{what} is over {self.max_context} tokens, the largest context window of any model",
            field,
            "CONTEXT_LENGTH_EXCEEDED",
        )

    async def admit(self, routed: Routed, until: float = 0.0) -> None:
        """Claim the request id, count it against the rate limit and hold its worst-case cost (the costliest
        model of its plan writing all it may) against the budgets. When a budget cannot hold that, max_tokens
        is lowered to what it can pay for; refused when it cannot pay for even a short answer. Counted once, admitted
        or refused for a budget (it was routed all the same: a caller whose budget is spent is bounded by its requests
        per minute too), however many admissions it takes (its count id), in the minute its first admission ran in,
        whichever its last runs in. `until`: a
        deferred request's hold lasts until then (Hold.until). The model it is admitted for (its plan's first; a
        deferred request's only one) is recorded beside its pending charge (Pending.model), and a deferred request's
        prices too (Pending.prices): its collect, a day later perhaps, charges at them, and no output past the
        max_tokens it was sent with (Hold.max_tokens, in its pending charge)."""
        # The budget period its limits are checked against, fixed here, once; its charge lands in the one it settles in
        # (store/model.py, landing_period), no earlier than this.
        period = period_id(self.settings.budget_period)
        # So is its rate window: an admission resized into the next minute was counted in this one, and is not again.
        counted_at = money_now()
        count_id = secrets.token_hex(8)  # names the request in the rate counter: counted once, whatever is resent
        for _ in range(ADMIT_ATTEMPTS):
            model = routed.plan.order[0].model  # a session's may be set aside by a refusal (_fit)
            nonce = secrets.token_hex(8)  # names this admission: its undo touches no other of the request id
            # Its charges marked as long as the store keeps its id used: a charge that finds nothing of it is late past
            # that, by the store's clock, whatever the clock or request id TTL of the router charging it.
            marked = marked_until(self.store.request_id_ttl_s, until, money_now())
            hold = Hold(routed.request_id, _worst_case(routed), period, self.settings.router_name, nonce, until, marked)
            if until:  # the max_tokens it is sent with: its collect charges no output past it
                hold = dataclasses.replace(hold, max_tokens=routed.max_tokens[model.name])
            prices = _prices(model) if until else None
            try:
                verdict = await self._hold(routed.account, hold, model.name, prices, count_id, counted_at)
            except (faults.HoldLeft, NotRecorded):
                routed.unanswered_hold_pico = hold.pico  # its undo kept nowhere: the store may hold it all the same
                raise
            if not verdict.refused:
                routed.hold = hold
                return
            if verdict.refused in ("rate", "tokens"):
                self.rate_refused.add(routed.account, rate_window(counted_at), verdict.refused)
            if verdict.refused not in ("tenant", "key"):
                raise self._refusal(verdict, routed.account, hold)
            self._fit(routed, verdict)
        raise self._budget_spent(routed, verdict.refused)

    async def count(self, account: Account) -> None:
        """Count a request that is routed but never admitted (a Decide) against the rate limit, in the counter
        admission counts in, so a caller's Decides and served requests share its requests per minute. Refused as an
        admission over either limit (requests or tokens per minute) is (RATE_LIMITED), and before it is routed: free,
        Decides sent without end would keep the shared classifier busy past the other tenants' classifier timeout.
        Nothing is held or charged.
        Closed while the store is out of reach, as admission is (STORE_UNAVAILABLE). Counted once, however often a
        Redis Cluster client resends it after a lost reply (its count id)."""
        if not (self.allowance.per_minute or self.allowance.tokens_per_minute):
            return
        window = rate_window(money_now())  # the store counts it in this one or a later one (rate_refused.py)
        count_id = secrets.token_hex(8)

        async def count_under(moves: str) -> str:
            if not self.undoing.may_send():
                raise StoreUnavailable()
            refused = await self.store.count_request(account, self.allowance, count_id, moves)
            self.undoing.answered()
            return refused

        refused = await self.key_tenants.under_binding(account, count_under, lambda refused: refused)
        if refused:
            self.rate_refused.add(account, window, refused)
            raise self._rate_limited(refused)

    def refuse_if_rate_limited(self, account: Account) -> None:
        """Before a request is routed: RATE_LIMITED when the store refused one of the account's requests as rate limited
        in the current window (rate_refused.py), so the classifier scores nothing for it."""
        limit = self.rate_refused.limit_reached(account)
        if limit:
            raise self._rate_limited(limit)

    async def _hold(
        self, account: Account, hold: Hold, model: str, prices: Prices | None, count_id: str, counted_at: float
    ) -> Verdict:
        """The store's admission, under the binding of the account's key (key_tenants.py: refused there when a key
        move took the key from its tenant). One that is not known to have been refused, and is not served, is undone:
        the caller left meanwhile (the script may run after its reply is abandoned), or its reply was lost (a timeout,
        a dropped connection) after the script may have run. Undone before the refusal is answered, so a retry of
        the request id is admitted."""

        async def admit_under(moves: str) -> Verdict:
            return await self._hold_under(account, hold, model, prices, count_id, counted_at, moves)

        return await self.key_tenants.under_binding(account, admit_under, lambda verdict: verdict.refused)

    async def _hold_under(
        self,
        account: Account,
        hold: Hold,
        model: str,
        prices: Prices | None,
        count_id: str,
        counted_at: float,
        moves: str,
    ) -> Verdict:
        if not self.undoing.may_send():
            raise StoreUnavailable()  # out of reach a moment ago: the request is refused without a lost reply to undo
        admitting = asyncio.ensure_future(
            self.store.admit(account, self.allowance, hold, model, prices, count_id, counted_at, moves)
        )
        try:
            verdict = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            self.undoing.undo_if_held(admitting, account, hold)
            raise
        except StoreUnavailable as failure:
            try:
                await self.undoing.undo(account, hold, failure)
            except ServiceError:
                raise  # kept by neither the store nor the outbox (NotRecorded): told so
            except Exception as undo_bug:  # else read as a bug in the admission itself, undone: told charged nothing
                raise faults.HoldLeft(hold.request_id) from undo_bug
            raise
        except ServiceError:
            raise
        except Exception:
            # A bug once the store may have run it (reading its reply, say): undone as one whose reply was lost, by its
            # nonce. Settled by a charge of 0 instead, one the store had refused as a duplicate wrote a ledger line and
            # a charged marker beside the request that uses the id, and one it had held was left to the reconciler.
            try:
                await self.undoing.withdraw(account, hold)
            except StoreUnavailable:
                raise  # the store out of reach: its own error, told as before
            except Exception as undo_bug:  # a bug undoing it too: the hold may stay, for the reconciler to charge
                raise faults.HoldLeft(hold.request_id) from undo_bug
            raise
        self.undoing.answered()
        return verdict

    async def withdraw(self, routed: Routed) -> None:
        """Undo the admission of a request that will not be served after all: as if it had never been admitted."""
        assert routed.hold is not None  # only admitted requests are withdrawn
        await self.undoing.withdraw(routed.account, routed.hold)
        routed.settled = True

    async def close(self) -> None:
        """Let undos still running finish: a stopping router leaves none half-done."""
        await self.undoing.close()

    async def cover(self, routed: Routed, next_pico: int, spent: Decimal = Decimal(0)) -> bool:
        """Before another generation for the same request (a fallback after a failed attempt, an escalation after an
        answer that cost `spent`): grow the hold, when needed, to what is owed plus that generation's worst case.
        False when that would pass the caller's max_cost_usd or the budgets cannot cover it, and when what is owed is
        past the hold already: no upstream could bill that (a buggy or hostile report, charged the hold: charging.py),
        and a hold grown on top of it would have the report charged whole."""
        assert routed.hold is not None  # only admitted requests are served
        owed = to_pico(routed.owed + spent)
        if owed > routed.hold.pico:
            log.warning("owed past the hold: no other attempt", extra={"request_id": routed.request_id})
            return False
        needed = owed + next_pico
        max_cost = routed.limits.max_cost_usd
        if max_cost is not None and needed > floor_pico(max_cost):
            log.warning("max_cost_usd cannot cover another attempt", extra={"request_id": routed.request_id})
            return False
        if needed <= routed.hold.pico:
            return True
        # Its reply may be lost (the connection drops, the caller leaves) after the store grew the hold: the
        # request then settles the hold the store holds, not routed.hold (store/model.py), so none lingers, and is
        # told at most that one (Routed.most_held_pico) until the store answers.
        unanswered = routed.unanswered_hold_pico
        routed.unanswered_hold_pico = max(unanswered, needed)
        hold = routed.hold

        async def extend_under(moves: str) -> str:
            return await self.store.extend(routed.account, self.allowance, hold, needed, moves)

        try:
            # Under the key's binding, as its admission: a key moved to another tenant since grows no hold here.
            refused = await self.key_tenants.under_binding(routed.account, extend_under, lambda refused: refused)
            routed.unanswered_hold_pico = unanswered
        except StoreUnavailable:
            # Admitted already, so never answered STORE_UNAVAILABLE (which says: not admitted, send the same request
            # id again, and that retry would be refused as a duplicate). No fallback: the request ends with its
            # attempt's error, and what it owes is charged through the outbox.
            refused = "store_unavailable"
        except ServiceError as moved:  # the key moved to another tenant, or keeps moving: no fallback, as above
            routed.unanswered_hold_pico = unanswered
            refused = moved.reason
        if refused:
            log.warning("no hold for another attempt", extra={"request_id": routed.request_id, "refused": refused})
            return False
        routed.hold = dataclasses.replace(routed.hold, pico=needed)
        return True

    def _fit(self, routed: Routed, verdict: Verdict) -> None:
        """Lower every model's max_tokens to what the budget's remainder pays for; a fallback that cannot
        afford a short answer is dropped, and the request is refused when the chosen model cannot. A session's model
        it cannot pay for is set aside, as one unavailable is (sessions.stick): the turn goes where it alone would."""
        if routed.plan.own is not None and self._affordable(routed, routed.plan.order[0], verdict.remaining) is None:
            _set_affinity_aside(routed, verdict.refused)
        plan = routed.plan
        kept = []
        for option in plan.order:
            name = option.model.name
            affordable = self._affordable(routed, option, verdict.remaining)
            if affordable is not None:
                kept.append(option)
                if affordable < routed.max_tokens[name]:
                    routed.max_tokens[name] = affordable
                    if option is plan.order[0]:
                        _say_capped(routed.decision, plan, affordable, f"the remaining {verdict.refused} budget")
        if not kept or kept[0] is not plan.order[0]:
            # Refused for good when spend alone leaves too little: holds come and go, spend stays for the period.
            # Named then after the budget that is spent (whose limit is the one to raise), not the one the holds of
            # requests in flight leave least room in.
            for_good = self._affordable(routed, plan.order[0], verdict.spend_left) is None
            raise self._budget_spent(routed, verdict.spend_budget if for_good else verdict.refused, for_good)
        routed.plan = dataclasses.replace(plan, order=kept)

    def _affordable(self, routed: Routed, option: policy.Option, pico: int) -> int | None:
        """The most tokens `pico` pays for the option's model to write on this request; None when that is not even
        a short answer (ROUTER_MIN_OUTPUT_TOKENS, or max_tokens when lower)."""
        model = option.model
        affordable = affordable_output(model, routed.limits.billed_input(model), pico)
        return affordable if affordable >= self._short_answer(routed, model.name) else None

    def _short_answer(self, routed: Routed, model: str) -> int:
        """The fewest tokens of an answer a budget must pay for: ROUTER_MIN_OUTPUT_TOKENS, or max_tokens when lower."""
        return min(self.settings.min_output_tokens, routed.max_tokens[model])

    def _budget_spent(self, routed: Routed, budget: str, for_good: bool = False) -> ServiceError:
        """A budget refusal, naming the short answer the request's first model could not be paid for (its max_tokens
        when below ROUTER_MIN_OUTPUT_TOKENS). `for_good`: the budget's settled spend alone leaves too little, so the
        same request can never be admitted this period (ErrorInfo `retryable: false`; the edge tells OpenAI's SDKs not
        to retry); otherwise the holds of requests in flight take part, and a retry once they settle may be admitted."""
        metrics.BUDGET_REJECTIONS.labels(self.tenant_labels.label(routed.account.tenant), budget).inc()
        period = self.settings.budget_period
        short = self._short_answer(routed, routed.plan.order[0].model.name)
        if for_good:
            why = f"is spent: what remains cannot pay for a {short}-token answer"
        else:
            why = (
                f"cannot pay for a {short}-token answer on top of its spend and the holds of requests in flight: "
                "it may once they settle"
            )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
            f"the {budget} budget for this {period} {why}",
            {"budget": budget, **({"retryable": "false"} if for_good else {})},
        )

    def _refusal(self, verdict: Verdict, account: Account, hold: Hold) -> ServiceError:
        if verdict.refused == "duplicate":
            if self.undoing.undo_waiting(account, hold.request_id):
                return UndoWaiting(hold.request_id)
            return _duplicate(verdict, hold.request_id)
        if verdict.refused in ("rate", "tokens"):
            return self._rate_limited(verdict.refused)
        return StoreUnavailable()  # 'undone': a resent copy of an admission this router undid and gave up on

    def _rate_limited(self, limit: str) -> ServiceError:
        """The refusal of a request over its requests per minute (`limit` 'rate') or its tokens per minute ('tokens'):
        the same status and details, the limit named."""
        metrics.RATE_LIMITED.inc()
        per_minute = (
            f"{self.settings.rate_limit_tpm} tokens"
            if limit == "tokens"
            else f"{self.settings.rate_limit_rpm} requests"
        )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            f"rate limit of {per_minute} per minute reached",
            {"retry_after_s": str(rate_retry_after_s(money_now()))},
        )


def _duplicate(verdict: Verdict, request_id: str) -> ServiceError:
    """A request id used before (by this tenant: the store keeps ids per tenant), with what that request was charged
    (`charged_usd`, as a failure's charge is told) or the hold of its charge still open (`held_usd`): a caller that
    lost its answer (a batch line whose edge died) is told what the ledger charges it, not nothing. The store tells
    them to the key that used the id alone: the same words to any other key, whatever became of that request."""
    metadata = {"field": "request_id"}
    told = []
    if verdict.charged is not None:
        metadata["charged_usd"] = _usd(verdict.charged)
        told.append(f"it was charged {metadata['charged_usd']} USD")
    if verdict.held is not None:
        metadata["held_usd"] = _usd(verdict.held)
        told.append(
            f"its charge is pending, holding {metadata['held_usd']} USD: it is charged its cost when served, or "
            "that hold if its router died"
        )
    if not told:
        told.append("its charge, if any, is in the ledger under its id")
    return ServiceError(
        grpc.StatusCode.ALREADY_EXISTS,
        "DUPLICATE_REQUEST",
        f"request id {request_id!r} was used before: each request needs its own ({'; '.join(told)})",
        metadata,
    )


def _usd(pico: int) -> str:
    return format(Decimal(pico) / PICO, "f")  # plain notation, as every charge


def _worst_case(routed: Routed) -> int:
    """The most the request can cost: its costliest model, billed the most input it can be, writing all it may."""
    limits = routed.limits
    return max(
        worst_pico(o.model, limits.billed_input(o.model), routed.max_tokens[o.model.name]) for o in routed.plan.order
    )


def _set_affinity_aside(routed: Routed, budget: str) -> None:
    """The turn's own plan and decision, for a session whose model the budget's remainder cannot pay for: refused for
    it, the turn would be told the budget is spent while it can pay for the model the turn alone would take. The
    session stays on its model (sessions.next_model): a later turn the budget pays for goes back to it."""
    own = routed.plan.own
    assert own is not None  # a session's plan
    why = f"session affinity set aside: the remaining {budget} budget cannot pay for {routed.plan.order[0].model.name}"
    routed.plan = dataclasses.replace(own, reason=f"{own.reason}; {why}")
    decision = routed.decision
    decision.ClearField("max_tokens_capped")  # said of the session's model
    decision.model, decision.reason, decision.session_affinity = own.order[0].model.name, routed.plan.reason, False
    routed.max_tokens = output_caps(routed.plan, routed.limits, decision)


def _say_capped(decision: router_pb2.Decision, plan: policy.Plan, max_tokens: int, because: str) -> None:
    decision.max_tokens_capped = max_tokens
    decision.reason = f"{plan.reason}; max_tokens capped to {max_tokens} to fit {because}"


def _response_format(passthrough: dict[str, Any]) -> str:
    """The response_format type the answer must have ('' for text, or none asked; validated: one of OpenAI's)."""
    value = passthrough.get("response_format")
    kind = value.get("type") if isinstance(value, dict) else "text"
    return "" if kind == "text" else str(kind)


def _logprobs_asked(passthrough: dict[str, Any]) -> bool:
    """Whether the caller asked for the answer's token log-probabilities (logprobs true; validated: top_logprobs is
    never without it)."""
    return bool(passthrough.get("logprobs"))


def _logit_bias_asked(passthrough: dict[str, Any], model: str) -> bool:
    """Whether the caller sent a logit_bias (an empty one biases nothing, and is not sent on). Its keys are token ids
    of one tokenizer (gpt-4o's o200k ids are other tokens to cl100k, Llama or Mixtral), so it is refused on a routed
    request: the model it was written for must be named."""
    if not passthrough.get("logit_bias"):
        return False
    if model in ("", "auto"):
        raise invalid(
            "logit_bias needs a named model: its keys are token ids of one model's tokenizer, which are other tokens "
            "to another model's; name the model they were written for",
            "logit_bias",
        )
    return True


def _max_cost(raw: str) -> Decimal | None:
    if not raw:
        return None
    try:
        max_cost = parse_amount(raw)
    except AmountError as exc:
        raise invalid(f"max_cost_usd {exc}", "max_cost_usd") from None
    if max_cost < 0:
        raise invalid("max_cost_usd must be a non-negative number", "max_cost_usd")
    if max_cost > MAX_COST_USD:
        raise invalid(f"max_cost_usd must be at most {MAX_COST_USD:f}", "max_cost_usd")
    return max_cost


def _prices(model: ModelSpec) -> Prices:
    """A model's per-token prices, as the store records them."""
    return Prices(
        model.input_usd_per_mtok, model.output_usd_per_mtok, model.cached_input_price, model.cache_write_price
    )
