"""The in-process money store: RedisStore's semantics for one process, under the same key names."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.router import metrics
from services.router.store.clock import money_now
from services.router.store.holds import Holds
from services.router.store.keys import NO_MOVES, AccountKeys, key_everywhere, limit_field, rate_window
from services.router.store.model import (
    HOLD_S,
    REQUEST_ID_TTL_S,
    SPEND_MAX_PICO,
    Account,
    Allowance,
    Hold,
    HoldsTotal,
    KeyBinding,
    KeyMoveRecord,
    Pending,
    Prices,
    UncountedCharge,
    Verdict,
    charged_marker,
    charged_tokens,
    kept_batch,
    landing_period,
    marker_after_charge,
    marker_after_release,
    marker_batch,
    marker_charged_pico,
    marker_names_charge,
    marker_released,
    marker_spares_admission,
    next_period,
    pending_field,
    reconciled_record,
    used_ttl_s,
)
from services.router.store.recent_ids import RecentIds


@dataclass
class RateWindow:
    """One rate window's counts (RedisStore's keys of that window): requests by rate counter, the count ids counted
    (rate counter, count id), and tokens charged by tokens counter (AccountKeys.rate, rate_counted, tokens)."""

    requests: dict[str, int] = field(default_factory=dict)
    counted: set[tuple[str, str]] = field(default_factory=set)
    tokens: dict[str, int] = field(default_factory=dict)

    def counted_before(self, subject: str, count_id: str) -> bool:
        return bool(count_id) and (subject, count_id) in self.counted

    def count(self, subject: str, count_id: str) -> None:
        self.requests[subject] = self.requests.get(subject, 0) + 1
        if count_id:
            self.counted.add((subject, count_id))

    def over_tokens(self, counter: str, allowance: Allowance) -> bool:
        """Whether the tokens charged on `counter` are at or over the allowance's tokens per minute."""
        limit = allowance.tokens_per_minute
        return bool(limit) and self.tokens.get(counter, 0) >= limit


class MemoryStore:
    """Each method runs without awaiting, so it is atomic. Nothing outlives the process, so there is nothing to
    reconcile but provider batch lines whose holds lapsed uncollected (reconcile). Memory is bounded: what grows with
    the requests served (request ids, ledger records) is capped."""

    shards_fail_apart = False  # never out of reach

    # Request ids kept, each for the request id TTL at most (as in Redis) and, beyond this many, oldest first:
    # this store serves one development router, where a retry comes within seconds, not 10,000 requests later.
    # An id seen again after that many newer ones is admitted (and charged) as a new request.
    MAX_REQUEST_IDS = 10_000
    MAX_KEPT_ANSWERS = 1_000
    # Records kept for the SQL sink, which reads them within a second or so: a bound, so a long-running
    # process does not grow by every record it ever charged (measured: +290 MB over 100,000 requests).
    MAX_LEDGER_RECORDS = 10_000

    def __init__(self, request_id_ttl_s: float = REQUEST_ID_TTL_S) -> None:
        self.counters: dict[str, int] = {}
        self.limits: dict[str, int] = {}  # by limit_field(scope, name)
        # The tenant each API key id is bound to (RedisStore's key_tenant_key): one entry per key ever used, as its
        # spend counters are, not per request.
        self.key_tenants: dict[str, str] = {}
        self.request_id_ttl_s = request_id_ttl_s
        self.used = RecentIds(request_id_ttl_s, self.MAX_REQUEST_IDS)  # admitted
        self.charged = RecentIds(request_id_ttl_s, self.MAX_REQUEST_IDS)
        self.undone = RecentIds(request_id_ttl_s, self.MAX_REQUEST_IDS)  # undone admissions, by nonce
        # Provider batch lines' answers (keep_answer), each up to ROUTER_BATCH_ANSWER_KEPT_BYTES: fewer of them.
        self.answers = RecentIds(request_id_ttl_s, self.MAX_KEPT_ANSWERS)
        # Provider batch lines' charges counted in no metrics yet (RedisStore's uncounted): (charge id, record), oldest
        # first, as many as request ids at most. Each is taken as soon as its collect's charge returns.
        self.uncounted: dict[str, tuple[str, dict]] = {}
        self.held: dict[str, Holds] = {}  # holds key -> member -> (expiry, pico), with the sum of their pico
        self.pending: dict[str, Pending] = {}  # as stored: provider_batch always None
        self.batches: dict[str, str] = {}  # pending field -> provider batch (RedisStore's batches hash)
        self.models: dict[str, str] = {}  # pending field -> the model admitted for (RedisStore's models hash)
        self.prices: dict[str, Prices] = {}  # pending field -> prices admitted at (its prices hash)
        self.ledger: deque[dict] = deque(maxlen=self.MAX_LEDGER_RECORDS)
        self.ledger_appended = 0  # every record ever appended: the SQL sink's cursor counts against it
        self.rate_windows: dict[int, RateWindow] = {}  # by rate window: the latest and the one before (_window)

    def _budgets(self, account: Account, allowance: Allowance, period: str) -> list[tuple[str, str, int | None, str]]:
        """(spend key, holds key, limit, name) of the tenant's and the key's budget."""
        keys = AccountKeys.of(account)
        limits = [
            self.limits.get(limit_field(scope, name), default)
            for scope, name, default in (
                ("tenant", account.tenant, allowance.tenant_pico),
                ("key", account.key, allowance.key_pico),
            )
        ]
        tenant, key = (keys.spend(period)[0], keys.held()[0]), keys.key_budget(period)
        return [(*tenant, limits[0], "tenant"), (*key, limits[1], "key")]

    def _spent(self, spend_key: str, period: str) -> int:
        """A budget's spend as RedisStore's ADMIT and EXTEND check it (lua.py, _SPENT): the greater of its period's and
        the next period's, where its charge may land."""
        following = spend_key.removesuffix(period) + next_period(period)
        return max(self.counters.get(spend_key, 0), self.counters.get(following, 0))

    async def admit(
        self,
        account: Account,
        allowance: Allowance,
        hold: Hold,
        model: str = "",
        prices: Prices | None = None,
        count_id: str = "",
        counted_at: float | None = None,
        moves: str = "",
    ) -> Verdict:
        del moves  # no key moves (key_move.py names a Redis): a binding read is never stale
        keys = AccountKeys.of(account)
        if keys.undone(hold.nonce) in self.undone:
            return Verdict("undone")
        # Used, in flight or charged: each is kept in its own window, and a request admitted while its id is
        # charged but no longer used would be served with its charge refused as a repeat. The refusal says what the
        # id was charged and the hold of its charge still open, as RedisStore's ADMIT: to the key that used it alone.
        in_flight = self.pending.get(pending_field(account, hold.request_id))
        marker = self.charged.get(keys.charged(hold.request_id))
        user = self.used.get(keys.used(hold.request_id))
        # Released (model.py, RELEASED): the retry of a request never served, by the key that sent it (or any, once an
        # undone admission of it freed the used id), is let in.
        released = in_flight is None and user in (None, keys.key_hex) and marker_released(marker)
        if not released and (user is not None or in_flight is not None or marker is not None):
            if user != keys.key_hex:
                return Verdict("duplicate")
            charged = marker_charged_pico(marker)
            return Verdict("duplicate", charged=charged, held=None if in_flight is None else in_flight.hold_pico)
        now = money_now()
        rate_at = now if counted_at is None else counted_at
        window, subject = self._window(rate_at), keys.rate(rate_at)
        # Counted whether admitted or refused for its budget, once a window (lua.py, ADMIT).
        to_count = bool(allowance.per_minute) and not window.counted_before(subject, count_id)
        if to_count and window.requests.get(subject, 0) >= allowance.per_minute:
            return Verdict("rate")
        if window.over_tokens(keys.tokens(rate_at), allowance):
            return Verdict("tokens")
        tightest, remaining, spend_budget, spend_left = "", None, "", None
        for spend_key, held_key, limit, name in self._budgets(account, allowance, hold.period):
            held = self._holds(held_key)
            held.drop_expired(now, self._open)
            if limit is not None:
                # Nothing left, never less, as RedisStore's ADMIT counts it: of two budgets past their limits (one
                # lowered below its spend), the first is named, not the one spent further past.
                unspent = max(limit - self._spent(spend_key, hold.period), 0)
                left = max(unspent - held.total, 0)
                if remaining is None or left < remaining:
                    tightest, remaining = name, left
                if spend_left is None or unspent < spend_left:
                    spend_budget, spend_left = name, unspent
        if to_count:
            window.count(subject, count_id)
        if remaining is not None and spend_left is not None and hold.pico > remaining:
            return Verdict(tightest, remaining, spend_left, spend_budget)
        self.used.add(keys.used(hold.request_id), keys.key_hex, used_ttl_s(self.used.ttl_s, hold.until, now))
        for held_key in keys.held():
            expires = hold.until or now + HOLD_S
            self._holds(held_key)[keys.hold_member(hold.pico, hold.request_id)] = (expires, hold.pico)
        pending = Pending.of(account, hold)
        self.pending[pending.field] = pending
        if hold.until:  # a provider batch line: '' until its batch is recorded, as RedisStore's ADMIT
            self.batches[pending.field] = ""
        else:
            self.batches.pop(pending.field, None)
        if model:
            self.models[pending.field] = model
        else:
            self.models.pop(pending.field, None)
        if prices is not None:
            self.prices[pending.field] = prices
        else:
            self.prices.pop(pending.field, None)
        return Verdict("")

    def _window(self, now: float) -> RateWindow:
        """The counts of the rate window of `now`. The latest window's are kept with the one's before it, where a
        request resized into the latest is counted (Store.admit's counted_at), as Redis keeps a window's counters a
        little past it; those of windows before are dropped (a window older still: counts kept nowhere)."""
        number = rate_window(now)
        if number not in self.rate_windows:
            self.rate_windows[number] = RateWindow()
            latest = max(self.rate_windows)
            self.rate_windows = {n: kept for n, kept in self.rate_windows.items() if n >= latest - 1}
        return self.rate_windows.get(number, RateWindow())

    async def bind_key(self, key: str, tenant: str) -> KeyBinding:
        return KeyBinding(self.key_tenants.setdefault(key, tenant), NO_MOVES)

    async def key_tenant(self, key: str) -> str | None:
        return self.key_tenants.get(key)

    async def count_request(self, account: Account, allowance: Allowance, count_id: str = "", moves: str = "") -> str:
        del moves  # as admit's
        if not (allowance.per_minute or allowance.tokens_per_minute):
            return ""
        keys, now = AccountKeys.of(account), money_now()
        window, subject = self._window(now), keys.rate(now)
        if window.counted_before(subject, count_id):
            return ""
        if allowance.per_minute and window.requests.get(subject, 0) >= allowance.per_minute:
            return "rate"
        if window.over_tokens(keys.tokens(now), allowance):
            return "tokens"
        if allowance.per_minute:
            window.count(subject, count_id)
        return ""

    async def charge(
        self,
        account: Account,
        hold: Hold,
        pico: int,
        record: dict,
        late: bool = False,
        charge_id: str = "",
        release: bool = False,
    ) -> bool:
        keys = AccountKeys.of(account)
        charged = keys.charged(hold.request_id)
        met = self.charged.get(charged)
        if charge_id and marker_names_charge(met, charge_id):
            return True  # this very charge, made before
        landed = landing_period(hold.period)  # as RedisStore's charge lands it
        record = {**record, "period": landed}
        for spend_key in keys.spend(landed):  # refused whole, as RedisStore's CHARGE (SPEND_MAX_PICO)
            if self.counters.get(spend_key, 0) + pico > SPEND_MAX_PICO:
                raise OverflowError(f"spend would overflow: {spend_key} would pass {SPEND_MAX_PICO} pico-USD")
        # Late past the admission's marked_until, as RedisStore's CHARGE judges it; its marker kept at least that long.
        now = money_now()
        late = late or 0 < hold.marked_until <= now
        marked_s = max(self.charged.ttl_s, hold.marked_until - now)
        field = pending_field(account, hold.request_id)
        pending, batch = self.pending.get(field), self.batches.get(field)
        own = pending is not None and bool(hold.nonce) and pending.nonce == hold.nonce
        if pending is not None and hold.nonce and not own:
            # Another admission of the request id (admitted again once its markers expired, while this charge waited
            # in an outbox): a request in flight, settled by its own charge only (lua.py, CHARGE).
            pending, batch = None, None
            if late:
                return False
        else:
            self._drop(account, hold)
        if late and pending is None:
            return False
        if met is not None:
            # Another admission's charge of the id (lua.py, CHARGE): kept beside this one. Else a repeat.
            if not (own or marker_spares_admission(met, hold.nonce)):
                return False
            marked_s = max(marked_s, self.charged.left_s(charged))  # kept as long as its charges need (lua.py)
            self.charged.discard(charged)
        marker = marker_after_charge(met, charged_marker(batch, charge_id, hold.nonce), pico)
        if release and batch is None:
            marker = marker_after_release(met, marker)
        self.charged.add(charged, marker, marked_s)
        if batch is not None and charge_id:  # counted by the router that takes it (count_once; lua.py, CHARGE)
            self.uncounted[keys.uncounted(hold.request_id)] = (charge_id, record)
            if len(self.uncounted) > self.MAX_REQUEST_IDS:
                del self.uncounted[next(iter(self.uncounted))]
        self.used.outlive(keys.used(hold.request_id), marked_s)  # as long as the charged marker (lua.py)
        for spend_key in keys.spend(landed):
            self.counters[spend_key] = self.counters.get(spend_key, 0) + pico
        tokens = self._window(now).tokens  # counted once, as the charge lands (lua.py, CHARGE)
        tokens[keys.tokens(now)] = tokens.get(keys.tokens(now), 0) + charged_tokens(record)
        self.ledger.append(record)
        self.ledger_appended += 1
        return True

    async def count_once(self, account: Account, request_id: str, charge_id: str = "") -> dict[str, Any] | None:
        key = AccountKeys.of(account).uncounted(request_id)
        named, record = self.uncounted.get(key, ("", None))
        if record is None or charge_id not in ("", named):
            return None
        del self.uncounted[key]
        return record

    async def count_once_each(self, charges: Sequence[UncountedCharge]) -> list[dict[str, Any] | None]:
        return [await self.count_once(each.account, each.request_id, each.charge_id) for each in charges]

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int, moves: str = "") -> str:
        del moves  # as admit's
        pending = self.pending.get(pending_field(account, hold.request_id))
        if pending is None or (hold.nonce and pending.nonce != hold.nonce):  # settled, or another admission's
            return "settled"
        keys = AccountKeys.of(account)
        held = keys.hold_member(self._held(account, hold).pico, hold.request_id)
        landing = landing_period(hold.period)
        for spend_key, held_key, limit, name in self._budgets(account, allowance, landing):
            holds = self.held.get(held_key)
            others = 0 if holds is None else holds.total - (holds[held][1] if held in holds else 0)
            if limit is not None and self._spent(spend_key, landing) + others + pico > limit:
                return name
        field = pending_field(account, hold.request_id)
        batch, model, prices = self.batches.get(field), self.models.get(field), self.prices.get(field)
        self._drop(account, hold)
        # Growing the hold keeps the line's batch, model and prices, as RedisStore's EXTEND leaves them.
        if batch is not None:
            self.batches[field] = batch
        if model is not None:
            self.models[field] = model
        if prices is not None:
            self.prices[field] = prices
        grown = replace(hold, pico=pico)
        for held_key in keys.held():
            self._holds(held_key)[keys.hold_member(pico, hold.request_id)] = (money_now() + HOLD_S, pico)
        pending = Pending.of(account, grown)
        self.pending[pending.field] = pending
        return ""

    def _drop(self, account: Account, hold: Hold) -> None:
        """The request's hold and pending charge go (a charge, an extension or an undo)."""
        keys = AccountKeys.of(account)
        members = {keys.hold_member(each.pico, hold.request_id) for each in (hold, self._held(account, hold))}
        for held_key in keys.held():
            holds = self.held.get(held_key)
            for member in members:
                if holds is not None:
                    holds.pop(member, None)
        self.pending.pop(pending_field(account, hold.request_id), None)
        self.batches.pop(pending_field(account, hold.request_id), None)
        self.models.pop(pending_field(account, hold.request_id), None)
        self.prices.pop(pending_field(account, hold.request_id), None)

    async def undo(self, account: Account, hold: Hold) -> bool:
        assert hold.nonce, "only an admission with a nonce can be undone"
        keys = AccountKeys.of(account)
        self.undone.add(keys.undone(hold.nonce))
        pending = self.pending.get(pending_field(account, hold.request_id))
        if pending is None or pending.nonce != hold.nonce:
            return False
        self._drop(account, hold)
        self.used.discard(keys.used(hold.request_id))
        return True

    def _holds(self, held_key: str) -> Holds:
        holds = self.held.get(held_key)
        if holds is None:
            holds = self.held[held_key] = Holds()
        return holds

    def _open(self, member: str, pico: int) -> bool:
        """Whether a hold member stands for an open pending charge with that very hold: then it counts past its
        expiry, as in RedisStore's ADMIT (lua.py, _OPEN: its charge may be on its way, and must find the budget)."""
        _, tenant_hex, request_id = member.split(":", 2)  # keys.py, hold_member
        pending = self.pending.get(pending_field(Account(bytes.fromhex(tenant_hex).decode(), ""), request_id))
        return pending is not None and pending.hold_pico == pico

    def _held(self, account: Account, hold: Hold) -> Hold:
        """The hold as this store holds it (RedisStore's held_member): its pending charge's."""
        pending = self.pending.get(pending_field(account, hold.request_id))
        return hold if pending is None else replace(hold, pico=pending.hold_pico)

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        field = pending_field(account, request_id)
        pending = self.pending.get(field)
        if pending is None:
            return None
        return replace(
            pending, provider_batch=self.batches.get(field), model=self.models.get(field), prices=self.prices.get(field)
        )

    async def record_provider_batch(self, account: Account, hold: Hold, batch_id: str) -> bool:
        pending = self.pending.get(pending_field(account, hold.request_id))
        if pending is None or pending.nonce != hold.nonce:
            return False
        self.batches[pending.field] = batch_id
        return True

    async def charged_batch(self, account: Account, request_id: str) -> str | None:
        marker = self._charged_marker(account, request_id)
        return None if marker is None else marker_batch(marker)

    async def keep_answer(
        self, account: Account, request_id: str, answer: bytes, ttl_s: float, replace: bool = False
    ) -> bool:
        key, kept = AccountKeys.of(account).answer(request_id), await self.kept_answer(account, request_id)
        if kept is not None and (replace or not kept.startswith(kept_batch(answer))):  # replaced (lua.py, KEEP_ANSWER)
            self.answers.discard(key)
        return self.answers.add(key, answer.decode("latin-1"), ttl_s)

    async def kept_answer(self, account: Account, request_id: str) -> bytes | None:
        kept = self.answers.get(AccountKeys.of(account).answer(request_id))
        return None if kept is None else kept.encode("latin-1")

    async def charged_pico(self, account: Account, request_id: str) -> int | None:
        return marker_charged_pico(self._charged_marker(account, request_id))

    def _charged_marker(self, account: Account, request_id: str) -> str | None:
        keys = AccountKeys.of(account)
        marker = self.charged.get(keys.charged(request_id))
        if marker is None or self.used.get(keys.used(request_id)) != keys.key_hex:  # none: no key told (RedisStore)
            return None
        return marker

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        keys = AccountKeys.of(account)
        key_keys = [keys] if account.tenant else key_everywhere(account.key)
        key = sum(self.counters.get(each.key_budget(period)[0], 0) for each in key_keys)
        return self.counters.get(keys.spend(period)[0], 0), key

    async def carried(self, account: Account, period: str) -> int:
        return 0  # no key moves (key_move.py names a Redis)

    async def heartbeat(self, router: str, ttl_s: float, pending_stale_s: float | None = None) -> None:
        return None

    async def held_pico(self, account: Account) -> tuple[int, int]:
        now = money_now()
        keys = AccountKeys.of(account)
        key_keys = [keys] if account.tenant else key_everywhere(account.key)

        def live(held_key: str) -> int:
            held = self.held.get(held_key, {}).items()
            return sum(p for m, (expiry, p) in held if expiry > now or self._open(m, p))

        return live(keys.held()[0]), sum(live(each.key_budget("")[1]) for each in key_keys)

    async def hold_totals(self) -> AsyncIterator[HoldsTotal]:
        for key, holds in list(self.held.items()):
            if holds:
                yield HoldsTotal(key, (holds.total, len(holds)), (sum(p for _, p in holds.values()), len(holds)))

    async def bump_hold_totals_epoch(self) -> None:
        return None  # nothing but this store writes its holds: no total of its was ever kept by another version

    async def choose_hold_totals(self, router: str, interval_s: float) -> bool:
        return True  # the same: its totals are always exact

    async def limit_overrides(self) -> dict[tuple[str, str], int]:
        return {(field.partition(":")[0], field.partition(":")[2]): pico for field, pico in self.limits.items()}

    async def set_limit(self, scope: str, name: str, pico: int | None) -> int | None:
        before = self.limits.pop(limit_field(scope, name), None)
        if pico is not None:
            self.limits[limit_field(scope, name)] = pico
        return before

    async def key_moves(self, count: int) -> list[KeyMoveRecord]:
        return []  # keys are moved in the money Redis alone (key_move.py)

    async def finish_limit_changes(self) -> int:
        return 0  # each change is whole at once here

    async def reconcile(self, router: str, lease_s: float, stale_s: float) -> int:
        """No router but this one admits here, and it never takes itself for dead; but a provider batch line's hold may
        outlive its collector (an edge that lost its batches, as the in-process batch store does at each restart): once
        it lapses, the line is charged its hold, as RedisStore's reconciler charges it, so that it stops counting
        against its budget. Counted in the metrics once, as that reconciler counts it."""
        now, settled = money_now(), 0
        for line in list(self.batches):  # the lines' pending charges alone: admit keeps a batch entry for each
            pending = self.pending.get(line)
            if pending is None or not pending.until or pending.until >= now:
                continue
            account, hold = pending.account_and_hold()
            record = reconciled_record(replace(pending, model=self.models.get(line)))
            charge_id = secrets.token_hex(8)
            if await self.charge(account, hold, hold.pico, record, late=True, charge_id=charge_id):
                settled += 1
                if await self.count_once(account, hold.request_id, charge_id) is not None:
                    metrics.count_charge(record)
        return settled

    async def give_back(self, account: Account, hold: Hold, pico: int | None, release: bool = False) -> int:
        return 0  # nothing is reconciled here: a router's store is its own, and it never takes itself for dead

    async def shards_away(self) -> set[int]:
        return set()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
