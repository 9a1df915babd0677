"""Session affinity: the turns of one conversation (`session_id`, per API key) stay on one model while it is
healthy and the new turn needs no stronger tier, so a provider's prompt cache stays warm and the style of
the answers does not change mid-conversation. A session may move up a tier, never down, unless its model
fails. History (turns, tokens, cost) is kept beside the model.

Sessions live in the cache store (ROUTER_CACHE_REDIS_URL, shared by replicas and surviving restarts; in
process without it), with a TTL renewed on every turn, one answered from the response cache included. A session
is not money: when the cache evicts it or it expires, the next turn is routed afresh as a new session's first turn
and its history restarts.

A session is its caller's own: the tenant's and, within it, the API key's (session_key). Another key of the tenant
naming the same session id neither reads its model and turns nor changes them: its turn is its own session's."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from llmrouter.json_depth import loads_stored
from llmrouter.registry import Registry
from llmrouter.v1 import router_pb2
from services.router import policy
from services.router.store import Account
from services.router.store.keys import KEYLESS

if TYPE_CHECKING:  # the cache module imports Routed, which carries a Session
    from services.router.cache import Cache

log = logging.getLogger("llmrouter.router")

REASON_CODE = "session_affinity"


@dataclass(frozen=True)
class Session:
    model: str  # the model the session stays on
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)


def session_key(tenant: str, session_id: str, key: str = KEYLESS) -> str:
    """Per tenant and API key (by its id): the same session id from another tenant, or another key of the tenant, is
    another session. A keyless request's (no API keys: the tenant's one anonymous caller) is the tenant's, under the
    name every session had before sessions were per key, so those sessions carry on through an upgrade. A keyed one's
    is under a name of its own form, its parts JSON-encoded: no tenant, key or session id spells another's. The
    sessions keyed requests had per tenant are not read (any key of the tenant could have written one); they are
    routed afresh, as expired ones, and lapse within the session TTL."""
    if key == KEYLESS:
        digest = hashlib.sha256(f"{tenant}\0{session_id}".encode()).hexdigest()
        return f"session:{digest}"
    digest = hashlib.sha256(json.dumps([tenant, key, session_id]).encode()).hexdigest()
    return f"session:key:{digest}"


def stick(plan: policy.Plan, session: Session | None, registry: Registry) -> policy.Plan | None:
    """The plan with the session's model first, when affinity applies: its model is within the turn's limits
    (available, eligible) and the turn's own choice is no stronger a tier. Without the classifier the turn's
    need is only guessed (ROUTER_CLASSIFIER_FALLBACK: its length, or the strongest tier): the session's model is
    the better guess, so a classifier outage moves no session up for good. None when the plan stands."""
    if session is None:
        return None
    current = next((o for o in plan.order if o.model.name == session.model), None)
    if current is None:  # unavailable, excluded by this turn's limits, or gone from the registry
        return None
    chosen = plan.order[0]
    harder = registry.tier_rank(chosen.model) > registry.tier_rank(current.model)
    if chosen is current or (harder and plan.code != "classifier_unavailable"):
        return None
    reason = (
        f"session affinity: stays on {current.model.name} (turn {session.turns + 1}; "
        f"the turn alone would pick {chosen.model.name}, no stronger a tier)"
    )
    order = [current] + [o for o in plan.order if o is not current]
    return policy.Plan(plan.options, order, REASON_CODE, reason, own=plan)


def next_model(registry: Registry, session: Session | None, planned: str, served: str) -> str:
    """The model the session continues on after a turn: the one that answered when no weaker a tier (an
    escalation or a harder turn moves the session up); a weaker one only when the session's model, planned
    first, did not answer (it failed: the session is no longer healthy on it)."""
    if session is None or session.model == served:
        return served
    old, new = registry.get(session.model), registry.get(served)
    if old is None or new is None or registry.tier_rank(new) >= registry.tier_rank(old):
        return served
    return served if planned == session.model else session.model


class Sessions:
    def __init__(self, backend: Cache, ttl_s: int) -> None:
        self.backend = backend
        self.ttl_s = ttl_s  # 0 disables affinity

    async def get(self, account: Account, request: router_pb2.CompleteRequest) -> Session | None:
        """The request's session, when it names one and routes automatically; None for a new session."""
        if not self._applies(request):
            return None
        raw = await self.backend.get(session_key(account.tenant, request.session_id, account.key))
        if raw is None:
            return None
        try:
            fields = loads_stored(raw)
            return Session(
                fields["model"],
                int(fields["turns"]),
                int(fields["input_tokens"]),
                int(fields["output_tokens"]),
                Decimal(fields["cost_usd"]),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable session record; starting the session afresh")
            return None

    async def record(
        self,
        account: Account,
        request: router_pb2.CompleteRequest,
        session: Session | None,
        planned: str,
        response: router_pb2.CompleteResponse,
        registry: Registry,
    ) -> None:
        """Count the turn and keep the model the session continues on. Best effort, like the cache: a lost
        write costs affinity, never money. Concurrent turns of one session: the last one written wins."""
        if not self._applies(request):
            return
        before = session or Session(response.model)
        after = dataclasses.replace(
            before,
            model=next_model(registry, session, planned, response.model),
            turns=before.turns + 1,
            input_tokens=before.input_tokens + response.usage.input_tokens,
            output_tokens=before.output_tokens + response.usage.output_tokens,
            cost_usd=before.cost_usd + Decimal(response.cost_usd or "0"),
        )
        await self._keep(account, request, after)

    async def record_hit(
        self,
        account: Account,
        request: router_pb2.CompleteRequest,
        session: Session | None,
        planned: str,
        registry: Registry,
    ) -> None:
        """Count a turn answered from the response cache: without it, a conversation answered from the cache lost its
        model after ttl_s and its next turn was routed afresh. On the model the turn was routed to (`planned`: the
        session's own when affinity kept it), as though it had answered; never the cached answer's, which another
        request's routing chose (another session's affinity, a classifier outage, another key's in a tenant-wide
        cache): recorded, it moved this session up to a model its own turns never chose, and its later turns paid for
        it. No tokens and no cost, as the ledger records a hit: it generated nothing and was charged nothing. In the
        caller's own session (session_key), whoever's answer it was."""
        if not self._applies(request):
            return
        before = session or Session(planned)
        model = next_model(registry, session, planned, planned)
        await self._keep(account, request, dataclasses.replace(before, model=model, turns=before.turns + 1))

    def _applies(self, request: router_pb2.CompleteRequest) -> bool:
        """Whether the request is a turn of a session: it names one and routes automatically, affinity enabled."""
        return bool(self.ttl_s and request.session_id and request.model in ("", "auto"))

    async def _keep(self, account: Account, request: router_pb2.CompleteRequest, after: Session) -> None:
        """The session as it stands after the turn, for ttl_s from now."""
        value = json.dumps({**dataclasses.asdict(after), "cost_usd": format(after.cost_usd, "f")})
        await self.backend.set(session_key(account.tenant, request.session_id, account.key), value.encode(), self.ttl_s)
