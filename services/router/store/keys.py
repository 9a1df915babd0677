"""Where the money lives in Redis, laid out for Redis Cluster: every key a script touches shares one hash slot.

A tenant's keys (spend, holds, request ids, rate counters) carry the hash tag of the tenant's shard, one of
SHARDS, together with that shard's ledger stream, pending charges and limit overrides. So admission (limits,
hold, pending charge) and the charge (settle, spend, ledger append) are each one script on one slot, and the
global parts are sharded: SHARDS ledger streams that the SQL sink reads, SHARDS pending hashes the reconciler
reads; nothing grows with the number of tenants. Each shard's tag is chosen to hash into its own 1/SHARDS of
the slot range, so a cluster whose masters own equal slot ranges carries equal shares of the shards.

Names are unambiguous for any tenant, key or router text: those are hex-encoded (no ':' or braces to escape
their slot or collide); a request id, which may hold anything, always ends its key. SHARDS and the tags are
part of the data format: changing them moves every tenant's counters.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Protocol

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

SHARDS = 16
GLOBAL = "{llmrouter}"  # one slot, knowingly: the reconciler's lease and the routers' heartbeats (rare)
LEASE = f"{GLOBAL}:reconciler:lease"
LEASE_HOLDER = f"{GLOBAL}:reconciler:last-holder"  # who last held the lease, kept past it
# The key id of a request without an API key. It is no key of its own, and every tenant's keyless requests carry
# it: the key budget holds such a request to its tenant's own spend and holds (AccountKeys), never to one budget
# shared by the tenants of a shard.
KEYLESS = "anonymous"
# The rate limit's window: rate_limit_rpm requests per minute, counted per wall-clock minute. Only tests shorten it
# (a test of a rate-limited batch otherwise waits for the next minute); the Redis counter's expiry outlasts any
# window up to a minute.
RATE_WINDOW_S = 60
RATE_COUNTER_TTL_S = 61
# How long a taken count's record is kept for its taker (AccountKeys.counted): its take is sent again within the call
# that lost its reply (a Redis Cluster client's resends, or the store's one), seconds; a day, as the uncounted charge,
# would keep every provider batch line's record a day after it was counted.
TAKEN_KEPT_S = 600
# How long a take's claim may go unacknowledged (keys.py, taken_claims_key) before the reconciler adopts it: its taker
# died with its reply unheard, or has been cut off from the store that long. Far past a take's round trips, well within
# TAKEN_KEPT_S, so what it took is still kept when adopted.
CLAIM_ADOPTED_AFTER_S = 60


def rate_window(now: float) -> int:
    """The rate limit's window `now` falls in."""
    return int(now // RATE_WINDOW_S)


def rate_retry_after_s(now: float) -> int:
    """Seconds until the rate limit's next window, as a refusal's retry_after_s says."""
    return RATE_WINDOW_S - int(now) % RATE_WINDOW_S


class _Named(Protocol):
    @property
    def tenant(self) -> str: ...

    @property
    def key(self) -> str: ...


def _tag(shard: int) -> str:
    for n in itertools.count():
        tag = f"m{shard}.{n}"
        if key_slot(tag.encode()) * SHARDS // REDIS_CLUSTER_HASH_SLOTS == shard:
            return "{" + tag + "}"
    raise AssertionError("unreachable")


TAGS = tuple(_tag(shard) for shard in range(SHARDS))


_SHARD_OF_TAG = {tag: shard for shard, tag in enumerate(TAGS)}


def shard_of_key(key: str) -> int:
    """The shard whose hash tag a money key (one of AccountKeys') begins with."""
    return _SHARD_OF_TAG[key[: key.index("}") + 1]]


def shard_of(tenant: str) -> int:
    return int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big") % SHARDS


def ledger_key(shard: int) -> str:
    """The shard's charge ledger, a stream: one entry per charge of its tenants."""
    return f"{TAGS[shard]}:ledger"


def pending_key(shard: int) -> str:
    """The shard's pending charges, a hash: field pending_field(...), value the Pending record as JSON."""
    return f"{TAGS[shard]}:pending"


def batches_key(shard: int) -> str:
    """The provider batch each deferred line of the shard was sent in, a hash: field pending_field(...) (its pending
    charge's), value the provider's batch id. Kept beside the pending charge, not in it: a router of the version
    before reads every pending record as a Pending of the fields it knew."""
    return f"{TAGS[shard]}:batches"


def models_key(shard: int) -> str:
    """The model each pending charge of the shard was admitted for (a deferred line's: sent for), a hash: field
    pending_field(...), value the model's name, written by its admission. A deferred line's collect is priced from it,
    whatever model the caller names; a charge the reconciler settles at its hold names it in the ledger. Kept beside
    the pending charge for the reason batches_key is."""
    return f"{TAGS[shard]}:models"


def prices_key(shard: int) -> str:
    """The per-token prices each deferred line of the shard was admitted at (its batch prices then), a hash: field
    pending_field(...), value '<nonce> <input> <output> <cached input> <cache write>' (USD per 1M tokens; model.py,
    prices_value; without the cache prices when they are the input price, a batch line's always, as the version before
    wrote every value), written by its admission. Its collect charges at them, whatever the registry says by then. Kept
    beside the pending charge for the reason batches_key is. The nonce names the admission that wrote it: a line a
    router of the version before settles (its scripts know no prices hash) leaves its field behind, about 60 bytes,
    during an upgrade only (the next admission of the same field by this version writes or drops it), and a later
    admission of the request id by such a router must not read it as its own."""
    return f"{TAGS[shard]}:prices"


def uncounted_reconciled_key(shard: int) -> str:
    """The charges of the shard counted in no router's metrics yet, the reconciler's and provider batch lines', a
    sorted set of '<charge id> <pending field>' scored by when charged (lua.py, CHARGE): each charge's record waits in
    its request's uncounted key (not in the router's memory), and the next reconciler, on any router, takes those
    their makers did not (lua.py, COUNT_ONCE), so a router dying before it heard its charge back, or before its
    collect took the counts of the lines it charged, loses no count. Named for the reconciler's alone, which the
    version before listed: the name is part of the data format."""
    return f"{TAGS[shard]}:uncounted-reconciled"


def taken_claims_key(shard: int) -> str:
    """The shard's takes of counts not acknowledged yet, a hash: field the take's claim, value '<when taken, ms by the
    store's clock> <the counted keys it took, a JSON list>' (lua.py, COUNT_ONCE), dropped by its taker once it heard
    the records back (lua.py, ACK_TAKE). So a take whose reply its taker never heard (the taker dead, or cut off) is
    known to the store, not to that taker's memory alone: the reconciler adopts it past CLAIM_ADOPTED_AFTER_S (lua.py,
    ADOPT_CLAIM) and counts what it took. Routers of the version before take without it: their unheard takes stay
    their own, as before."""
    return f"{TAGS[shard]}:taken-claims"


def limits_key(shard: int) -> str:
    """Operators' limit overrides, a hash from limit_field(scope, name) to pico-USD: a tenant's in its shard,
    a key's in every shard (its tenant, which picks the shard, is not known where the limit is set)."""
    return f"{TAGS[shard]}:limits"


def limit_versions_key(shard: int) -> str:
    """Beside limits_key: the version (LIMIT_VERSION) of the change each limit field of the shard last took, kept when
    the override is removed, so a change older than one a shard has already taken is never applied over it; and as
    `unrecorded:<field>` the limit the field held before the first versioned change reached the shard (lua.py,
    SWAP_LIMIT: the limit a field's first recorded change replaced, though a later change reached the shard first)."""
    return f"{TAGS[shard]}:limits:versions"


# Limit changes (store/limits.py): the counter that versions them, the record of each field's latest change
# ("<version>:<pico-USD or ''>"), and those of them not yet confirmed on every shard they go to (the same values).
LIMIT_VERSION = f"{GLOBAL}:limits:version"
LIMIT_CHANGES = f"{GLOBAL}:limits:changes"
LIMIT_UNCONFIRMED = f"{GLOBAL}:limits:unconfirmed"
# The record of key moves (key_move.py; store/key_moves.py): a stream, one entry a move, never trimmed (moves are rare).
KEY_MOVES_RECORD = f"{GLOBAL}:key-moves:record"
# The routers' ROUTER_PENDING_STALE_S as they publish it at each heartbeat, for key moves (store/pending_stale.py): a
# sorted set, each value a member, scored by until when (Unix ms by the money's clock) a router running with it counts.
PENDING_STALE = f"{GLOBAL}:pending-stale"


# A holds set's running total (lua.py, _TOTALS) is the set's name and this: the same hash tag, so the same slot.
TOTAL_SUFFIX = ":total"


def hold_total(held_key: str) -> str:
    """The running total of a holds set (AccountKeys.held): a hash of its pico sum, member count and epoch."""
    return held_key + TOTAL_SUFFIX


def hold_totals_epoch_key(shard: int) -> str:
    """The shard's hold-totals epoch (an integer, 0 while unset): a total built in another is rebuilt from a scan.
    One per shard, not one global key: a Redis Cluster script may only touch its own slot's keys."""
    return f"{TAGS[shard]}:hold-totals:epoch"


def limit_field(scope: str, name: str) -> str:
    return f"{scope}:{name}"  # the scope has no ':': the first one ends it


def key_tenant_key(key: str) -> str:
    """The tenant an API key id is bound to (the first it was used with, for good: key_tenants.py), a string in the key
    id's own slot, not a shard's: a key's spend and holds are kept in its tenant's shard, so the one record that says
    which tenant that is must be the same wherever the request names it."""
    return "{k." + key.encode().hex() + "}:tenant"


# What a shard's key-moves token (key_moves_key) reads before any key was moved (lua.py's ADMIT reads an unset one so).
NO_MOVES = "0"


def key_moves_key(shard: int) -> str:
    """The last key move (key_move.py) to reach the shard: a random token each move writes to every shard once it has
    rebound its key. A router remembers a key's binding with the token of its tenant's shard read just before it, and
    the admission (lua.py, ADMIT) refuses one remembered under another token as 'moved': so a move is met by the next
    admission after it, on every router. One per shard, as hold_totals_epoch_key: a script reaches its own slot
    alone."""
    return f"{TAGS[shard]}:key-moves"


def repairs_key(counter: str) -> str:
    """How many times `ledger-spend --repair` (money_check.py) raised a spend counter: a repair raises it only while
    this still holds what the check read beside the counter (lua.py, RAISE_SPEND), so two repairs of one loss raise it
    once, and charges landing meanwhile stop none. In the counter's slot (its name's hash tag)."""
    return f"{counter}:repairs"


GLOBAL_SLOT = key_slot(GLOBAL.encode())  # a Redis Cluster's: every GLOBAL key is in it
ALIVE_PREFIX = f"{GLOBAL}:alive:"


def alive_key(router: str) -> str:
    return f"{ALIVE_PREFIX}{router.encode().hex()}"


ALIVE_KEYS = f"{ALIVE_PREFIX}*"
LAST_BEAT_PREFIX = f"{GLOBAL}:last-beat:"  # apart from ALIVE_PREFIX: the look at the heartbeats lists none of these


def last_beat_key(router: str) -> str:
    """When the router's heartbeat lapses (or lapsed), by the store's clock: kept long past it (last_beats.py)."""
    return f"{LAST_BEAT_PREFIX}{router.encode().hex()}"


# The look at the heartbeats for ROUTER_HOLD_TOTALS=auto (heartbeats.py; on one Redis server a scan of the whole
# keyspace): one router a round looks (it holds this for the upkeep interval, or 20 looks' length) and stores how many
# routers keeping no totals it found, which the others read.
HOLD_TOTALS_LOOK = f"{GLOBAL}:hold-totals:look"
OLDER_ROUTERS = f"{GLOBAL}:hold-totals:older-routers"
# What a heartbeat of a router that keeps the running hold totals says after its time. Routers of the versions
# before wrote the time alone: one of those alive keeps 'auto' routers counting holds by a scan (model.HoldTotals).
KEEPS_HOLD_TOTALS = "keeps-hold-totals"
# What a heartbeat of a router that writes its last beat (last_beat_key) says after that: one found without it was
# written by a router of a version before (lua.py, BEATS_READ).
WRITES_LAST_BEAT = "writes-last-beat"


@dataclass(frozen=True)
class AccountKeys:
    """The names of one account's keys (a tenant and, within it, an API key id), all in the tenant's shard."""

    shard: int
    tenant_hex: str
    key_hex: str

    @classmethod
    def of(cls, account: _Named) -> AccountKeys:
        return cls(shard_of(account.tenant), account.tenant.encode().hex(), account.key.encode().hex())

    @property
    def _tenant(self) -> str:
        return f"{TAGS[self.shard]}:t:{self.tenant_hex}"

    @property
    def keyless(self) -> bool:
        return self.key_hex == KEYLESS.encode().hex()

    @property
    def _key(self) -> str:
        return f"{TAGS[self.shard]}:k:{self.key_hex}"

    def spend(self, period: str) -> tuple[str, str]:
        """The tenant's and the key's spend in a period (an id from period_id), as charges add to them."""
        return f"{self._tenant}:spend:{period}", f"{self._key}:spend:{period}"

    def carried(self, period: str) -> str:
        """What the key had spent and held in the other shards, for a period, when an operator last moved it to this
        shard's tenant (key_move.py; RedisStore.move_key): counted against its key budget here beside its own spend
        (lua.py, _SPENT), never against the tenant's, which did not spend it. Kept as long as the period's spend."""
        return f"{self._key}:carried:{period}"

    def held(self) -> tuple[str, str]:
        """Sorted sets of hold_member(...) members, scored by expiry, as admissions add to them. The key's set is
        the key id's in the shard, as its spend: a key a trusted caller names for two tenants holds each tenant's
        requests there."""
        return f"{self._tenant}:held", f"{self._key}:held"

    def key_budget(self, period: str) -> tuple[str, str]:
        """The spend and holds the key's budget is checked (and shown) against: the key's, but for a keyless
        request its tenant's. The keyless id's own spend and holds, shared by the shard's tenants, are still
        kept: routers of the version before check keyless requests against them (more than the tenant's own,
        so during a rolling upgrade they over-count, never overspend)."""
        if self.keyless:
            return f"{self._tenant}:spend:{period}", f"{self._tenant}:held"
        return self.spend(period)[1], self.held()[1]

    def hold_member(self, pico: int, request_id: str) -> str:
        """A request's member in both holds sets: '<pico>:<tenant hex>:<request id>'. Request ids are per tenant,
        so the tenant keeps two tenants' same-id requests apart in the key's set. Members written before this had
        no tenant ('<pico>:<request id>'): no script settles those (which request one stands for is ambiguous),
        so each is counted until its expiry: a budget over-counted during an upgrade, never overspent."""
        return f"{pico}:{self.tenant_hex}:{request_id}"

    def used(self, request_id: str) -> str:
        """Set at admission: a request id is admitted once per tenant."""
        return f"{self._tenant}:used:{request_id}"

    def undone(self, nonce: str) -> str:
        """Set by an undo: the admission with this nonce admits nothing, should it run after its undo."""
        return f"{self._tenant}:undone:{nonce}"

    def charged(self, request_id: str) -> str:
        """Set by the charge: a request id is charged once per tenant."""
        return f"{self._tenant}:charged:{request_id}"

    def answer(self, request_id: str) -> str:
        """Set by a provider batch line's collect before it charges the line: the line as that collect tells it, for a
        later collect to tell again should the reply be lost (Store.keep_answer)."""
        return f"{self._tenant}:answer:{request_id}"

    def uncounted(self, request_id: str) -> str:
        """Set by a provider batch line's charge that names itself (its charge id and ledger record), and by any charge
        of the reconciler's, for as long as the charged marker, until the router that counts the charge in its metrics
        takes it (lua.py, COUNT_ONCE)."""
        return f"{self._tenant}:uncounted:{request_id}"

    def counted(self, request_id: str) -> str:
        """Set by the take of an uncounted charge (lua.py, COUNT_ONCE): the claim that took it and the charge's record,
        for TAKEN_KEPT_S at most (no longer than the uncounted charge had left to live), so the same take sent again
        (its reply lost) gets the record again, and any other taker nothing."""
        return f"{self._tenant}:counted:{request_id}"

    def reconciled(self, request_id: str) -> str:
        """Set by the reconciler's charge at the hold (model.py, reconciled_value), for as long as the charged marker:
        what a charge or undo of that admission kept in an outbox gives back once it lands (lua.py, GIVE_BACK)."""
        return f"{self._tenant}:reconciled:{request_id}"

    def rate(self, now: float) -> str:
        """Requests of this tenant's API key in the minute of `now`."""
        return f"{self._tenant}:rate:{self.key_hex}:{rate_window(now)}"

    def tokens(self, now: float) -> str:
        """Tokens charged to this tenant's API key in the minute of `now` (the rate limit's window), in and out."""
        return f"{self._tenant}:tokens:{self.key_hex}:{rate_window(now)}"

    def rate_counted(self, now: float) -> str:
        """The count ids (Store.count_request) of the requests the rate counter of `now`'s minute counted: a set."""
        return f"{self.rate(now)}:counted"

    @property
    def ledger(self) -> str:
        return ledger_key(self.shard)

    @property
    def pending(self) -> str:
        return pending_key(self.shard)

    @property
    def batches(self) -> str:
        return batches_key(self.shard)

    @property
    def models(self) -> str:
        return models_key(self.shard)

    @property
    def prices(self) -> str:
        return prices_key(self.shard)

    @property
    def limits(self) -> str:
        return limits_key(self.shard)

    @property
    def uncounted_reconciled(self) -> str:
        return uncounted_reconciled_key(self.shard)

    @property
    def hold_totals_epoch(self) -> str:
        return hold_totals_epoch_key(self.shard)

    @property
    def key_moves(self) -> str:
        return key_moves_key(self.shard)


def key_everywhere(key: str) -> list[AccountKeys]:
    """An API key's keys in every shard: where its spend and holds are summed when its tenant is not known
    (an operator's view of one key; a key serves one tenant, so one shard has them)."""
    return [AccountKeys(shard, "", key.encode().hex()) for shard in range(SHARDS)]
