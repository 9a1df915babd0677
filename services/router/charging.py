"""Charging: the response and its charge record, and the one path by which a request's cost reaches the
budgets and the ledger (settle; at nothing, on record, for a request that generated nothing). When the money store
cannot be reached, or refuses the charge (a key of another type, a spend counter it would overflow), the charge goes to
the local outbox before the answer is released."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any, TypeVar

from llmrouter.registry import ModelSpec
from llmrouter.v1 import router_pb2
from services.router import metrics
from services.router.capped_charges import count_capped
from services.router.models import AvailableModels
from services.router.outbox import Outbox, OutboxCharge
from services.router.routed import Routed, Served, counts_below_nothing, generation_entry
from services.router.store import PICO, Store, StoreUnavailable, to_pico

log = logging.getLogger("llmrouter.router")
T = TypeVar("T")
PAST = "past the hold"  # why a charge was capped at its hold, as its ledger record's reason_detail says (_cap_at_hold)


def response(routed: Routed, served: Served) -> router_pb2.CompleteResponse:
    """The answer, costing what it generated plus what failed attempts for it cost."""
    return router_pb2.CompleteResponse(
        id=routed.request_id,
        content=served.content,
        refusal=served.refusal,
        model=served.model.name,
        provider=served.provider,
        usage=served.usage,
        cost_usd=format(served.cost + routed.owed, "f"),  # plain notation, never 7E-9
        latency_ms=int((time.perf_counter() - routed.started) * 1000),
        decision=routed.decision,
        cache_hit=False,
        escalated=served.escalated,
        escalation_signal=served.escalation_signal,
        retries=served.retries,
        finish_reason=served.finish_reason,
        tool_calls_json=served.tool_calls_json,
        logprobs_json=served.logprobs_json,
    )


def landed(routed: Routed) -> Decimal | None:
    """What the request was charged once its charge has landed (kept by the store or the outbox); None before, when it
    failed to be kept, or when it landed on a charge made before that this router could not read (the ledger says)."""
    charging = routed.charging
    if charging is None or not charging.done() or charging.exception() is not None:
        return None
    return routed.charged


class Charger:
    def __init__(self, store: Store, outbox: Outbox, available: AvailableModels) -> None:
        self.store = store
        self.outbox = outbox
        self.available = available
        self._settling: set[asyncio.Task[Any]] = set()

    def run_to_end(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run work that money depends on to its end, whatever happens to the call: close() waits for it."""
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        task.add_done_callback(_consume_error)  # its caller may be gone: the interceptor logged the error
        return task

    async def settle(
        self,
        routed: Routed,
        response: router_pb2.CompleteResponse,
        outcome: str = "ok",
        served: Served | None = None,
        release: bool = False,
    ) -> None:
        """Charge once, whatever happens to the caller meanwhile: the charge runs shielded to its end. `served`: what
        the response was made of (its generations are on record); None for a cache hit, which generated nothing.
        `release`: nothing reached the caller, so a charge of exactly 0 frees the request id for a retry (Store.charge;
        one kept in the outbox frees it as it lands from there)."""
        capped = _cap_at_hold(routed, response, served)
        # Settled from here as far as the request goes: a caller that leaves while the charge is on its way must not
        # have its clean-up release the hold beside it (replayed first from the outbox, a release would settle the
        # request at nothing), nor may a charge kept neither by the store nor the outbox (its pending charge left to
        # the reconciler, at its hold) be released afterwards.
        routed.settled = True
        charging = self.run_to_end(self._charge(routed, response, outcome, served, capped, release))
        routed.charging = routed.charging or charging  # a partial charge's counting, when that came first
        await asyncio.shield(charging)

    async def settle_unsettled(self, routed: Routed, model: ModelSpec) -> None:
        """A request that ends without an answer (refused upstream, failed, cancelled) is charged what its
        failed attempts cost, nothing when they cost nothing: either way on record in the ledger, as the outbox
        would have it had the store been out of reach. Runs shielded to its end, the outbox write included: a
        caller that leaves meanwhile cannot leave the hold or the record half-done. Nothing of it reached the caller
        (a request that delivered any part is settled at that before): charged nothing, its id is released for a
        retry (an Idempotency-Key's)."""
        if routed.hold is None or routed.settled:
            return
        failed = Served(model, finish_reason="error", estimated=True)
        await self.settle(routed, response(routed, failed), routed.failure, failed, release=True)

    async def settle_unknown(self, routed: Routed, model: ModelSpec) -> None:
        """A request a failure the router did not expect ended (faults.py). Once a providers call may have run, its
        outcome is unknown: charged its hold, the most it may have cost, as the reconciler charges one whose router
        died (owed whole, no tokens on record). Before, it generated nothing: settled as any request that failed."""
        if routed.hold is None or routed.settled:
            return
        if routed.providers_asked:
            routed.owed = Decimal(routed.hold.pico) / PICO
        await self.settle_unsettled(routed, model)

    async def charged(self, routed: Routed, model: ModelSpec) -> Decimal | None:
        """What the request was charged, settled first if it was not: a charge already on its way (its call cancelled
        while it ran on, shielded) waited for, not taken for nothing. A charge that failed raises its error
        (MONEY_NOT_RECORDED: kept nowhere, left to the reconciler), as it did to the call it was made for. None: it
        met a charge made before, which this router could not read (_as_charged)."""
        await self.settle_unsettled(routed, model)
        if routed.charging is not None:
            await asyncio.wait({routed.charging})  # waited for, not cancelled with its waiter
            routed.charging.result()
        return routed.charged

    async def close(self) -> None:
        """Let charges still running finish: a stopping router loses none."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _charge(
        self,
        routed: Routed,
        response: router_pb2.CompleteResponse,
        outcome: str,
        served: Served | None,
        capped: str,
        release: bool,
    ) -> None:
        cost = Decimal(response.cost_usd or "0")
        baseline_model = self.available.baseline()
        # The strongest model writing the answer served, once (an escalated request's weak generation is no part of it).
        answered = served.answer_usage if served is not None and served.answer_usage is not None else response.usage
        baseline = (
            # Its prompt read from (or written to) the cache as this one's was: savings are the routing's alone.
            baseline_model.usage_cost_usd(answered)
            if baseline_model and not response.cache_hit and not capped  # a capped report's tokens claim no savings
            else cost
        )
        # A cache hit repeats an answer's flags (what the caller is shown); this request made no attempt of its own.
        assert routed.hold is not None  # only admitted requests are settled
        generated = not response.cache_hit
        # What an auditor checks cost_usd against: the tokens of each generation billed, at its model's prices, plus
        # what failed attempts owed (measured, or their worst case: no tokens on record for them). A cache hit
        # generated nothing: no tokens on record (its caller is shown the cached answer's usage).
        # A cost capped at the hold is owed whole, as the reconciler's is: the usage reported is past anything the
        # upstream could bill, so no tokens of it are on record (the log and reason_detail say what was reported).
        generations = served.generations if served is not None and generated and not capped else []
        input_tokens, output_tokens = (
            (response.usage.input_tokens, response.usage.output_tokens) if generated and not capped else (0, 0)
        )
        owed = cost if capped else routed.owed
        detail = routed.decision.reason + (f"; {routed.note}" if routed.note else "")
        if capped:
            reported = f"{response.usage.input_tokens} in, {response.usage.output_tokens} out"
            detail += f"; usage reported {capped} ({reported}): charged the hold"
        escalated = generated and response.escalated
        # First answered by another model than the one chosen: a fallback after a failure, escalated or not (an
        # escalated answer's model is the stronger one, never the one chosen: its weak answer's says if one fell back).
        first = served.generations[0][0] if served is not None and served.generations else response.model
        fallback = generated and bool(first) and first != routed.decision.model
        record = {
            "request_id": routed.request_id,
            "ts": time.time(),
            "tenant": routed.account.tenant,
            "key": routed.account.key,
            "period": routed.hold.period,  # the admission's: the store writes the one the charge lands in
            "model": response.model,
            "provider": response.provider,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "tokens_estimated": generated and not capped and response.usage.estimated,
            "cost_usd": format(cost, "f"),
            "generations": [generation_entry(name, usage) for name, usage in generations],
            "owed_usd": format(owed, "f"),  # nothing on a cache hit: it made no attempt
            "baseline_cost_usd": format(baseline, "f"),
            "latency_ms": response.latency_ms,
            "session_id": routed.request.session_id,
            "reason": routed.plan.code,
            "reason_detail": detail,
            "candidates": [
                {
                    "model": c.model,
                    "predicted_quality": round(c.predicted_quality, 4),
                    "estimated_cost_usd": c.estimated_cost_usd,
                    "eligible": c.eligible,
                    "excluded_because": c.excluded_because,
                }
                for c in routed.decision.candidates
            ],
            "fallback": fallback,
            "error": "" if outcome in ("ok", "cache_hit") else outcome,
            "cache_hit": response.cache_hit,
            "escalated": escalated,
            "escalation_signal": response.escalation_signal if escalated else "",
            "retries": response.retries if generated else 0,
            "outcome": outcome,
        }
        charge_id = secrets.token_hex(8)  # this charge, should its reply be lost and the outbox replay it
        freed = release and cost == 0 and not capped
        try:
            # Not only while its pending charge is open: a store that lost the admission (a crash within its fsync
            # interval, a failover to a replica behind) is still charged what was served. The charged marker keeps
            # it once, a reconciler's charge of a router it took for dead included, until the admission's
            # marked_until at least. Past that (its router frozen so long) the store takes it for late, by its own
            # clock: this router's may not have moved while it was frozen (a suspended host, a paused VM).
            charged = await self.store.charge(
                routed.account, routed.hold, to_pico(cost), record, charge_id=charge_id, release=freed
            )
            counted = charged
        except Exception as exc:
            # Kept on local disk before the answer is released: charged once the store is back (out of reach), or,
            # refused for its own keys' sake (one of another type, a spend it would take past SPEND_MAX_PICO; nothing
            # of it written, lua.py, CHARGE), dead-lettered by the outbox's replays while it keeps failing (alert
            # LLMRouterOutboxDeadLetters). Counted in the metrics when it lands (Outbox.replay), not now: the
            # reconciler may settle the request at its hold first, and that charge, the one the ledger holds, is
            # counted by the router that makes it.
            if not isinstance(exc, StoreUnavailable):
                log.error("charge refused by the money store", extra={**record, "error": repr(exc)[:300]})
            kept = OutboxCharge.kept(
                routed.account, routed.hold, to_pico(cost), record, charge_id, self.outbox.marked_s, freed
            )
            await self.outbox.add(kept)
            charged, counted = True, False
        routed.settled = True
        if not charged:
            log.warning("request id charged before; not charged again", extra={"request_id": routed.request_id})
            await self._as_charged(routed, response)
            return
        routed.charged, routed.released = cost, freed
        log.info("request served", extra=record)
        if counted:
            metrics.count_charge(record)

    async def _as_charged(self, routed: Routed, response: router_pb2.CompleteResponse) -> None:
        """A request charged before (the reconciler settled it at its hold while it ran, its router taken for dead)
        is told at what the ledger charged it, which its charged marker says. When the marker does not say (a router of
        the version before charged it) or cannot be read, the caller is answered all the same, its charge unknown
        (None): the answer says it pending (cost_pending: what it computed is not what the ledger holds), and so does a
        status telling it, not 0. Its cost_usd is then the most the store may hold for it (the grown hold of an extend
        whose reply was lost too), the most the ledger can have charged (what the reconciler charges): a caller of the
        version before reads cost_usd alone, and its batch code failed on an empty one, its batch's run with it."""
        routed.charged, routed.charged_before = None, True
        try:
            pico = await self.store.charged_pico(routed.account, routed.request_id)
        except Exception:
            log.exception("charged before: its charge not read", extra={"request_id": routed.request_id})
            pico = None
        if pico is None:
            most = routed.most_held_pico()
            response.cost_usd, response.cost_pending = format(Decimal(most) / PICO, "f"), True
            return
        routed.charged = Decimal(pico) / PICO
        response.cost_usd = format(routed.charged, "f")


def _cap_at_hold(routed: Routed, response: router_pb2.CompleteResponse, served: Served | None) -> str:
    """A cost past the request's hold (its worst case: prompt bound, max_tokens written, every attempt it made
    room for) comes from usage no upstream could have billed, a buggy or hostile provider's report (a count under
    2^53 is still a count): charged the hold, so no budget or max_cost_usd is passed. So is a cost below nothing (a
    negative count, which no upstream bills either): charged as it stands, it would lower the spend, and the budgets
    would let that much more through; and a generation reporting a negative count, whatever the sum came to. Why it
    was capped ('' when it was not)."""
    assert routed.hold is not None  # only admitted requests are settled
    reported = Decimal(response.cost_usd or "0")
    generations = served.generations if served is not None else []
    below = reported < 0 or any(counts_below_nothing(usage) for _, usage in generations)
    why = PAST if to_pico(reported) > routed.hold.pico else "below nothing" if below else ""
    if why:
        model = response.model or routed.decision.model
        log.warning(
            # Worded as operators grep for it (deploy/runbooks.md).
            "usage past the request's hold; charged the hold" if why == PAST else f"usage {why}; charged the hold",
            extra={
                "request_id": routed.request_id,
                "model": model,
                "provider": response.provider,
                "reported_cost_usd": response.cost_usd,
            },
        )
        hold = Decimal(routed.hold.pico) / PICO
        response.cost_usd = format(hold, "f")
        # The difference is the operator's to pay: counted, so an upstream billing past any worst case is seen (a cost
        # below nothing, counted at no difference: the tenant pays the hold).
        count_capped(model, max(reported, hold), hold)
    return why


def _consume_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
