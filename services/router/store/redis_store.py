"""The money store on Redis: one server (`redis://`) or a Redis Cluster (`redis+cluster://`). Admission, charge,
extension and undo are one script each on the account's shard (keys.py); the rest is pipelined."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Literal, NamedTuple

from pydantic import SecretStr
from redis.exceptions import ResponseError, SlotNotCoveredError

from llmrouter.json_depth import loads_stored
from llmrouter.redis_connect import connect, is_cluster, is_cluster_client
from llmrouter.redis_errors import StoreFailure, store_failure
from llmrouter.redis_scripts import Script
from llmrouter.tasks import raise_if_cancelled
from services.router import metrics
from services.router.capped_charges import count_charge, countable
from services.router.store import heartbeats, key_moves, ledger_entry, lua, replicated
from services.router.store.clock import MONEY_CLOCK, money_now
from services.router.store.keys import (
    CLAIM_ADOPTED_AFTER_S,
    GLOBAL,
    HOLD_TOTALS_LOOK,
    LEASE,
    LEASE_HOLDER,
    NO_MOVES,
    OLDER_ROUTERS,
    SHARDS,
    TAKEN_KEPT_S,
    AccountKeys,
    hold_totals_epoch_key,
    key_everywhere,
    key_moves_key,
    key_tenant_key,
    ledger_key,
    limit_field,
    limits_key,
    pending_key,
    repairs_key,
    shard_of,
    shard_of_key,
    taken_claims_key,
    uncounted_reconciled_key,
)
from services.router.store.last_beats import BeatsRead, LastBeats
from services.router.store.limits import Limits
from services.router.store.model import (
    GIVEN_BACK,
    HOLD_S,
    HOLDS_LINGER_S,
    REQUEST_ID_TTL_S,
    Account,
    Allowance,
    Hold,
    HoldsTotal,
    HoldTotals,
    KeyBinding,
    KeyMoveRecord,
    PartlyTaken,
    Pending,
    Prices,
    Reconciled,
    StoreRefusing,
    StoreUnavailable,
    UncountedCharge,
    Verdict,
    admitted_prices,
    charged_tokens,
    given_back_record,
    kept_batch,
    landing_period,
    marker_batch,
    marker_charged_pico,
    next_period,
    pending_field,
    period_id,
    period_start,
    prices_value,
    reconciled_record,
    spend_ttl_s,
    used_ttl_s,
)
from services.router.store.pending_stale import PendingStale
from services.router.store.replicated import Replicated

log = logging.getLogger("llmrouter.router")

# At most about 1/LOOK_COST_SHARE of the time goes to looking at the heartbeats (choose_hold_totals).
LOOK_COST_SHARE = 20
# Ledger entries one script of ledger-spend reads (lua.py, SPEND_AND_GIVEN_BACK): about 3 ms of the master's time.
LEDGER_PAGE = 1000
# The charges left uncounted that one sweep counts, of each shard (_count_left_uncounted).
UNCOUNTED_PAGE = 1000
# Counts one script takes (lua.py, COUNT_ONCE), all of one shard: about 16 µs of the master's time each, so a call
# blocks it for 4 ms or so (benchmarks/count_once.py), and a collect of 1,000 lines takes them in 4 calls.
TAKE_PAGE = 250
CONNECTIONS = 64  # per client; on a cluster, per node at most
# How long the reconciler and the outbox wait for each master of a Redis Cluster to answer (shards_away).
MASTER_ANSWERS_S = 1.0
LEASE_KEPT = 1  # lua.LEASE's answer when no other router held the lease since this one last took it
# How long the lease's key outlives the lease (lua.LEASE), in leases and at least in ms: a router of a version before
# takes the lease only after so long with no round of this version (after a rollback, its reconciler waits so long),
# and the records of the routers seen missing survive a lapse of this version's lease within it (a loaded host's
# stall, whatever the lease: tests' are milliseconds).
LEASE_KEY_OUTLIVES = 4
LEASE_KEY_OUTLIVES_MIN_MS = 5_000
# The share of the heartbeat TTL that the store may stay out of a router's sight (its PING or heartbeat failing) with
# what its reconciler saw missing still holding: a live router beats every upkeep interval, at most a third of the TTL
# (settings.py), so its beat cannot lapse in an outage shorter than the TTL less two intervals, at least this share.
SIGHT_LOST_FORGETS = 1 / 3


# What the log says of a store refusing this router (a deployment to fix); a read-only store is a failover under way.
_REFUSAL_LOGGED = {
    StoreFailure.DENIED: "the money store denies this router's user (ACL)",
    StoreFailure.FULL: "the money store is full (OOM under noeviction): raise its maxmemory",
    StoreFailure.REFUSING: "the money store refuses commands",
}


@asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    """The store out of reach (llmrouter.redis_errors: connection failures, timeouts, a password changed, loading its
    data, a cluster without a master for the slot, whose redirections never settled or whose layout cannot be learnt)
    is StoreUnavailable; the store refusing this router (a demoted primary, an ACL change, full under noeviction,
    unable to persist, short of replicas, busy with a long script) is StoreRefusing. Both fail closed, and send
    charges to the outbox, which holds them rather than dead-letter them: they are no fault of the charge. Errors of a
    call's own keys (WRONGTYPE, a script's own error reply) are raised as they are. A cancellation that redis-py
    swallowed is raised after the call (llmrouter.tasks.raise_if_cancelled): the loops that read the store (upkeep,
    budget watch) stop when cancelled."""
    try:
        yield
    except Exception as exc:
        failure = store_failure(exc)
        if failure is None:
            raise
        metrics.STORE_UP.labels("money").set(0)
        if failure is StoreFailure.UNREACHABLE:
            raise StoreUnavailable() from exc
        if failure in _REFUSAL_LOGGED:
            log.error(_REFUSAL_LOGGED[failure], extra={"error": str(exc)[:200]})
        raise StoreRefusing() from exc
    metrics.STORE_UP.labels("money").set(1)
    raise_if_cancelled()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _position(told: list[Any]) -> StreamPosition:
    added, length, first, last = told
    return StreamPosition(int(added), int(length), _text(first), _text(last))


def _pico_or_none(value: Any) -> int | None:
    """A script's pico-USD amount, '' for none."""
    return int(value) if _text(value) else None


def _held_sum(members: list[Any]) -> int:
    """Hold members begin '<pico>:' (keys.py, hold_member; and those written before members named the tenant)."""
    return sum(int(_text(m).split(":", 1)[0]) for m in members)


def _limit_args(allowance: Allowance) -> list[str | int]:
    none = ""  # no limit
    return [
        none if allowance.tenant_pico is None else allowance.tenant_pico,
        none if allowance.key_pico is None else allowance.key_pico,
    ]


class StreamPosition(NamedTuple):
    """A ledger stream at one instant (lua.py, _STREAM_POSITION): how many entries were ever added to it, how many it
    holds, its first entry's id ('' when it holds none), and the last id it gave ('0-0' before any)."""

    added: int
    length: int
    first: str
    last: str


class SpendRead(NamedTuple):
    """Spend counters read at one instant (RedisStore.spend_and_given_back): what each holds, and how many times a
    repair raised it (keys.py, repairs_key), which a repair of what was read names (RedisStore.raise_spend)."""

    pico: dict[str, int]
    repairs: dict[str, int]


class CounterRead(NamedTuple):
    """A spend counter as money_check's ledger-spend read it (RedisStore.spend_and_given_back), which its raise names
    (RedisStore.raise_spend): what it held, its repairs count (keys.py, repairs_key), and its shard's ledger stream's
    last id then (StreamPosition.last)."""

    pico: int
    repairs: int
    ledger_last: str


# What a raise of a spend counter did (RedisStore.raise_spend): raised it; nothing, another repair having raised it
# since it was read; nothing, it having moved since with no ledger entry beside it (a repair of the version before).
Raised = Literal["raised", "repaired since", "moved off the ledger"]
_RAISED: dict[int, Raised] = {1: "raised", 0: "repaired since", -1: "moved off the ledger"}


class KeyMoved(NamedTuple):
    """A key move (RedisStore.move_key): the tenant the key was bound to before (None: none), and, when it waited for
    replicas, how many of each master's had the move's writes (replicated.Replicated), and how many of its record's
    master had its record (None: not waited for, or not recorded)."""

    before: str | None
    replicated: list[Replicated]
    record_replicated: Replicated | None = None
    pending_stale_s: float = HOLDS_LINGER_S  # how far it carried a hold past its expiry (RedisStore.move_key)
    published_s: float | None = None  # the longest ROUTER_PENDING_STALE_S routers published (None: none did)


class MoneyClockUnread(Exception):
    """A key move refused before it wrote anything: the money Redis' clock (TIME), which dates what it carries, was not
    read (the store out of reach, on a Redis Cluster its GLOBAL slot's master; or TIME refused to this user)."""


class KeyMoveUnrecorded(Exception):
    """A key move made (on the masters) whose record (key_moves.py) the money Redis failed to write."""

    def __init__(self, moved: KeyMoved) -> None:
        super().__init__("the key move was made but not recorded")
        self.moved = moved


class _Take(NamedTuple):
    """One charge's take of its count (lua.py, COUNT_ONCE): by its charge id ('' any), dropping its entry in its
    shard's list ('' none)."""

    keys: AccountKeys
    request_id: str
    charge_id: str
    listed: str


class _Taken(NamedTuple):
    """What a call of takes answered: each take's record (None for none), in order, how many it left alone (one of
    their own keys of another type), and the claim it took them under."""

    records: list[dict[str, Any] | None]
    skipped: int
    claim: str


class _Unheard(NamedTuple):
    """A call of takes under a claim of its own whose records never reached its caller (its reply and its resend's
    lost, or the caller cancelled): it may have run, dropping their entries from the shard's list, so that no sweep
    finds them; sent again under that claim until heard back."""

    shard: int
    takes: list[_Take]
    sent: float  # monotonic
    claim: str


def _answered(takes: list[_Take], answers: Any, claim: str) -> _Taken:
    """What COUNT_ONCE answered a call of `takes`, two a take (lua.py): those left alone logged once a call."""
    records = [None if r is None else _taken_record(take, r) for take, r in zip(takes, answers[::2], strict=True)]
    skipped = [(take, why) for take, why in zip(takes, answers[1::2], strict=True) if why is not None]
    if skipped:
        take, why = skipped[0]
        log.error(
            "uncounted charges not taken, a key of their own of another type: left listed, behind the others",
            extra={
                "charges": len(skipped),
                "request_id": take.request_id,
                "listed": take.listed[:500],
                "why": _text(why)[:500],
            },
        )
    return _Taken(records, len(skipped), claim)


def _listed_take(shard: int, member: bytes) -> _Take | str:
    """The take of an entry '<charge id> <pending field>' of the shard's list (keys.py, uncounted_reconciled); for one
    no router wrote (hand-edited), why it is dropped (metrics.UNCOUNTED_DROPPED_WHY): 'unreadable' (not text, no charge
    id, a field that is no [tenant, request id]) or 'other_shard' (a tenant whose keys a take of this shard's slot
    cannot reach)."""
    try:
        entry = member.decode()
        charge_id, _, field = entry.partition(" ")
        named = loads_stored(field)  # its pending field (model.py, pending_field)
    except ValueError:  # not UTF-8, not JSON, or nested past the parser's depth (TooDeep)
        return "unreadable"
    if not (charge_id and isinstance(named, list) and len(named) == 2 and all(isinstance(n, str) for n in named)):
        return "unreadable"
    keys = AccountKeys.of(Account(named[0], ""))
    return _Take(keys, named[1], charge_id, entry) if keys.shard == shard else "other_shard"


def _taken_record(take: _Take, text: bytes) -> dict[str, Any] | None:
    """A taken charge's record as the charge built it; None, logged, for one no router wrote (not a JSON object,
    nested past any router's, or lacking what the metrics count: hand-edited): taken all the same, and counted in no
    router's metrics (counted, it would fail its collect or the sweep's page part way, and count it in part)."""
    record = _object_or_none(text)
    if record is not None:
        try:
            built = ledger_entry.expanded(record)
        except (TypeError, ValueError, KeyError):  # candidates in neither form
            pass
        else:
            if countable(built):
                return built
    log.error("uncounted charge's record unreadable: not counted", extra={"request_id": take.request_id})
    return None


def _noted(shard: int, note: bytes) -> tuple[int, list[_Take]] | None:
    """A taken claim's note (keys.py, taken_claims_key): when taken (ms), and the takes of the counts it took, to send
    again; None for one no router wrote, or naming a key out of the shard's slot (hand-edited)."""
    try:
        when, _, listed = note.decode().partition(" ")
        counted = loads_stored(listed)
    except ValueError:  # not UTF-8, not JSON, or nested past the parser's depth
        return None
    if not (when.isascii() and when.isdigit() and isinstance(counted, list) and counted):
        return None
    takes = []
    for key in counted:
        # '<shard tag>:t:<tenant hex>:counted:<request id>' (keys.py, AccountKeys.counted): the hex has no ':'.
        tenant_hex, _, request_id = str(key).partition(":t:")[2].partition(":counted:")
        keys = AccountKeys(shard, tenant_hex, "")
        if not isinstance(key, str) or keys.counted(request_id) != key:
            return None
        takes.append(_Take(keys, request_id, "", ""))
    return int(when), takes


def _object_or_none(text: bytes) -> dict[str, Any] | None:
    """A ledger record read back: None for one that is no JSON object (hand-edited, or nested past any router's)."""
    try:
        record = loads_stored(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _readable(record: str) -> Pending | None:
    """A swept record as a Pending; None for one no router could settle (not JSON, a field missing: hand-edited, or a
    restore gone wrong), counted and logged as a failure each round rather than ending the sweep before any other
    pending charge, of any tenant, is settled."""
    try:
        charge = Pending.from_json(record)
        # What the sweep reads of every record before settling any: a value of another type would end it too.
        if isinstance(charge.router, str) and all(isinstance(t, int | float) for t in (charge.ts, charge.until)):
            return charge
    except (ValueError, TypeError, AttributeError):  # not JSON, not an object, a field missing
        pass
    metrics.RECONCILE_FAILURES.inc()
    log.error("pending charge unreadable: no router can settle it", extra={"record": record[:500]})
    return None


def _next_spends(keys: AccountKeys, period: str) -> list[str]:
    """The spend counters of the period after `period` that ADMIT and EXTEND check too (lua.py, _SPENT): the tenant's
    and the one the key budget is checked against."""
    following = next_period(period)
    return [keys.spend(following)[0], keys.key_budget(following)[0]]


def _this_and_next(period: str) -> list[str]:
    return [period, next_period(period)]


# How long after its hold's expiry a request's charge may still land: a provider batch line never collected is charged
# at its hold by the reconciler's first sweep after it (one a lease, ROUTER_HEARTBEAT_TTL_S: 15 s by default), in the
# period of that sweep. A key move counts a hold in each period that starts before its expiry and this.
CHARGED_LATE_S = HOLD_S


def _carried_periods(kind: str, now: float, last: float) -> list[str]:
    """The periods of a kind a key move carries into (RedisStore._carry): the one `now` is in and the next (charges
    landing after its end), and each later one that starts before `last`, when a hold it carries may be charged."""
    periods = _this_and_next(period_id(kind, now))
    while (following := next_period(periods[-1])) != periods[-1] and period_start(following) < last:
        periods.append(following)
    return periods


def _carried(keys: AccountKeys, period: str) -> list[str]:
    """What the key carried into its shard for `period` and the period after, which ADMIT and EXTEND add to its spend
    (lua.py, _SPENT)."""
    return [keys.carried(each) for each in _this_and_next(period)]


def _gone_for_good(beats: BeatsRead, router: str, seen_missing_s: float, grace_s: float, watched_from_ms: int) -> bool:
    """Whether a router missing at this sweep is taken for dead: by its last beat, gone a whole grace by the store's
    clock since it lapsed or since `watched_from_ms` (the reconciler's first read after the store was out of its
    sight: no router could beat meanwhile), whatever this reconciler saw before; with none (a router of a version
    before), seen missing at sweeps a grace apart (`seen_missing_s` since the first)."""
    gone_s = beats.gone_s(router, watched_from_ms)
    return (seen_missing_s if gone_s is None else gone_s) >= grace_s


class RedisStore:
    def __init__(
        self,
        url: str | SecretStr,
        request_id_ttl_s: int = REQUEST_ID_TTL_S,
        hold_totals: HoldTotals = "trust",
        master_answers_s: float = MASTER_ANSWERS_S,
    ) -> None:
        self.url = url  # for a command that needs connections of its own (replicated.py)
        self.redis = connect(
            url, max_connections=CONNECTIONS, pool_timeout=5, socket_connect_timeout=2, socket_timeout=5
        )
        # A cluster client fails a command that finds its node's connections all busy: under a burst, calls
        # wait here instead (a single server's blocking pool does the same).
        self._calls = asyncio.Semaphore(CONNECTIONS)
        self.request_id_ttl_s = request_id_ttl_s
        # Admission and extension count each budget's holds by its running total, or by a scan (lua.py, _TOTALS);
        # 'auto' scans until choose_hold_totals finds no router of a version before the totals alive, and bumps the
        # epoch then, at every start too: older routers may have come and gone unseen (a rollback and a roll-forward),
        # and leave no trace once their heartbeats lapse, so no record that the totals are clean could be trusted.
        self._hold_totals = hold_totals
        self._trust_totals = "1" if hold_totals == "trust" else "0"
        # On a Redis Cluster one master's failure says nothing of the shards on the others (the outbox's replay).
        self.shards_fail_apart = is_cluster(url)
        self.master_answers_s = master_answers_s
        self._admit = Script(self.redis, lua.ADMIT)
        self._count_request = Script(self.redis, lua.COUNT_REQUEST)
        self._charge = Script(self.redis, lua.CHARGE)
        self._count_once = Script(self.redis, lua.COUNT_ONCE)
        self._ack_take = Script(self.redis, lua.ACK_TAKE)
        self._adopt_claim = Script(self.redis, lua.ADOPT_CLAIM)
        self._extend = Script(self.redis, lua.EXTEND)
        self._undo = Script(self.redis, lua.UNDO)
        self._give_back = Script(self.redis, lua.GIVE_BACK)
        self._record_batch = Script(self.redis, lua.RECORD_BATCH)
        self._limits = Limits(self.redis, self.shards_fail_apart, self._call)
        self._keep_answer = Script(self.redis, lua.KEEP_ANSWER)
        self._pending_charge = Script(self.redis, lua.PENDING_CHARGE)
        self._held = Script(self.redis, lua.HELD)
        self._hold_total = Script(self.redis, lua.HOLD_TOTAL)
        self._lease = Script(self.redis, lua.LEASE)
        self._ledger_unacked_from = Script(self.redis, lua.LEDGER_UNACKED_FROM)
        self._spend_and_given_back = Script(self.redis, lua.SPEND_AND_GIVEN_BACK)
        self._ledger_position = Script(self.redis, lua.LEDGER_POSITION)
        self._raise_spend = Script(self.redis, lua.RAISE_SPEND)
        self._last_beats = LastBeats(self.redis)
        self._pending_stale = PendingStale(self.redis)
        self._missing_since: dict[str, float] = {}  # routers seen without a heartbeat, since when (monotonic)
        # The store's time (Unix ms) from which last beats count: that of the first read after the store was out of
        # this router's sight, or of a read its clock leapt ahead before (reconcile), and whether the next read sets it.
        self._beats_watched_from_ms = 0
        self._beats_watched_afresh = False
        self._beats_last_read: tuple[int, float] | None = None  # the last read's: the store's time (ms), when asked
        self._in_sight_at = float("-inf")  # when the store last answered this router's PING or heartbeat (monotonic)
        self._sight_lost_at: float | None = None  # when it answered last before a loss of sight, until a round reads it
        self._sight_back_at: float | None = None  # when it answered first after that loss, none while it lasts
        # The reconciler's charges not heard back (the store out of reach as it answered), by the record swept: each
        # sent again, as made (its charge id and record), until its reply arrives (settle_swept).
        self.unanswered: dict[str, tuple[str, dict[str, Any]]] = {}
        # Takes of counts not heard back, by their claim: each sent again by every reconcile round until heard (_take).
        self.unheard: dict[str, _Unheard] = {}
        self._last_sweep = float("-inf")  # when the last sweep read the heartbeats (after the pending charges)

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        async with self._calls, _reachable():
            yield

    @asynccontextmanager
    async def _apart(self, shard: int, away: set[int]) -> AsyncIterator[None]:
        """A part of the reconciler's round that concerns one shard: on a Redis Cluster (shards_fail_apart), the store
        out of reach or refusing the router for it (its master down) notes the shard `away`, its later parts skipped
        this round, and holds up none of the other shards' (their dead routers' holds settled all the same); on one
        server that is every shard's, so raised."""
        try:
            async with _reachable():
                yield
        except StoreUnavailable:
            if not self.shards_fail_apart:
                raise
            away.add(shard)

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
        now = money_now()
        rate_at = now if counted_at is None else counted_at
        keys = AccountKeys.of(account)
        tenant_spend, key_spend = keys.spend(hold.period)
        tenant_held, key_held = keys.held()
        pending = Pending.of(account, hold)
        args = [
            allowance.per_minute,
            *_limit_args(allowance),
            now,
            keys.hold_member(hold.pico, hold.request_id),
            int(hold.until) if hold.until else int(now) + HOLD_S,
            int(used_ttl_s(self.request_id_ttl_s, hold.until, now)),
            hold.pico,
            pending.field,
            pending.to_json(),
            limit_field("tenant", account.tenant),
            limit_field("key", account.key),
            "1" if hold.until else "0",  # a provider batch line (deferred)
            model,
            prices_value(hold.nonce, prices),
            keys.key_hex,
            self._trust_totals,
            count_id,
            allowance.tokens_per_minute,
            moves,
        ]
        names = [keys.rate(rate_at), keys.used(hold.request_id), tenant_spend, tenant_held, key_spend, key_held]
        names += [keys.limits, keys.pending, keys.charged(hold.request_id), keys.undone(hold.nonce), keys.batches]
        names += [keys.models, *keys.key_budget(hold.period), keys.prices, keys.hold_totals_epoch]
        names += [keys.rate_counted(rate_at), keys.tokens(rate_at), keys.key_moves]
        names += [*_next_spends(keys, hold.period), *_carried(keys, hold.period)]
        async with self._call():
            refused, remaining, spend_left, spend_budget, *duplicate = await self._admit(keys=names, args=args)
        charged, held = (_pico_or_none(value) for value in duplicate or ["", ""])
        return Verdict(_text(refused), int(remaining), int(spend_left), _text(spend_budget), charged, held)

    async def bind_key(self, key: str, tenant: str) -> KeyBinding:
        """The token is read first: a move that wrote it had rebound its key before, so the binding read after it is
        that move's or a later one's. One round trip on one server (a pipeline's commands run in order on its one
        connection); two on a Redis Cluster, whose pipeline sends each node its share at once, in no order."""
        moves_key, binding_key = AccountKeys.of(Account(tenant, "")).key_moves, key_tenant_key(key)
        async with self._call():
            if is_cluster_client(self.redis):
                moves = await self.redis.get(moves_key)
                bound = await self.redis.set(binding_key, tenant, nx=True, get=True)
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.get(moves_key)
                    pipe.set(binding_key, tenant, nx=True, get=True)
                    moves, bound = await pipe.execute()
        return KeyBinding(tenant if bound is None else _text(bound), NO_MOVES if moves is None else _text(moves))

    async def key_tenant(self, key: str) -> str | None:
        async with self._call():
            bound = await self.redis.get(key_tenant_key(key))
        return None if bound is None else _text(bound)

    async def move_key(
        self,
        key: str,
        tenant: str,
        replicas: int = 0,
        wait_s: float = 0.0,
        by: str = "",
        pending_stale_s: float | None = None,
    ) -> KeyMoved:
        """Bind an API key id to `tenant` whatever it was bound to (an operator's move, `by` whom: key_move.py), its
        spend and holds elsewhere carried into the tenant's shard (_carry), then give every shard a new key-moves token
        (keys.py, key_moves_key), after: an admission from then on, on any router, is refused 'moved' unless its key's
        binding was read after the move. Failing between the two, the move is made but routers may not meet it for
        key_tenants.BOUND_S. With `replicas`, then waits up to `wait_s` for that many replicas of each master written
        to to have the rebinding and the tokens (replicated.py, WAIT; not what was carried), and says how many did.
        A hold past its expiry is carried as far as the routers' ROUTER_PENDING_STALE_S (_carry): the longest of
        `pending_stale_s` (an operator's) and the values routers publish (pending_stale.py); with neither, a week.
        Then what the key carries is read and set again (_carry), and the move recorded (key_moves.py), last, so that
        its record failing (its own master away) delays no router's meeting it: KeyMoveUnrecorded then, saying what the
        move was. With `replicas`, the record too is waited for, as long again at most, and how many replicas had it
        said. The money Redis' clock unread first, nothing is written: MoneyClockUnread."""
        # What is carried is dated by the money's clock, as the routers date their budget periods: a move runs on an
        # operator's machine, whose own clock may be in another period than theirs, and that clock unread it is made
        # by no other (the key could spend its limit again in the routers' period).
        if not await self._follow_clock():
            raise MoneyClockUnread
        async with self._call():
            try:
                published = await self._pending_stale.longest()
            except ResponseError as unread:
                # Denied to the operator's user (an ACL of the version before), or hand-edited: a router's may be
                # longer than any given, so the longest it may be, a week.
                log.warning(
                    "the routers' ROUTER_PENDING_STALE_S unread: holds carried a week", extra={"error": str(unread)}
                )
                published, pending_stale_s = None, None
        given = [each for each in (pending_stale_s, published) if each is not None]
        stale_s = max(given) if given else HOLDS_LINGER_S
        token = secrets.token_hex(8)
        told: list[Replicated] = []
        # Carried before the rebinding too, so no admission under the new tenant meets the key with nothing carried; and
        # again once every shard has the token, when no admission under another tenant can add to what it carries.
        await self._carry(key, tenant, stale_s)
        if replicas:
            writes = [(key_tenant_key(key), tenant), *((key_moves_key(shard), token) for shard in range(SHARDS))]
            async with self._call():
                written, told = await replicated.set_replicated(self.url, self.redis, writes, replicas, wait_s)
            before = None if written[0] is None else _text(written[0])
        else:
            async with self._call():
                written_one = await self.redis.set(key_tenant_key(key), tenant, get=True)
            before = None if written_one is None else _text(written_one)
            async with self._call(), self.redis.pipeline(transaction=False) as pipe:
                for shard in range(SHARDS):
                    pipe.set(key_moves_key(shard), token)
                await pipe.execute()
        await self._carry(key, tenant, stale_s)
        record_told = None
        try:
            async with self._call():
                if replicas:
                    move = (key, before, tenant, by)
                    record_told = await key_moves.record_replicated(self.url, self.redis, move, replicas, wait_s)
                else:
                    await key_moves.record(self.redis, key, before, tenant, by)
        except (StoreUnavailable, ResponseError):  # out of reach, refusing, or its key hand-edited to another type
            raise KeyMoveUnrecorded(KeyMoved(before, told, None, stale_s, published)) from None
        return KeyMoved(before, told, record_told, stale_s, published)

    async def _carry(self, key: str, tenant: str, pending_stale_s: float) -> None:
        """Set what the key carries into `tenant`'s shard (keys.py, AccountKeys.carried) for the current period of every
        kind and the next: its spend there in every other shard, and all it holds in them now (a request in flight
        there may still be charged up to its hold). Set, not added to: a key moved back, or moved again, carries what
        the other shards have, never what it carried before (the spend of the shard it is moved to is its own there).
        A hold counts in a later period only if it may still be charged as that starts: held past its start or ending
        less than CHARGED_LATE_S before it (a batch line never collected is charged by the reconciler after its hold
        ends; ROUTER_PROVIDER_BATCH_HOLD_S holds one up to a week), or starting within `pending_stale_s` (the routers'
        ROUTER_PENDING_STALE_S, at most HOLDS_LINGER_S) and CHARGED_LATE_S of the move: any hold, held still or past its
        expiry, whose charge is lost (its router alive; store and outbox both failed) is charged by the reconciler's
        first sweep after it is that old. One that ends earlier is no spend of it, and a move early in a period would
        otherwise take it from the key's whole next period. What a move before carried into a later period that no hold
        reaches now is dropped."""
        now, here = money_now(), shard_of(tenant)
        elsewhere = [keys for keys in key_everywhere(key) if keys.shard != here]
        async with self._call():
            holds: list[tuple[int, float]] = []  # each open hold's pico and expiry
            for each in elsewhere:
                (members,) = await self._held(keys=[each.pending, each.held()[1]], args=[now])
                if members:
                    expiries = await self.redis.zmscore(each.held()[1], members)
                    # One gone meanwhile was settled: its charge is in the spend read below, counted twice, never less.
                    held_until = zip(members, expiries, strict=True)
                    holds += [(_held_sum([m]), math.inf if e is None else e) for m, e in held_until]
            # When each may be charged at the latest (one gone meanwhile, inf, was settled: counted in every period):
            # by its expiry and the reconciler's time to charge it after (CHARGED_LATE_S), a batch line's within the
            # longest hold, HOLDS_LINGER_S (ROUTER_PROVIDER_BATCH_HOLD_S, at most a week); and any, held still or past
            # its expiry, its charge lost (store and outbox both failed), by the reconciler's first sweep after it is
            # pending_stale_s old, its admission before now. A move before may have carried as far as `reach`.
            reach = now + HOLDS_LINGER_S + CHARGED_LATE_S
            stale_by = now + pending_stale_s + CHARGED_LATE_S
            ends = [(p, e if e == math.inf else max(min(e + CHARGED_LATE_S, reach), stale_by)) for p, e in holds]
            last = max([now, *(end for _, end in ends if end != math.inf)])
            periods = {period for kind in ("day", "month", "total") for period in _carried_periods(kind, now, last)}
            # A move before this one may have carried a hold into a later period than any hold now reaches (one charged
            # since): what it carried there is dropped, not counted against the key all that period.
            reached = (_carried_periods(kind, now, reach) for kind in ("day", "month", "total"))
            no_longer = {period for each in reached for period in each} - periods
            async with self.redis.pipeline(transaction=False) as pipe:
                for period in sorted(periods):
                    for each in elsewhere:
                        pipe.get(each.spend(period)[1])
                read = iter(await pipe.execute())
            spent = {period: sum(int(next(read) or 0) for _ in elsewhere) for period in sorted(periods)}
            destination = AccountKeys(here, "", key.encode().hex())
            async with self.redis.pipeline(transaction=False) as pipe:
                for period, pico in spent.items():
                    start = period_start(period)
                    held = sum(each for each, end in ends if end > start)
                    if pico + held:
                        # As long as the period's spend from its start (a later period's starts after the move).
                        kept = spend_ttl_s(period) + max(math.ceil(start - now), 0)
                        pipe.set(destination.carried(period), pico + held, ex=kept if spend_ttl_s(period) else None)
                    else:
                        pipe.delete(destination.carried(period))
                for period in sorted(no_longer):
                    pipe.delete(destination.carried(period))
                await pipe.execute()

    async def key_moves(self, count: int) -> list[KeyMoveRecord]:
        async with self._call():
            return await key_moves.latest(self.redis, count)

    async def count_request(self, account: Account, allowance: Allowance, count_id: str = "", moves: str = "") -> str:
        if not (allowance.per_minute or allowance.tokens_per_minute):
            return ""
        keys, now = AccountKeys.of(account), money_now()
        names = [keys.rate(now), keys.rate_counted(now), keys.tokens(now), keys.key_moves]
        args = [allowance.per_minute, count_id, allowance.tokens_per_minute, moves]
        async with self._call():
            return _text(await self._count_request(keys=names, args=args))

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
        only = ["1" if late else "0", charge_id, hold.nonce, ""]
        return await self._settle(
            account, hold, pico, record, only, landing_period(hold.period), release="1" if release else ""
        )

    async def settle_swept(self, swept: str) -> bool:
        """The reconciler's charge of a pending charge at its hold (its outcome never known): only while the store
        still holds this very record, as read by the sweep. True when it was charged. Counted in the metrics once,
        its reply lost too: the charge, named by its charge id, is kept unanswered and sent again, as made, by each
        reconcile until it is heard back, which the store knows as made before (lua.py, CHARGE); should this router
        die first, the store keeps the charge uncounted for the next reconciler (_count_left_uncounted)."""
        charge = Pending.from_json(swept)
        account, hold = charge.account_and_hold()
        made = self.unanswered.get(swept)
        if made is None:
            # The model its admission recorded beside it: should the charge be settled and the id admitted again
            # before the script runs, the record swept is gone and nothing is charged, so a model read here is never
            # another's.
            async with self._call():
                model = await self.redis.hget(AccountKeys.of(account).models, charge.field)
            made = secrets.token_hex(8), reconciled_record(replace(charge, model=_text(model) if model else None))
        charge_id, record = made
        # What it charged, for its router's charge or undo kept in an outbox to give back (give_back): only an
        # admission with a nonce can be told from another of its request id.
        landed = landing_period(hold.period)
        reconciled = Reconciled(hold.nonce, hold.pico, landed, record["model"]).value() if hold.nonce else ""
        self.unanswered[swept] = made
        try:
            args = ["1", charge_id, hold.nonce, swept]
            settled = await self._settle(account, hold, hold.pico, record, args, landed, reconciled)
            # Kept uncounted by the store, whether it landed now or, sent again, before: counted by whichever of this
            # router and the next reconciler takes it (lua.py, COUNT_ONCE); a line's, by a collect of it maybe. Taken
            # under its charge id as claim, which no other taker makes: a take whose reply was lost, and its resend's
            # too (the store out of reach), is sent again with the charge at the next round, and gets what it took.
            keys = AccountKeys.of(account)
            take = _Take(keys, hold.request_id, charge_id, f"{charge_id} {charge.field}")
            (counted,) = (await self._take(keys.shard, [take], claim=charge_id)).records
        except StoreUnavailable:
            raise  # unanswered: sent again
        except Exception:
            del self.unanswered[swept]  # answered: its own keys refused it (WRONGTYPE)
            raise
        del self.unanswered[swept]
        if counted is not None:
            count_charge(record)
        return settled

    async def _settle(
        self,
        account: Account,
        hold: Hold,
        pico: int,
        record: dict,
        only: list[str],
        landed: str,
        reconciled: str = "",
        release: str = "",
    ) -> bool:
        """The charge, into the spend of the period it lands in (`landed`: model.py, landing_period), which its ledger
        record names, so that the ledger's sums per period equal the spend counters."""
        keys = AccountKeys.of(account)
        record = {**record, "period": landed}
        names = [keys.charged(hold.request_id), *keys.spend(landed), keys.ledger, *keys.held(), keys.pending]
        names += [keys.batches, keys.models, keys.prices, keys.used(hold.request_id), keys.hold_totals_epoch]
        names += [keys.tokens(money_now()), keys.reconciled(hold.request_id)]  # tokens: the minute it is charged in
        names += [keys.uncounted(hold.request_id), keys.uncounted_reconciled]
        if hold.marked_until:  # on record for a restore's repair to mark it as long (ledger_charges.py)
            record = {**record, "marked_until": hold.marked_until}
        args: list[int | str] = [
            pico,
            self.request_id_ttl_s,
            ledger_entry.compact(record),
            spend_ttl_s(landed),
            keys.hold_member(hold.pico, hold.request_id),
            pending_field(account, hold.request_id),
            *only,
            charged_tokens(record),
            reconciled,
            math.ceil(hold.marked_until * 1000),  # the store's TIME judges it (lua.py, CHARGE): 0 for not known
            release,
        ]
        async with self._call():
            return bool(await self._charge(keys=names, args=args))

    async def count_once(self, account: Account, request_id: str, charge_id: str = "") -> dict[str, Any] | None:
        (record,) = await self.count_once_each([UncountedCharge(account, request_id, charge_id)])
        return record

    async def count_once_each(self, charges: Sequence[UncountedCharge]) -> list[dict[str, Any] | None]:
        """Each take by a charge id drops the charge's entry in its shard's list (CHARGE lists it): its maker took it,
        and no sweep need take it again. Cancelled part way, the calls answered before never reach the caller: kept
        with the unheard ones, sent again under their claims by the next reconcile round (_send_unheard), which gets
        the same records and counts them."""
        by_shard: dict[int, list[tuple[int, _Take]]] = {}
        for index, charge in enumerate(charges):
            keys = AccountKeys.of(charge.account)
            listed = (
                f"{charge.charge_id} {pending_field(charge.account, charge.request_id)}" if charge.charge_id else ""
            )
            take = _Take(keys, charge.request_id, charge.charge_id, listed)
            by_shard.setdefault(keys.shard, []).append((index, take))
        records: list[dict[str, Any] | None] = [None] * len(charges)
        calls: list[_Unheard] = []  # answered
        for shard, takes in by_shard.items():
            for start in range(0, len(takes), TAKE_PAGE):
                page = takes[start : start + TAKE_PAGE]
                try:
                    taken = await self._take(shard, [take for _, take in page])
                except StoreUnavailable as failed:
                    answered = [record for record in records if record is not None]
                    if answered:
                        raise PartlyTaken(answered) from failed
                    raise
                except asyncio.CancelledError:
                    self.unheard.update((call.claim, call) for call in calls)
                    raise
                calls.append(_Unheard(shard, [take for _, take in page], time.monotonic(), taken.claim))
                for (index, _), record in zip(page, taken.records, strict=True):
                    records[index] = record
        return records

    async def _take(self, shard: int, takes: list[_Take], claim: str = "") -> _Taken:
        """The takes of charges of `shard` (lua.py, COUNT_ONCE), in one script, each dropping its `listed` entry from
        the shard's list (keys.py, uncounted_reconciled). Taken under `claim`, the caller's to send again should it
        go unheard (settle_swept), else under one of this call's own: a Redis Cluster client resends the take whose
        reply it lost, and on one server, where redis-py does not, it is sent again here, once; either way the take
        sent again gets the records it took, and each charge is counted here rather than by no router. That resend
        unheard too (the store out of reach), or the call cancelled as it waited for its reply, it is kept under its
        claim and sent again by each reconcile round until heard (_send_unheard), which counts what it took. A take
        whose own keys hold another type (hand-edited) takes nothing: its entry stays listed, behind the others
        (lua.py, COUNT_ONCE), taken by a sweep once mended; logged once a call, however many."""
        own = claim or secrets.token_hex(8)
        try:
            answers = await self._send_take(shard, takes, own)
        except (StoreUnavailable, asyncio.CancelledError):  # cancelled: its caller left; the take may have run
            if not claim:
                self.unheard[own] = _Unheard(shard, takes, time.monotonic(), own)
            raise
        return _answered(takes, answers, own)

    async def _send_unheard(self, away: set[int]) -> None:
        """The takes whose records never reached their caller (_take, count_once_each), sent again under their claims:
        each gets the records it took (or takes them now, if it never ran, unless another taker did meanwhile), counted
        here. Those older than the store keeps what a take took (TAKEN_KEPT_S; the store out of reach all that time)
        are given up first (sent again, they would get nothing), logged and counted as failures of the reconciler unless
        another router's reconciler adopted them meanwhile (_give_up_note). Those of a shard `away` wait for a later
        round (_apart)."""
        for claim, unheard in list(self.unheard.items()):
            if time.monotonic() - unheard.sent > TAKEN_KEPT_S and unheard.shard not in away:
                async with self._apart(unheard.shard, away):
                    if await self._give_up_note(unheard.shard, claim):
                        metrics.RECONCILE_FAILURES.inc(len(unheard.takes))  # in the ledger, never in the usage metrics
                        log.error(
                            "counts taken but not heard back before the store let them go: counted by no router",
                            extra={"charges": len(unheard.takes), "request_id": unheard.takes[0].request_id},
                        )
                    del self.unheard[claim]
        for claim, unheard in list(self.unheard.items()):
            if time.monotonic() - unheard.sent > TAKEN_KEPT_S:
                continue  # its shard away: given up once it is back
            if unheard.shard in away:
                continue
            async with self._apart(unheard.shard, away):
                answers = await self._send_take(unheard.shard, unheard.takes, claim)
                del self.unheard[claim]  # heard: kept otherwise (out of reach, or cancelled as it waited)
                for record in _answered(unheard.takes, answers, claim).records:
                    if record is not None:
                        count_charge(record)

    async def _give_up_note(self, shard: int, claim: str) -> bool:
        """A take given up (_send_unheard): its claim's note dropped (keys.py, taken_claims_key), so none adopts it;
        whether its charges went uncounted. Not when its note was gone: another router's reconciler adopted it, and
        counted them, or gave them up itself (_adopt); nor when the take never ran (no note either), its charges still
        listed for the sweep. (Nor, wrongly, when its acknowledgement ran and both its reply and the resend's were lost:
        rare, and told apart from an adoption by nothing the store keeps.) A note kept under another type (hand-edited)
        tells nothing: taken as uncounted."""
        key = taken_claims_key(shard)
        async with self._calls:
            if await self.redis.type(key) not in (b"hash", b"none"):
                return True
            return bool(await self.redis.hdel(key, claim))

    async def _send_take(self, shard: int, takes: list[_Take], claim: str) -> Any:
        """COUNT_ONCE's answers, then, when it answered records, its acknowledgement (lua.py, ACK_TAKE), which drops the
        claim's note in the store: records the reconciler adopted meanwhile (_adopt_claims) are answered as none, its to
        count. Either call unheard raises, as the take's reply lost: sent again under its claim, it gets the same."""
        names = [uncounted_reconciled_key(shard), taken_claims_key(shard)]
        args = [claim]
        for take in takes:
            names += [take.keys.uncounted(take.request_id), take.keys.counted(take.request_id)]
            args += [take.charge_id, take.listed]
        answers = await self._once_resent(self._count_once, names, args)
        answered = [take.keys.counted(take.request_id) for take, r in zip(takes, answers[::2], strict=True) if r]
        if answered and not await self._once_resent(self._ack_take, [taken_claims_key(shard), *answered], [claim]):
            answers = [None if i % 2 == 0 else why for i, why in enumerate(answers)]  # adopted: counted there
        return answers

    async def _once_resent(self, script: Any, names: list[str], args: list[Any]) -> Any:
        """A script whose reply, lost, is the same sent again: on one server sent again here, once; a Redis Cluster
        client has resent it already."""
        try:
            async with self._call():
                return await script(keys=names, args=args)
        except StoreUnavailable:
            if self.shards_fail_apart:
                raise
            async with self._call():
                return await script(keys=names, args=args)

    async def _adopt_claims(self, away: set[int]) -> None:
        """The takes whose taker never acknowledged their reply within CLAIM_ADOPTED_AFTER_S (keys.py,
        taken_claims_key; its router dead, or cut off from the store), taken over under a claim of this router's
        (lua.py, ADOPT_CLAIM) and sent again with the unheard ones (_send_unheard): each charge counted once, here or
        by its taker should it acknowledge first. A note whose counted keys are all gone (past TAKEN_KEPT_S) is given up
        as _send_unheard gives up its own, a failure of the reconciler; one unreadable (hand-edited) is dropped, logged.
        Those of a shard `away` wait for a later round (_apart); this router's own unheard ones are its to send."""
        due_ms = (money_now() - CLAIM_ADOPTED_AFTER_S) * 1000
        for shard in range(SHARDS):
            if shard in away:
                continue
            key = taken_claims_key(shard)
            async with self._apart(shard, away):
                async with self._calls:
                    notes = await self.redis.hgetall(key) if await self.redis.type(key) == b"hash" else {}
                for claim, note in notes.items():
                    if _text(claim) in self.unheard:
                        continue
                    noted = _noted(shard, note)
                    if noted is None:
                        log.error(
                            "taken claim's note unreadable: dropped", extra={"key": key, "note": repr(note)[:500]}
                        )
                        async with self._calls:
                            await self.redis.hdel(key, claim)
                    elif noted[0] < due_ms:
                        await self._adopt(shard, _text(claim), _text(note), noted[1])

    async def _adopt(self, shard: int, claim: str, note: str, takes: list[_Take]) -> None:
        own = secrets.token_hex(8)
        # Kept unheard first: should the adoption's reply be lost, it was made or not, and sent again under its claim
        # the take gets what it moved, or nothing.
        self.unheard[own] = _Unheard(shard, takes, time.monotonic(), own)
        names = [taken_claims_key(shard), *(take.keys.counted(take.request_id) for take in takes)]
        moved = await self._once_resent(self._adopt_claim, names, [claim, note, own])
        if int(moved) <= 0:
            del self.unheard[own]
        if int(moved) == 0:
            metrics.RECONCILE_FAILURES.inc(len(takes))  # in the ledger, never in the usage metrics
            log.error(
                "counts taken but not heard back before the store let them go: counted by no router",
                extra={"charges": len(takes), "claim": claim},
            )
        elif int(moved) > 0:
            log.warning(
                "counts whose taker never heard them back adopted", extra={"charges": int(moved), "claim": claim}
            )

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int, moves: str = "") -> str:
        keys = AccountKeys.of(account)
        landing = landing_period(hold.period)  # the period the grown hold's charge lands in, as things stand
        tenant_spend, key_spend = keys.spend(landing)
        tenant_held, key_held = keys.held()
        grown = replace(hold, pico=pico)
        pending = Pending.of(account, grown)
        args = [
            *_limit_args(allowance),
            keys.hold_member(hold.pico, hold.request_id),
            keys.hold_member(pico, hold.request_id),
            pico,
            int(money_now()) + HOLD_S,
            pending.field,
            pending.to_json(),
            limit_field("tenant", account.tenant),
            limit_field("key", account.key),
            self._trust_totals,
            moves,
        ]
        names = [tenant_spend, tenant_held, key_spend, key_held, keys.limits, keys.pending]
        names += [*keys.key_budget(landing), keys.hold_totals_epoch, *_next_spends(keys, landing)]
        names += [*_carried(keys, landing), keys.key_moves]
        async with self._call():
            return _text(await self._extend(keys=names, args=args) or "")

    async def undo(self, account: Account, hold: Hold) -> bool:
        assert hold.nonce, "only an admission with a nonce can be undone"
        keys = AccountKeys.of(account)
        names = [*keys.held(), keys.pending, keys.used(hold.request_id), keys.undone(hold.nonce), keys.batches]
        names += [keys.models, keys.prices, keys.hold_totals_epoch]
        member = keys.hold_member(hold.pico, hold.request_id)
        args = [member, pending_field(account, hold.request_id), hold.nonce, self.request_id_ttl_s]
        async with self._call():
            return bool(await self._undo(keys=names, args=args))

    async def give_back(self, account: Account, hold: Hold, pico: int | None, release: bool = False) -> int:
        if not hold.nonce:
            return 0
        keys = AccountKeys.of(account)
        async with self._call():
            value = await self.redis.get(keys.reconciled(hold.request_id))
        reconciled = Reconciled.parse(_text(value)) if value is not None else None
        if reconciled is None or reconciled.nonce != hold.nonce:
            return 0
        given = reconciled.pico - (pico or 0)
        if given <= 0:  # a charge of the hold or more: the reconciler charged what the router would have
            return 0
        undone = pico is None  # nothing served: the id freed, as an undo frees it (lua.py, GIVE_BACK)
        record = given_back_record(account, hold.request_id, reconciled, given, undone)
        names = [keys.reconciled(hold.request_id), *keys.spend(reconciled.period), keys.ledger]
        names += [keys.charged(hold.request_id), keys.used(hold.request_id), keys.pending]
        field = pending_field(account, hold.request_id)
        args = [reconciled.value(), given, ledger_entry.compact(record), "1" if undone else "0", field]
        args.append("1" if release else "")
        async with self._call():
            done = int(await self._give_back(keys=names, args=args))
        if done < 0:
            log.error("reconciled charge not given back: its spend counters hold less", extra=record)
        if done != 1:
            return 0
        metrics.count_given_back(record, given)  # counted once, where given back, as the reconciler's charge was
        return given

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        keys, field = AccountKeys.of(account), pending_field(account, request_id)
        async with self._call():
            names = [keys.pending, keys.batches, keys.models, keys.prices]
            value, batch, model, prices = await self._pending_charge(keys=names, args=[field])
        if value is None:
            return None
        pending = Pending.from_json(value)
        return replace(
            pending,
            provider_batch=None if batch is None else _text(batch),
            model=_text(model) if model else None,
            prices=admitted_prices(_text(prices) if prices else None, pending.nonce),
        )

    async def record_provider_batch(self, account: Account, hold: Hold, batch_id: str) -> bool:
        keys = AccountKeys.of(account)
        args = [pending_field(account, hold.request_id), hold.nonce, batch_id]
        async with self._call():
            return bool(await self._record_batch(keys=[keys.pending, keys.batches], args=args))

    async def charged_batch(self, account: Account, request_id: str) -> str | None:
        marker = await self._charged_marker(account, request_id)
        return None if marker is None else marker_batch(marker)

    async def charged_pico(self, account: Account, request_id: str) -> int | None:
        return marker_charged_pico(await self._charged_marker(account, request_id))

    async def keep_answer(
        self, account: Account, request_id: str, answer: bytes, ttl_s: float, replace: bool = False
    ) -> bool:
        async with self._call():
            key, ttl_ms = AccountKeys.of(account).answer(request_id), max(1, int(ttl_s * 1000))
            args = [answer, kept_batch(answer), ttl_ms, "1" if replace else ""]
            return bool(await self._keep_answer(keys=[key], args=args))

    async def kept_answer(self, account: Account, request_id: str) -> bytes | None:
        async with self._call():
            kept = await self.redis.get(AccountKeys.of(account).answer(request_id))
        return None if kept is None else bytes(kept)

    async def _charged_marker(self, account: Account, request_id: str) -> str | None:
        """The request id's charged marker, when the account's key used the id."""
        keys = AccountKeys.of(account)
        async with self._call(), self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.charged(request_id))
            pipe.get(keys.used(request_id))
            marker, user = await pipe.execute()
        # The used id names the key that used it ('1' from a router of the version before names none). It outlives the
        # charged marker (model.py, used_ttl_s): none names no key, and no key is told of the line.
        if marker is None or user is None or _text(user) not in ("1", keys.key_hex):
            return None
        return _text(marker)

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        keys = AccountKeys.of(account)
        key_keys = [keys] if account.tenant else key_everywhere(account.key)
        async with self._call(), self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.spend(period)[0])
            for each in key_keys:
                pipe.get(each.key_budget(period)[0])
            tenant, *key = await pipe.execute()
        return int(tenant or 0), sum(int(v or 0) for v in key)

    async def carried(self, account: Account, period: str) -> int:
        keys = AccountKeys.of(account)
        if keys.keyless or not account.tenant:  # no tenant: no shard the key was moved to
            return 0
        async with self._call():
            return int(await self.redis.get(keys.carried(period)) or 0)

    async def held_pico(self, account: Account) -> tuple[int, int]:
        """As admission counts them (lua.HELD): a hold past its expiry still counts while its charge is open."""
        now = money_now()
        keys = AccountKeys.of(account)
        async with self._call():
            if account.tenant:
                held = [keys.held()[0], keys.key_budget("")[1]]  # as admission checks them
                tenant, key = await self._held(keys=[keys.pending, *held], args=[now])
                return _held_sum(tenant), _held_sum(key)
            key_held = 0  # an operator's view of one key: its holds in every shard, one script a shard
            for each in key_everywhere(account.key):
                (members,) = await self._held(keys=[each.pending, each.key_budget("")[1]], args=[now])
                key_held += _held_sum(members)
            (tenant,) = await self._held(keys=[keys.pending, keys.held()[0]], args=[now])
        return _held_sum(tenant), key_held

    async def hold_totals(self) -> AsyncIterator[HoldsTotal]:
        """Every holds set's running total beside a scan of its members, each read at one instant (every master's
        sets, on a cluster)."""
        async with self._call():
            seen = set()
            async for name in self.redis.scan_iter(match="*:held", count=1000, _type="zset"):
                holds = _text(name)
                if holds in seen:  # a cluster's scan may meet a key twice (a slot migrating)
                    continue
                seen.add(holds)
                epoch_key = hold_totals_epoch_key(shard_of_key(holds))
                pico, count, epoch, current, scanned, members = (
                    _text(v) for v in await self._hold_total(keys=[holds, epoch_key])
                )
                trusted = pico != "" and epoch == current and int(count) == int(members)
                total = (int(pico), int(count)) if trusted else None
                yield HoldsTotal(holds, total, (int(scanned), int(members)))

    async def bump_hold_totals_epoch(self) -> None:
        """Every shard's hold-totals epoch, one up: each running total is rebuilt from a scan when next read."""
        async with self._call(), self.redis.pipeline(transaction=False) as pipe:
            for shard in range(SHARDS):
                pipe.incr(hold_totals_epoch_key(shard))
            await pipe.execute()

    async def choose_hold_totals(self, router: str, interval_s: float) -> bool:
        if self._hold_totals != "auto":
            return self._trust_totals == "1"
        try:
            older = await self._older_routers(router, interval_s)
        except StoreUnavailable:  # the heartbeats unread (on a cluster, one master of any down): any router may live
            self._trust_totals = "0"
            raise
        if older and self._trust_totals == "1":
            log.warning("a router keeping no hold totals is alive: admission counts holds by a scan")
        elif not older and self._trust_totals == "0":
            await self.bump_hold_totals_epoch()  # before trusting: totals that router may have left wrong
            log.info("every live router keeps hold totals: admission counts holds by them")
        self._trust_totals = "0" if older else "1"
        return not older

    async def _older_routers(self, router: str, interval_s: float) -> int:
        """How many live routers' heartbeats say they keep no hold totals. On one Redis server the heartbeats cannot
        be listed apart from the rest of the keyspace (a day of request-id markers; heartbeats.py), so only the router
        that takes this round's look scans; the others read what it found, or look themselves when nothing found is
        left (its look not done yet, or it failed). What they read is at most two looks' spacing old."""
        round_ms = max(int(interval_s * 1000), 1)
        async with self._call():
            if not await self.redis.set(HOLD_TOTALS_LOOK, router, nx=True, px=round_ms):
                found = await self.redis.get(OLDER_ROUTERS)
                if found is not None:
                    return int(found)
            started = time.monotonic()
            older = await heartbeats.older_routers(self.redis)
            # The next look waits LOOK_COST_SHARE times this one's length: on a keyspace of tens of millions of
            # request markers, looks spaced so keep the money Redis's time spent on them within a share (a cluster's
            # look lists one slot, a few keys, so its looks are spaced by the round, but for a scan while that slot
            # migrates).
            lease_ms = max(round_ms, int((time.monotonic() - started) * 1000 * LOOK_COST_SHARE))
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(HOLD_TOTALS_LOOK, router, px=lease_ms)
                pipe.set(OLDER_ROUTERS, older, px=lease_ms + round_ms)
                await pipe.execute()
        return older

    async def older_routers_alive(self) -> int:
        """How many live routers' heartbeats say they keep no hold totals, by a look now (heartbeats.py)."""
        async with self._call():
            return await heartbeats.older_routers(self.redis)

    async def heartbeat(self, router: str, ttl_s: float, pending_stale_s: float | None = None) -> None:
        try:
            async with self._call():
                await self._last_beats.beat(router, ttl_s)
                if pending_stale_s is not None:
                    await self._pending_stale.publish(pending_stale_s, ttl_s)
        except StoreUnavailable:
            self._lost_sight()
            raise
        self._in_sight()

    async def raise_spend(self, counter: str, read: CounterRead, pico: int, period: str) -> Raised:
        """A spend counter of `period` raised by `pico`, and kept as long as a charge keeps it (money_check.py,
        ledger-spend --repair: charges the store forgot), only while no other repair raised it since it was `read`
        (lua.py, RAISE_SPEND), and unless it moved since with no entry added to its shard's ledger. Charges and
        give-backs landing since stop no repair: the loss read is still missing beside them."""
        shard = shard_of_key(counter)
        async with self._call():
            args = [read.repairs, pico, spend_ttl_s(period) or 0, read.pico, read.ledger_last]
            keys = [counter, repairs_key(counter), ledger_key(shard)]
            return _RAISED[int(await self._raise_spend(keys=keys, args=args))]

    async def ledger_unacked_from(self, group: str) -> list[str]:
        """Each shard's ledger stream's first entry the SQL sink's consumer group `group` has not acknowledged, as an
        XRANGE start (lua.py, LEDGER_UNACKED_FROM): every entry before it is in the SQL ledger by now. One script a
        shard, each on its own slot."""
        async with self._call():
            return [
                _text(await self._ledger_unacked_from(keys=[ledger_key(shard)], args=[group]))
                for shard in range(SHARDS)
            ]

    async def ledger_positions(self) -> list[StreamPosition]:
        """Each shard's ledger stream's position (StreamPosition). One script a shard, each on its own slot."""
        async with self._call():
            return [_position(await self._ledger_position(keys=[ledger_key(shard)])) for shard in range(SHARDS)]

    async def spend_and_given_back(
        self, shard: int, counters: list[str], start: str, page: int = LEDGER_PAGE
    ) -> tuple[SpendRead, list[tuple[str, dict[str, Any] | None]], StreamPosition]:
        """What each spend counter named (all of `shard`) holds (with its repairs count), the give-backs on the shard's
        ledger stream from XRANGE `start` as (entry id, record; None for one that names itself one and is no JSON
        object: no router wrote it), `page` entries a script (spend_and_given_back_page), and the stream's position
        when the counters were read. A give-back read by an earlier page lowered the counters before the last page's
        script reads them (its entry and its decrement are one script's), and none lands between that last page and
        the counters: they are read as at one instant."""
        found: list[tuple[str, dict[str, Any] | None]] = []
        while True:
            counted, given, start, position = await self.spend_and_given_back_page(shard, counters, start, page)
            found += given
            if counted is not None and position is not None:
                return counted, found, position

    async def spend_and_given_back_page(
        self, shard: int, counters: list[str], start: str, page: int
    ) -> tuple[SpendRead | None, list[tuple[str, dict[str, Any] | None]], str, StreamPosition | None]:
        """The give-backs among `page` entries of the shard's ledger stream from XRANGE `start`, and where the next
        page starts; at the stream's end, '' for it, and the counters and the stream's position too, read in the same
        script (lua.py, SPEND_AND_GIVEN_BACK), each None before it."""
        async with self._call():
            values, given, after, *position = await self._spend_and_given_back(
                keys=[ledger_key(shard), *counters, *map(repairs_key, counters)], args=[start, max(page, 1)]
            )
        records = [(_text(given[i]), _object_or_none(given[i + 1])) for i in range(0, len(given), 2)]
        found = [(entry, record) for entry, record in records if record is None or record.get("outcome") == GIVEN_BACK]
        if _text(after):
            return None, found, _text(after), None
        ended, repairs = position
        counted = SpendRead(
            {counter: int(value) for counter, value in zip(counters, values, strict=True)},
            {counter: int(value) for counter, value in zip(counters, repairs, strict=True)},
        )
        return counted, found, "", _position(ended)

    async def limit_overrides(self) -> dict[tuple[str, str], int]:
        async with self._call(), self.redis.pipeline(transaction=False) as pipe:
            for shard in range(SHARDS):
                pipe.hgetall(limits_key(shard))
            found = {}
            for fields in await pipe.execute():
                for field, value in fields.items():
                    scope, _, name = _text(field).partition(":")
                    found[(scope, name)] = int(value)
        return found

    async def set_limit(self, scope: str, name: str, pico: int | None) -> int | None:
        return await self._limits.set(scope, name, pico)

    async def finish_limit_changes(self) -> int:
        return await self._limits.finish_unconfirmed()

    async def reconcile(self, router: str, lease_s: float, stale_s: float) -> int:
        # A router whose last beat is known is judged by it, by the store's clock (last_beats.py); the others (of a
        # version before) by this reconciler's sightings. Since when a router was seen missing is kept only by a round
        # that read the heartbeats, or held the lease that no other router held since (a router of a version before
        # too: lua.LEASE), the store not out of sight for long meanwhile (_lost_sight): any other (the lease out of
        # reach, another's or taken from another, its key gone, a failure part way) starts the records afresh. A
        # router whose beat lapsed while the master flapped gets its whole grace again, not its requests charged at
        # their holds at once.
        missing, self._missing_since = self._missing_since, {}
        lost_at, self._sight_lost_at = self._sight_lost_at, None
        back_at, self._sight_back_at = self._sight_back_at, None
        # The loss's own length, not its length up to this round: the upkeep beats while a round runs long (an outbox
        # replay), and one beat failing far into it forgot all, as though the store had been away the whole round.
        lost_until = time.monotonic() if back_at is None else back_at
        if lost_at is not None and lost_until - lost_at >= lease_s * SIGHT_LOST_FORGETS:
            # Every router may have been cut off as this one was, unable to beat: their last beats lapsed in the
            # outage, their requests running on (their charges in their outboxes), they get their grace from the
            # first read after it, by the store's clock, as those judged by sightings do.
            missing, self._beats_watched_afresh = {}, True
        async with _reachable():
            keys_away = await self._keys_away([*map(pending_key, range(SHARDS)), LEASE])
            away = {shard for shard in range(SHARDS) if pending_key(shard) in keys_away}  # passed over (_apart)
            resent = await self._send_unanswered(away)
            await self._send_unheard(away)
            if LEASE in keys_away:
                # Its call would wait out the cluster client's retries (about 4 s) to fail the round all the same.
                metrics.RECONCILE_UNLEASED.inc()
                log.error(
                    "the reconciler's lease is out of reach (the master of the {llmrouter} slot did not answer): no "
                    "pending charge is swept this round, nor uncounted charges counted",
                    extra={"key": LEASE},
                )
                return resent
            async with self._calls:  # the reconciler's calls count against the pool as requests' do
                lease_ms = int(lease_s * 1000)
                outlives_ms = max(lease_ms * LEASE_KEY_OUTLIVES, LEASE_KEY_OUTLIVES_MIN_MS)
                now_ms = int(money_now() * 1000)
                leased = await self._lease(keys=[LEASE, LEASE_HOLDER], args=[router, lease_ms, outlives_ms, now_ms])
            if not leased:
                metrics.RECONCILE_BACKLOG.set(0)  # the lease holder's is the release's
                return resent
            if leased != LEASE_KEPT:
                missing = {}
            now = time.monotonic()
            if now - self._last_sweep < lease_s:
                self._missing_since = missing
                return resent
            self._last_sweep = now
            records = [record async for record in self._pending(away)]
            swept = [(record, charge) for record in records if (charge := _readable(record)) is not None]
            others = sorted({p.router for _, p in swept} - {router})
            asked = time.monotonic()
            beats = await self._beats_read(others)
            # Dated from the heartbeats' read, not the sweep's clock reading before the pending charges were read: a
            # reconciler paused in between (SIGSTOP, a host frozen, a long read) took a router for dead at its next
            # sweep, a moment after it first saw it missing. Dead is judged by `now`, before this read: never early.
            seen = time.monotonic()
            self._watch_beats(beats, asked, seen, lease_s)
            self._missing_since = {r: missing.get(r, seen) for r in others if not beats.alive[r]}
            # The next sweep a TTL after this read, not after `now`: one a long read brought nearer found a router
            # first seen missing here not yet a TTL missing, and charged it a sweep later, two TTLs after this read.
            self._last_sweep = seen
            watched_from_ms = self._beats_watched_from_ms
            dead = {
                r
                for r, since in self._missing_since.items()
                if _gone_for_good(beats, r, now - since, lease_s, watched_from_ms)
            }
            stale_before = money_now() - stale_s
            settled = resent
            left = len(records) - len(swept)  # unreadable: no router will ever settle them
            for record, charge in swept:
                # A provider batch line's is its collector's to settle until its hold lapses.
                due = charge.until < money_now() if charge.until else charge.router in dead or charge.ts < stale_before
                shard = AccountKeys.of(Account(charge.tenant, charge.key)).shard
                if due and shard not in away:
                    landed: bool | None = None
                    async with self._apart(shard, away):
                        landed = await self._settle_logged(record)  # False: charged or undone since the sweep read it
                    settled += bool(landed)
                    left += landed is None
                elif due:
                    left += 1
                elif not charge.until and charge.router in self._missing_since:
                    left += 1  # its router gone, not yet past the grace before it is taken for dead
            metrics.RECONCILE_BACKLOG.set(left)
            await self._count_left_uncounted(away)
            await self._adopt_claims(away)
            await self._send_unheard(away)  # those adopted now among them
            if away:
                log.error(
                    "shards out of reach this reconcile round: their pending charges and counts wait for the next",
                    extra={"shards": sorted(away)},
                )
            return settled

    async def shards_away(self) -> set[int]:
        """On a Redis Cluster, the shards whose master does not answer a PING within master_answers_s, every master
        asked once, all at once, as the reconciler's round or the outbox's replay begins: it passes over them (_apart)
        without a call of theirs, each of which would wait out the cluster client's retries (ten, with backoff: about
        4 s a call, and a round made one a shard, SHARDS / masters of them). A master that goes away later costs each
        of its shards one such call. Their work stays for a later round."""
        keys_away = await self._keys_away([pending_key(shard) for shard in range(SHARDS)])
        return {shard for shard in range(SHARDS) if pending_key(shard) in keys_away}

    async def _keys_away(self, keys: list[str]) -> set[str]:
        """On a Redis Cluster, those of `keys` whose master does not answer a PING within master_answers_s, every
        master asked once, all at once (shards_away); none on one server."""
        if not self.shards_fail_apart:
            return set()
        async with _reachable():
            await self.redis.initialize()
        away: set[str] = set()
        masters: dict[str, tuple[Any, list[str]]] = {}  # by name: the node, its keys
        for key in keys:
            try:
                node = self.redis.get_node_from_key(key)
            except SlotNotCoveredError:  # no master at all, as the client last learnt the cluster's layout
                away.add(key)
                continue
            masters.setdefault(node.name, (node, []))[1].append(key)
        answers = await asyncio.gather(*(self._answers(node) for node, _ in masters.values()))
        for (_, served), answered in zip(masters.values(), answers, strict=True):
            if not answered:
                away.update(served)
        return away

    async def _answers(self, node: Any) -> bool:
        """Whether a master answers a PING in time: asked once, its node named, which the cluster client never
        retries. One that does not makes the client learn the cluster's layout again before a later call: the PING
        timed out here is no failure to the client, and a master failed over from behind an address that never
        answers (a host cut off) stayed in its map, its shards passed over every round, for good."""
        try:
            async with self._calls, asyncio.timeout(self.master_answers_s):
                await self.redis.execute_command("PING", target_nodes=node)
        except TimeoutError:
            self.redis.node_unanswered(node)
            return False
        except Exception as exc:
            if store_failure(exc) is None:
                raise
            return False
        finally:
            raise_if_cancelled()
        return True

    async def _send_unanswered(self, away: set[int]) -> int:
        """This reconciler's charges whose reply was lost, sent again as made (settle_swept), the lease held or not:
        another router may hold it by now, and each charge lands once whoever sends it. How many were charged now;
        those of a shard `away` wait for a later round (_apart)."""
        landed = 0
        for swept in list(self.unanswered):
            charge = Pending.from_json(swept)
            shard = AccountKeys.of(Account(charge.tenant, charge.key)).shard
            if shard in away:
                continue
            async with self._apart(shard, away):
                landed += bool(await self._settle_logged(swept))
        return landed

    async def _count_left_uncounted(self, away: set[int]) -> None:
        """The charges left uncounted (keys.py, uncounted_reconciled: the reconciler's and provider batch lines'),
        counted here: their makers died before they took them, or take them later, or are taking them now; each is
        counted by one router (lua.py, COUNT_ONCE). At most a page of each shard's a sweep, the oldest first, TAKE_PAGE
        a call. A shard's list that cannot be read or taken (a key of another type: hand-edited) is logged and counted
        as a failure of the reconciler, and holds up none of the other shards'; so is each entry whose own keys hold
        another type, which moves behind the others and holds up none listed after it (lua.py, COUNT_ONCE)."""
        for shard in range(SHARDS):
            if shard in away:
                continue
            try:
                async with self._apart(shard, away):
                    await self._count_shard_left(shard)
            except StoreUnavailable:
                raise
            except Exception as exc:
                if store_failure(exc) is not None:  # the store's own state: every shard's (_reachable)
                    raise
                metrics.RECONCILE_FAILURES.inc()
                log.error(
                    "uncounted charges of a shard not counted; counted again next sweep",
                    extra={"key": uncounted_reconciled_key(shard), "error": str(exc)[:200]},
                )

    async def _count_shard_left(self, shard: int) -> None:
        key = uncounted_reconciled_key(shard)
        async with self._calls:
            listed = await self.redis.zrange(key, 0, UNCOUNTED_PAGE - 1)
        takes: list[_Take] = []
        unreadable: dict[bytes, str] = {}  # each entry no router wrote, and why
        for member in listed:
            take = _listed_take(shard, member)
            if isinstance(take, str):
                unreadable[member] = take
            else:
                takes.append(take)
        if unreadable:  # dropped, so none holds up the others, nor is read again; counted once gone
            async with self._calls:
                await self.redis.zrem(key, *unreadable)
        for member, why in unreadable.items():
            metrics.UNCOUNTED_ENTRIES_DROPPED.labels(why).inc()
            log.error(
                "uncounted charge's entry unreadable: dropped",
                extra={"key": key, "entry": repr(member)[:500], "why": why},
            )
        for start in range(0, len(takes), TAKE_PAGE):
            taken = await self._take(shard, takes[start : start + TAKE_PAGE])
            metrics.RECONCILE_FAILURES.inc(taken.skipped)
            for record in taken.records:
                if record is not None:
                    count_charge(record)

    async def _settle_logged(self, swept: str) -> bool | None:
        """settle_swept; None when its own keys refused it (WRONGTYPE), logged: the others are settled all the same."""
        try:
            return await self.settle_swept(swept)
        except StoreUnavailable:
            raise
        except Exception:
            metrics.RECONCILE_FAILURES.inc()  # its hold stays counted against the budget meanwhile
            log.exception("pending charge not settled; swept again next round", extra={"record": swept})
            return None

    async def _pending(self, away: set[int]) -> AsyncIterator[str]:
        """Every pending charge's record, shard by shard, a page a call; none of a shard `away` (_apart)."""
        for shard in range(SHARDS):
            if shard in away:
                continue
            records: list[str] = []
            async with self._apart(shard, away):
                cursor = 0
                while True:
                    async with self._calls:
                        cursor, page = await self.redis.hscan(pending_key(shard), cursor, count=1000)
                    records += (_text(value) for value in page.values())
                    if not cursor:
                        break
            if shard not in away:
                for record in records:
                    yield record

    def _watch_beats(self, beats: BeatsRead, asked: float, answered: float, lease_s: float) -> None:
        """Last beats counted from this read (asked and answered at those monotonic times) on, when the store was out
        of this router's sight before it, or its clock leapt ahead of this router's since the read before (a failover
        to a replica whose clock is ahead, its host stepping its clock) by a third of the TTL or more: the heartbeats
        lapsed that much early, their routers unable to beat since, and by their last beats gone that much longer than
        they were. The store's clock is leaping only when it went on further than the most that could have passed
        between its two readings (from the first read's asking to this one's answer): a late reply is no leap."""
        if beats.now_ms is None:
            return
        last, self._beats_last_read = self._beats_last_read, (beats.now_ms, asked)
        leapt = (
            last is not None and (beats.now_ms - last[0]) / 1000 - (answered - last[1]) >= lease_s * SIGHT_LOST_FORGETS
        )
        if self._beats_watched_afresh or leapt:
            self._beats_watched_from_ms, self._beats_watched_afresh = beats.now_ms, False

    async def _beats_read(self, routers: list[str]) -> BeatsRead:
        async with self._calls:
            return await self._last_beats.read(routers)

    async def ping(self) -> bool:
        """Whether the store answers; the money's clock follows its clock (clock.py) at each answer."""
        try:
            async with _reachable():
                await self.redis.ping()
        except StoreUnavailable:
            self._lost_sight()
            return False
        self._in_sight()
        await self._follow_clock()
        return True

    def _lost_sight(self) -> None:
        """The store (or the heartbeats' master) out of this router's reach, so that its upkeep reconciles no more
        until it answers. Out of sight long enough (SIGHT_LOST_FORGETS), what the reconciler saw missing before counts
        no longer at its next round: another router's beat may have lapsed and come back meanwhile unseen, and with no
        other holder of the lease through the outage it would be taken for dead at once after. A shorter loss, a PING
        failing now and then, forgets nothing: each once forgot all, and a dead router's requests waited, with a loss
        every TTL, for ROUTER_PENDING_STALE_S to be charged."""
        if self._sight_lost_at is None:
            self._sight_lost_at = self._in_sight_at
        self._sight_back_at = None  # lasting still (a PING answered, the heartbeats' master away)

    def _in_sight(self) -> None:
        """The store answered this router (its PING, or its heartbeat: the heartbeats' master): a loss of sight, if
        any, ended here, unless one is reported again before a round reads it (_lost_sight)."""
        self._in_sight_at = time.monotonic()
        if self._sight_lost_at is not None and self._sight_back_at is None:
            self._sight_back_at = self._in_sight_at

    async def _follow_clock(self) -> bool:
        """The money's clock set by the store's TIME: on a Redis Cluster its GLOBAL slot's master's, the one every
        router reads. Unread (that master out of reach while others answer, TIME denied to the router's user or renamed
        away: an error reply), the clock stays as it was, and False: whether the store answers is PING's to say."""
        sent = time.time()
        try:
            if is_cluster_client(self.redis):
                await self.redis.initialize()
                node = self.redis.get_node_from_key(GLOBAL)
                seconds, micros = await self.redis.execute_command("TIME", target_nodes=node)
            else:
                seconds, micros = await self.redis.time()
        except Exception as exc:
            if store_failure(exc) is None and not isinstance(exc, ResponseError):
                raise
            return False
        finally:
            raise_if_cancelled()
        MONEY_CLOCK.follow(int(seconds) + int(micros) / 1e6, sent, time.time())
        metrics.MONEY_CLOCK_OFFSET.set(MONEY_CLOCK.offset_s)
        return True

    async def close(self) -> None:
        await self.redis.aclose()
