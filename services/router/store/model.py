"""The router's money, what every store shares: accounts, holds, pending charges, allowances and verdicts, and
the Store protocol (RedisStore in redis_store.py, MemoryStore in memory.py).

Admission holds the request's worst-case cost against both budgets until it is charged (at nothing when nothing was
generated), and lets a request in only when spend + holds + its own hold fits each limit, so concurrent requests
never spend past a limit. It also records a pending charge (who pays, the hold, the budget period fixed for the
request, the router serving it). The charge settles it exactly once; a router that dies leaves its pending charges
to the reconciler, which charges them at their hold.
Money is stored as integer pico-dollars (1e-12 USD): registry prices have at most 6 decimals per 1M tokens,
so every cost is an exact integer there and sums never drift.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal, NamedTuple, Protocol

import grpc

from llmrouter.errors import ServiceError
from llmrouter.json_depth import loads_stored
from services.router.store.clock import money_now
from services.router.store.keys import KEYLESS

PICO = Decimal(10) ** 12
REQUEST_ID_TTL_S = 24 * 3600  # default: how long a request id stays used (and charged at most once)
# A hold outlives any request. Past it, admission still counts the hold while its pending charge is open (the charge
# may wait in a router's outbox through a store outage; lua.py, _OPEN), and drops it once that is settled.
HOLD_S = 600
# How long the store keeps a holds set past its last hold's expiry: a hold of a pending charge still open is counted
# until the reconciler settles it, within ROUTER_PENDING_STALE_S, which may not be longer.
HOLDS_LINGER_S = 7 * 86400
# A line sent through a provider's Batch API: its hold lasts the provider's 24 h window and a margin for its
# results to be collected; only then does the reconciler charge it (at its hold: its outcome was never known).
DEFERRED_HOLD_S = 26 * 3600
# A provider batch line a collect settled is kept (Store.keep_answer) by default this long, when at most this large
# (ROUTER_BATCH_ANSWER_KEPT_S, ROUTER_BATCH_ANSWER_KEPT_BYTES; deferred.py, KeptAnswers).
ANSWER_KEPT_S = 86_400.0
ANSWER_KEPT_BYTES = 1024 * 1024
# The most a spend counter may hold: Redis' INCRBY fails past 2^63 - 1 (9.22e18 pico-USD, $9.22M), and a charge that
# would take a counter there is refused whole (lua.py, CHARGE; MemoryStore.charge), ahead of any write. Below 2^63 - 1
# by more than a double's error there: the script compares Lua numbers.
SPEND_MAX_PICO = 9_200_000_000_000_000_000


def used_ttl_s(request_id_ttl_s: float, until: float, now: float) -> float:
    """How long an admission keeps its request id's used marker. The marker names the key that used the id, and is read
    for as long as anything of the request is: its pending charge, and its charged marker, kept the request id TTL from
    its charge, which keeps the used marker as long (lua.py, CHARGE). A request that is no provider batch line is
    charged within its hold (HOLD_S), within the request id TTL (settings: at least the longest request), so the
    request id TTL will do. A provider batch line's hold (`until`, DEFERRED_HOLD_S: longer than the request id TTL by
    default) may outlast it, and the marker then expired while the line was held: its charge found no used marker to
    keep, and another key of the tenant read the settled line's answer (charged_batch) while its own key, offering it
    again, was refused as a stranger, told nothing of its hold or charge. Its marker lives the request id TTL past
    its hold."""
    return request_id_ttl_s + (max(0, int(until - now) + 1) if until else 0)


def to_pico(usd: Decimal) -> int:
    return int((usd * PICO).to_integral_value(rounding=ROUND_CEILING))


def key_id(api_key: str) -> str:
    """Budgets and ledger refer to a key by a hash prefix: the key itself is never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else KEYLESS


@dataclass(frozen=True)
class Account:
    """Who pays: a tenant and, within it, an API key (by its id)."""

    tenant: str
    key: str


@dataclass(frozen=True)
class KeyBinding:
    """The tenant an API key id is bound to (keys.py, key_tenant_key), and the key-moves token of the named tenant's
    shard (keys.py, key_moves_key) read just before it: an admission under that token, while the shard still has it,
    meets no move the binding missed."""

    tenant: str
    moves: str


@dataclass(frozen=True)
class KeyMoveRecord:
    """One operator's move of an API key id to another tenant (key_move.py), as recorded: never the key itself."""

    key_id: str
    before: str | None  # the tenant it was bound to (None: none)
    tenant: str
    by: str
    at: float  # Unix seconds by the money's clock


@dataclass(frozen=True)
class Hold:
    """A request's worst-case cost, held against its budgets while it runs, and the budget period (an id
    such as 20261130) it was admitted in, fixed then: its charge lands in the one it settles in (landing_period).
    `router` is the instance serving it; `nonce` names this one admission (recorded in its pending charge), so
    undoing it never touches another of the same id.
    `until` is set for a request whose result comes later than any router lives (a provider batch line)."""

    request_id: str
    pico: int
    period: str
    router: str = ""
    nonce: str = ""
    # A deferred request's (a provider batch line's): when its hold lapses, Unix seconds; 0: HOLD_S after admission.
    until: float = 0.0
    # Until when every charge of this admission is surely still marked (money-clock Unix seconds, marked_until): each
    # keeps its charged marker at least that long, whatever its router's request id TTL, and the store judges by its
    # own clock whether a charge that finds the pending charge gone is late (lua.py, CHARGE). 0: not known (a hold of
    # a router of a version before), judged by its router.
    marked_until: float = 0.0
    # A deferred request's max_tokens, as sent to its provider (its hold was sized for it): its collect charges no
    # output past it (deferred.py). None: not recorded (a request that is no deferred one, or a line a router of a
    # version before admitted, whose collect charges a report as it stands, within the hold).
    max_tokens: int | None = None


def marked_until(request_id_ttl_s: float, until: float, now: float) -> float:
    """Until when an admission made `now` keeps its request's charges marked: as long as its used marker lives
    (used_ttl_s), the admitting router's request id TTL past its admission (a provider batch line's, past its hold).
    Within it, a charge that finds its pending charge gone and no marker is that of an admission the store lost (a
    crash, a failover behind): still paid. Past it, the request may have been charged by the reconciler (its router
    frozen), its marker expired since: the charge lands only while its pending charge is open."""
    return now + used_ttl_s(request_id_ttl_s, until, now)


class Prices(NamedTuple):
    """A model's per-token prices, USD per 1M tokens: an uncached input token, an output token, an input token read
    from the provider's prompt cache and one written to it."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal


@dataclass(frozen=True)
class Pending:
    """A charge recorded at admission and not yet settled: enough to settle it at its hold after a crash.
    `ts` is when it was recorded (or its hold last grown), by the money's clock (clock.py), as `until` is."""

    tenant: str
    key: str
    request_id: str
    hold_pico: int
    period: str
    router: str
    ts: float
    nonce: str = ""  # absent from records written before admissions had one
    until: float = 0.0  # a deferred request's: settled by no one but its collector until then (Hold.until)
    # A deferred request's provider batch, recorded once the provider created it: only that batch's results settle
    # it. '' from its admission until then (and for good when the creation's outcome is unknown, or the store was
    # out of reach to record it: such a line is settled from no batch's results). None when nothing is kept beside
    # the record: a request that is no provider batch line, or a line of a router from before lines recorded theirs
    # (deferred.py says how those are settled). Kept beside the record, never in it (keys.py, batches_key): the
    # store fills it in when read.
    provider_batch: str | None = None
    # The model the request was admitted for (Store.admit's `model`), recorded by its admission and kept beside the
    # record as provider_batch is (keys.py, models_key): a deferred request's collect is priced from it, and a charge
    # settled at its hold names it in the ledger. None when nothing is kept: a request admitted by a router of a
    # version before (which recorded it for provider batch lines only; deferred.py), or admitted naming none.
    model: str | None = None
    # A deferred request's per-token prices as admitted (Store.admit's `prices`), kept beside the record as model is
    # (keys.py, prices_key): its collect charges at them. None when nothing is kept: a request that is no deferred one,
    # or a line admitted by a router of a version before prices were kept (charged at the prices of its collect's
    # registry, as that version did).
    prices: Prices | None = None
    # Hold.marked_until, recorded so that the reconciler's charge keeps its marker as long (0: not recorded, a
    # router of a version before admitted it).
    marked_until: float = 0.0
    # Hold.max_tokens, recorded in the record when known (None: a router of a version before wrote it, which reads
    # the fields it knows, or the request is no deferred one).
    max_tokens: int | None = None

    def ledger_record(self, **fields: Any) -> dict[str, Any]:
        """A ledger entry settling this charge: who pays, in which budget period, and `fields`."""
        base = {"request_id": self.request_id, "ts": time.time(), "tenant": self.tenant, "key": self.key}
        return {**base, "period": self.period, **fields}

    @classmethod
    def of(cls, account: Account, hold: Hold) -> Pending:
        return cls(
            account.tenant,
            account.key,
            hold.request_id,
            hold.pico,
            hold.period,
            hold.router,
            money_now(),  # other routers age it (the reconciler, deferred.py): by the clock they all read
            hold.nonce,
            hold.until,
            marked_until=hold.marked_until,
            max_tokens=hold.max_tokens,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Pending:
        """A stored record; fields this version does not know (written by a newer router) are left out, and so are
        provider_batch and model (the store keeps them beside the record)."""
        known = {f.name for f in fields(cls)} - set(_BESIDE)
        return cls(**{name: value for name, value in loads_stored(text).items() if name in known})

    def to_json(self) -> str:
        """The stored record, without provider_batch and model: a router of the version before builds a Pending of
        every record's fields in its reconcile sweep, and one field it does not know would stop that sweep."""
        record = asdict(self)
        for name in _BESIDE:
            del record[name]
        if not self.marked_until:  # not known: the record as the version before wrote it
            del record["marked_until"]
        if self.max_tokens is None:
            del record["max_tokens"]
        return json.dumps(record)

    @property
    def field(self) -> str:
        return pending_field(Account(self.tenant, self.key), self.request_id)

    def account_and_hold(self) -> tuple[Account, Hold]:
        hold = Hold(
            self.request_id,
            self.hold_pico,
            self.period,
            self.router,
            self.nonce,
            self.until,
            self.marked_until,
            self.max_tokens,
        )
        return Account(self.tenant, self.key), hold


# Pending's fields the store keeps beside the stored record, never in it (Pending.to_json).
_BESIDE = ("provider_batch", "model", "prices")


def prices_value(nonce: str, prices: Prices | None) -> str:
    """What the prices hash keeps for an admission (keys.py, prices_key); '' for no prices. Cache prices that are the
    input price (a batch line's, always) are left out, as the version before wrote it: a router of that version,
    which reads no other form, collects the line at its admitted prices, not at its own registry's."""
    if prices is None:
        return ""
    cached = prices.cached_input, prices.cache_write
    kept = prices[:2] if cached == (prices.input, prices.input) else prices
    return " ".join([nonce, *map(str, kept)])


def admitted_prices(value: str | None, nonce: str) -> Prices | None:
    """The prices a prices-hash value records, when it is the admission's of `nonce`: else None (another admission's,
    left behind by a router of the version before, or none). A value of the version before has no cache prices: its
    line was held and is charged with every input token at the input price."""
    parts = (value or "").split(" ")
    if len(parts) not in (3, 5) or parts[0] != nonce:
        return None
    prices = [Decimal(part) for part in parts[1:]]
    return Prices(*prices) if len(prices) == 4 else Prices(prices[0], prices[1], prices[0], prices[0])


def pending_field(account: Account, request_id: str) -> str:
    """Unambiguous for any tenant and request id (both may hold any character)."""
    return json.dumps([account.tenant, request_id])


def period_id(period: str, now: float | None = None) -> str:
    """The budget period `now` is in (by default now by the money's clock, clock.py: every router ends a period at
    the same instant)."""
    day = datetime.fromtimestamp(now if now is not None else money_now(), UTC)
    return {"day": day.strftime("%Y%m%d"), "month": day.strftime("%Y%m"), "total": "all"}[period]


def landing_period(admitted: str, now: float | None = None) -> str:
    """The budget period a charge lands in: the one it settles in (`now`, by default now by the money's clock), of its
    admission's kind (`admitted`, its period_id), never one before its admission's. A request's hold counts against
    every period it is held in (the holds are no period's own), so a request admitted before a period's end and charged
    after it is charged to the new period, whose budget its hold was counted against: the hold and the charge agree."""
    kind = {8: "day", 6: "month"}.get(len(admitted), "total" if admitted == "all" else "")
    if not kind:
        return admitted  # no period_id of any kind (hand-edited): as admitted
    return max(admitted, period_id(kind, now))  # the ids of one kind sort by time


def next_period(period: str) -> str:
    """The budget period after `period` (a period_id): its charges may land there (landing_period), so its admissions
    and grown holds are checked against that one's spend too. 'all', or no period_id (hand-edited): itself."""
    try:
        if len(period) == 8:
            start = datetime.strptime(period, "%Y%m%d").replace(tzinfo=UTC).timestamp()
            return period_id("day", start + 86400)
        if len(period) == 6:
            start = datetime.strptime(period, "%Y%m").replace(tzinfo=UTC).timestamp()
            return period_id("month", start + 32 * 86400)
    except ValueError:
        pass
    return period


def period_start(period: str) -> float:
    """Unix seconds (by the money's clock) when a period (a period_id) starts; 0 for 'all' and no period_id."""
    for digits, form in ((8, "%Y%m%d"), (6, "%Y%m")):
        if len(period) == digits:
            try:
                return datetime.strptime(period, form).replace(tzinfo=UTC).timestamp()
            except ValueError:
                break
    return 0.0


def spend_ttl_s(period: str) -> int:
    """Spend counters outlive their period (a day id has 8 digits, a month 6, 'all' never ends); every charge
    renews the TTL, so a counter is never dropped before its period is over."""
    return {8: 2 * 86400, 6: 62 * 86400}.get(len(period), 0) if period != "all" else 0


def kept_batch(answer: bytes) -> bytes:
    """A kept provider batch line's first line, its newline included: the batch it was read from (deferred.py,
    kept_line). Store.keep_answer keeps no line over one of the same batch."""
    return answer.partition(b"\n")[0] + b"\n"


# The batch a provider batch line's charged marker names when no batch was recorded for it (its creation's outcome
# unknown, or the store out of reach to record it): charged its hold, its worst case, from no batch's results. Outside
# a provider batch id's alphabet (providers/batches.py, BATCH_ID), so no collect's batch is taken for it; a collect
# naming any batch tells such a line that charge (deferred.py), as the collect that charged it did.
UNRECORDED_BATCH = "(unrecorded)"


def charged_marker(batch: str | None, charge_id: str, nonce: str = "") -> str:
    """What a charge writes in its request's charged marker (lua.py, CHARGE, writes the same): 'batch:<id>' for a
    provider batch line's (`batch`: '' for one whose batch is not recorded, marked UNRECORDED_BATCH; None for a request
    that is no batch line; what it was charged follows: marker_after_charge), else '1:<charge id>:<its admission's
    nonce>' (either may be ''), or '1' or '1:<charge id>' without a nonce, as routers of versions before wrote it. A
    marker that is no batch's holds one such entry per charge that landed on the request id (space-separated): more than
    one when a store that lost an admission let the id in again. Routers of the version before read every marker not of
    a batch as one of no batch, as this one does."""
    if batch is not None:
        return f"batch:{batch or UNRECORDED_BATCH}"
    if nonce:
        return f"1:{charge_id}:{nonce}"
    return f"1:{charge_id}" if charge_id else "1"


# What a request id was charged in all (pico-USD), after a charged marker's entries: ' 1::pico=<n>', kept while every
# charge on the id is known (none of a version before), so that a duplicate's refusal says what the request cost
# (lua.py, ADMIT). Routers of the version before read it as an entry of no charge id and of an admission none makes
# (nonces are hex): another admission's charge, which changes none of their decisions. After a provider batch line's
# 'batch:<id>' it is that one charge, so that a collect of the line again (the reply to the collect that settled it
# lost) tells what the line was charged. A router of the version before reads that marker as of no batch it is asked
# about: such a collect that it answers, during a rolling upgrade, is told no line of the account there, at 0.
CHARGED_TOTAL = "1::pico="


def charged_tokens(record: dict[str, Any]) -> int:
    """The tokens a charge's ledger record says were charged, input and output (Allowance.tokens_per_minute counts
    them): none on record (a cache hit, a charge at a hold), 0. Whatever else a record holds there counts as none: a
    rate limit never stands in the way of a charge."""
    counts = (record.get(name) for name in ("input_tokens", "output_tokens"))
    return sum(count for count in counts if isinstance(count, int) and count > 0)


def marker_entries(marker: str | None) -> list[str]:
    """The charges a charged marker names (charged_marker); none for a provider batch line's."""
    if marker is None or marker.startswith("batch:"):
        return []
    return [entry for entry in marker.split() if not entry.startswith(CHARGED_TOTAL)]


def marker_charged_pico(marker: str | None) -> int | None:
    """What the request id of a charged marker was charged in all; None when that is not on record."""
    last = (marker or "").rsplit(" ", 1)[-1]
    return int(last.removeprefix(CHARGED_TOTAL)) if last.startswith(CHARGED_TOTAL) else None


def marker_after_charge(met: str | None, entry: str, pico: int) -> str:
    """The charged marker once a charge of `pico`, of entry `entry` (charged_marker), lands on a request id whose
    marker was `met`: the entries met and this one, and their total while every one is known (lua.py, CHARGE)."""
    if entry.startswith("batch:"):
        return f"{entry} {CHARGED_TOTAL}{pico}"
    before = marker_charged_pico(met) if met is not None else 0
    total = f" {CHARGED_TOTAL}{before + pico}" if before is not None else ""
    return " ".join([*marker_entries(met), entry]) + total


# A request id whose every admission ended charged exactly 0 with nothing delivered (a request never served: its
# upstream failed) is released for its caller's retry: its charged marker ends with RELEASED before its total of 0
# (marker_after_charge), and admission lets the key that used the id in again, the marker kept so a charge of the
# admission before, replayed, is still known as made (lua.py, ADMIT, CHARGE). Led by CHARGED_TOTAL, so routers of the
# version before take it for no entry of theirs: they refuse the id as a duplicate charged 0, as they did, and their
# charge on it drops it (the marker rewritten from its entries). Any charge that is not a release drops it so.
RELEASED = f"{CHARGED_TOTAL}released"
RELEASED_TAIL = f" {RELEASED} {CHARGED_TOTAL}0"


def marker_released(marker: str | None) -> bool:
    """Whether the request id of a charged marker is released for a retry (RELEASED)."""
    return marker is not None and marker.endswith(RELEASED_TAIL)


def marker_after_release(met: str | None, marker: str) -> str:
    """The charged marker `marker` (marker_after_charge) of a charge that asked to release its id: released when the
    id was charged 0 in all and every admission of it before was released, else as it is."""
    if (met is not None and not marker_released(met)) or not marker.endswith(f" {CHARGED_TOTAL}0"):
        return marker
    return marker.removesuffix(f" {CHARGED_TOTAL}0") + RELEASED_TAIL


def marker_names_charge(marker: str | None, charge_id: str) -> bool:
    """Whether the charge `charge_id` is one the marker names."""
    return any(entry.split(":")[1:2] == [charge_id] for entry in marker_entries(marker))


def marker_spares_admission(marker: str, nonce: str) -> bool:
    """Whether every charge a marker names is of another admission than that of `nonce` (each names its own): the
    charge of the admission of `nonce` is then no repeat of any of them."""
    nonces = [_entry_nonce(entry) for entry in marker_entries(marker)]
    return bool(nonce) and bool(nonces) and all(named not in ("", nonce) for named in nonces)


def _entry_nonce(entry: str) -> str:
    """The admission a marker's entry names; '' for none (an entry of a version before)."""
    parts = entry.split(":", 2)
    return parts[2] if len(parts) == 3 else ""


def marker_batch(marker: str) -> str:
    """The provider batch a charged marker names; '' for none."""
    if not marker.startswith("batch:"):
        return ""
    named = marker.removeprefix("batch:")
    batch, told, pico = named.rpartition(f" {CHARGED_TOTAL}")  # what the line was charged follows its batch
    return batch if told and pico.isdigit() else named


# How admission counts a budget's holds (ROUTER_HOLD_TOTALS): by each holds set's running total ('trust'), or by a
# scan of its members, the totals still kept ('maintain'), or 'auto': by a scan while any live router's heartbeat
# says it keeps no totals (one of a version before them, during a rolling upgrade), by the totals once none is
# left, every total kept so far distrusted at that moment (the epoch bumped), since those routers may have moved
# a set's sum without its count.
HoldTotals = Literal["auto", "maintain", "trust"]


@dataclass(frozen=True)
class HoldsTotal:
    """One holds set's running total beside what its members sum to (services/router/money_check.py). `total` is
    (pico-USD, members), None when none can be trusted: none kept, or kept in an epoch since bumped or by fewer or
    more members than the set has (a router of the version before added or removed one); admission rebuilds such a
    total from a scan when it next reads it. `scanned` is (pico-USD, members) of the set itself."""

    holds: str
    total: tuple[int, int] | None
    scanned: tuple[int, int]


@dataclass(frozen=True)
class UncountedCharge:
    """A charge whose metrics count a router takes (Store.count_once_each): a provider batch line's of `request_id`,
    by its `charge_id` ('' any: a collect that found the line charged before)."""

    account: Account
    request_id: str
    charge_id: str = ""


class StoreUnavailable(ServiceError):
    """The money store cannot be reached: nothing is admitted without it (fail closed)."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            "the budget store is unreachable; no request is served until it is back",
            {"retry_after_s": "1"},
        )


class StoreRefusing(StoreUnavailable):
    """The store answered, refusing writes: full (maxmemory under noeviction), a primary demoted (read-only), or this
    router's user denied by an ACL."""


class PartlyTaken(StoreUnavailable):
    """count_once_each out of reach part way: `taken`, the records its calls answered before, are the caller's to
    count (their charges' entries are dropped from their shards' lists: no sweep finds them)."""

    def __init__(self, taken: list[dict[str, Any]]) -> None:
        super().__init__()
        self.taken = taken


@dataclass(frozen=True)
class Allowance:
    """What an account may do: requests per minute (0: unlimited), spend per period, in pico-USD (None:
    unlimited; a limit stored for a tenant or key overrides these defaults), and tokens charged per minute (0:
    unlimited): a request is refused while its minute's tokens charged so far are at or over it."""

    period: str
    per_minute: int = 0
    tenant_pico: int | None = None
    key_pico: int | None = None
    tokens_per_minute: int = 0


@dataclass(frozen=True)
class Verdict:
    """Admission's answer. `refused` is '' when the request may go on, else why not: 'duplicate' (the id was
    used before, is in flight, or its charge is still remembered), 'rate' (over the requests this minute),
    'tokens' (the tokens charged this minute at or over Allowance.tokens_per_minute),
    'tenant' or 'key' (that budget cannot hold this request on top of its spend and the holds of requests in
    flight), 'undone' (this very admission was undone before it ran: only a resent or delayed copy meets it), 'moved'
    (a key was moved since its key's binding was read: Store.admit's `moves`; nothing happened). On
    a budget refusal, `remaining` is what the tighter budget has left (pico-USD): a smaller hold up to it would
    have been admitted then; and `spend_left` what the budget tighter by its settled spend alone has left, the
    holds of requests in flight aside. Holds only come and go, while spend only grows within a period: when even
    `spend_left` cannot pay for the request, no retry of it can be admitted until the period ends or a limit is
    raised; otherwise one may be, once other requests' holds are settled. `spend_budget` names the budget
    `spend_left` is of ('tenant' or 'key'): not always the one `refused` names, when requests in flight (of another
    key of the tenant) hold the room of one budget while the other's spend leaves less."""

    refused: str
    remaining: int = 0
    spend_left: int = 0
    spend_budget: str = ""
    # A duplicate's: what its request id was charged in all (pico-USD), None when that is not on record (nothing
    # charged yet, or charged by a router of a version before or as a provider batch line); and `held`, the hold of
    # its charge still open (in flight, or left to the reconciler), None when none is. Both None for any key but the
    # one that used the id (another key of the tenant learns nothing of that request), or when which key used it is
    # no longer known (its used id expired). A used id a router of the version before wrote names no key: any is told.
    charged: int | None = None
    held: int | None = None


class Store(Protocol):
    """charge and extend act on the hold the store holds for the request (its pending charge's), which
    may be larger than the `hold` given when the reply to an extension was lost: none outlives its request."""

    # Whether one shard's keys can be out of reach while another's are not (a Redis Cluster's masters): else a
    # failure of the store is every shard's.
    shards_fail_apart: bool

    @property
    def request_id_ttl_s(self) -> float:
        """How long an admission keeps its request id used, and its charges marked (ROUTER_REQUEST_ID_TTL_S):
        marked_until says until when."""

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
        """Let one request in when spend + holds + `hold` fits both budgets (a hold past its expiry counts while its
        pending charge is open, with that hold; lua.py, _OPEN): its id is then used, `hold` is held against both
        budgets and a pending charge is recorded, with `model` (the model it is admitted for) and `prices` (a deferred
        request's per-token prices) beside it: Pending.model, Pending.prices. A request refused as a duplicate, rate
        limited or undone changes nothing. One admitted or refused for a budget counts against the rate limit, once
        per `count_id` in a window (lua.py, _RATE: the request's, the same on its admission resized to fit the budget,
        which is then not refused for its own count; '' counts each call). `counted_at`: the money time whose window
        the request is counted in, and its requests and tokens per minute read in (its first admission's, so one
        resized in the next window is counted once, where it was counted); None for now. `moves`: the key-moves token
        the account's key binding was read under (KeyBinding.moves), refused 'moved' when its shard has another; ''
        for a key bound to no tenant (key_tenants.is_bound). StoreUnavailable when the store cannot be reached."""

    async def bind_key(self, key: str, tenant: str) -> KeyBinding:
        """The tenant an API key id is bound to: the first it was bound with, for good (keys.py, key_tenant_key), which
        is `tenant` when the key was bound to none until now (or an operator moved it: key_move.py); with the key-moves
        token of `tenant`'s shard, read before it. StoreUnavailable when the store cannot be reached."""

    async def key_tenant(self, key: str) -> str | None:
        """The tenant an API key id is bound to (bind_key), None when it is bound to none; binds nothing.
        StoreUnavailable when the store cannot be reached."""

    async def count_request(self, account: Account, allowance: Allowance, count_id: str = "", moves: str = "") -> str:
        """Count one request that is not admitted (a Decide: routed, nothing held or charged) against the rate limit,
        in the counter admit counts in, once per `count_id` in a window, as admit counts: '' when counted, now or
        before (a resend after a lost reply); else, nothing counted, the limit reached, as admit's refusal names it:
        'rate' (the window's requests used up) or 'tokens' (the tokens charged this minute at or over the limit), or
        'moved' as admit refuses it (`moves`). '' with no call to the store when `allowance` sets neither limit.
        StoreUnavailable when the store cannot be reached."""

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
        """Settle the pending charge: add the cost to both budgets of the period it lands in (landing_period: the one
        it settles in, never one before the hold's) and the record, naming that period, to the ledger, once per
        request id, and drop the hold; the record's tokens (charged_tokens) are counted in the
        account's tokens of the minute, once, as the charge lands. Returns False when this request id was charged before
        (nothing is added again). `late` (an outbox line of a version before, perhaps after the charged marker
        expired): charge only while the pending charge is still open, so a charge the reconciler settled is never
        added again; the store takes any charge for late past its hold's marked_until, by its own clock, and keeps
        the charged marker until then at least.
        `release`: a charge of 0 of a request that delivered nothing (its upstream failed) releases its id for a retry
        by the key that sent it, when every admission of the id before was released so (RELEASED): atomically with
        the charge, so its charge stays marked as made and is never taken again, whatever reply is lost.
        `charge_id` names this one charge (its charged marker keeps it, while it lives): when this very charge was
        made before (its reply lost, then replayed from the outbox or resent), True again, nothing added, so its
        maker counts it once whichever call learned of it. A provider batch line's marker has no room for it: its
        charge is kept counted by no router instead, until one takes it to count (count_once). StoreUnavailable when
        the store cannot be reached."""

    async def count_once(self, account: Account, request_id: str, charge_id: str = "") -> dict[str, Any] | None:
        """A provider batch line's charge (one that named itself by its `charge_id`), or one of the reconciler's (a
        RedisStore's, whose next reconciler counts those their makers did not), is counted in the metrics by one
        router: the one this answers its ledger record to, once; None to any other call. `charge_id`: the collect that
        made the charge, once its reply arrived; '' any, for a collect that found the line charged before (the reply to
        the collect that made it lost, so counted nowhere yet). A take whose reply was lost is sent again as the same
        take, which gets the record it took (RedisStore: its claim). StoreUnavailable when the store cannot be reached
        again: whether it was taken is unknown, and the store sends the take again at each reconcile round until it is
        heard, counting what it took then (RedisStore: for as long as the store keeps a take's records)."""

    async def count_once_each(self, charges: Sequence[UncountedCharge]) -> list[dict[str, Any] | None]:
        """count_once of each charge, answered in their order: one call a shard (RedisStore: of at most TAKE_PAGE
        charges each) rather than one a charge. A charge named twice is answered once. StoreUnavailable as
        count_once; PartlyTaken when calls were answered before it."""

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int, moves: str = "") -> str:
        """Raise a hold to `pico` (before a fallback or escalation that may cost more than it covers): ''
        when both budgets cover spend + every other hold + the new amount, else the budget that does not, or
        'settled' when the request's pending charge is gone (nothing is held for it any more), or 'moved' as admit's
        `moves`: a key moved since is no longer checked here alone (its move carried the hold as it stood)."""

    async def undo(self, account: Account, hold: Hold) -> bool:
        """Undo the admission of `hold` (its nonce), whose reply was lost: when the request's pending charge is
        that admission's, drop its hold and pending charge and free its request id; and from now on that
        admission admits nothing, should it run only later. Any other admission of the id is left alone. True
        when something was undone. Idempotent."""

    async def give_back(self, account: Account, hold: Hold, pico: int | None, release: bool = False) -> int:
        """When the reconciler charged the admission of `hold` (its nonce) its hold, which its router's charge of
        `pico` (None: its undo, nothing served) kept in an outbox could not reach in time: give back what that charge
        took over `pico` (all of it for an undo) to the tenant's and key's spend of the period it was charged in, with
        a ledger entry of minus as much (given_back_record); an undo's frees the request id as undo frees it, a
        charge's keeps it charged, at the amended total, or, `release` (a charge of 0 that asked it, charge), released
        for a retry when that total is 0, as the charge landing first would have released it. Once, whoever calls it
        how often: the pico-USD given back now, else 0 (given back before, nothing to give back, or the reconciler
        charged no such admission)."""

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        """The request's pending charge; None once it is settled (or was never admitted)."""

    async def record_provider_batch(self, account: Account, hold: Hold, batch_id: str) -> bool:
        """Record the provider batch a deferred request was sent in beside its pending charge (read back as
        Pending.provider_batch; dropped when the charge is settled), when that charge is still this admission's
        (`hold`'s nonce). False when it is not: settled, withdrawn, or another admission's."""

    async def charged_batch(self, account: Account, request_id: str) -> str | None:
        """None when the account's request id was not charged (within the request id TTL), or was used by another
        key of the tenant (while its used id says so); else the provider batch its pending charge recorded when it
        was charged, '' for none (a request that was no provider batch line, or was charged by a router from before
        lines recorded theirs)."""

    async def charged_pico(self, account: Account, request_id: str) -> int | None:
        """What the account's request id was charged in all, when its charged marker says so (marker_charged_pico);
        None as for charged_batch, or when the marker does not say (a line charged by a router of the version
        before)."""

    async def keep_answer(
        self, account: Account, request_id: str, answer: bytes, ttl_s: float, replace: bool = False
    ) -> bool:
        """Keep `answer` (a provider batch line as the collect settling it tells it) for ttl_s under the tenant's
        request id, unless one of the same batch (kept_batch) is kept already (False), or `replace`; one of another
        batch (the request id used again while its earlier line is kept) is replaced: a later collect tells it again
        when the reply to that collect was lost, whether or not the provider can be read by then. Read only by a
        collect of the key whose charge it is (Deferred). StoreUnavailable when the store cannot be reached."""

    async def kept_answer(self, account: Account, request_id: str) -> bytes | None:
        """What keep_answer kept for the tenant's request id, while it is kept."""

    async def spent(self, account: Account, period: str) -> tuple[int, int]:
        """What the account's tenant and key spent in a period (an id from period_id). Without a tenant, the
        key's spend wherever it is kept (an operator's view of one key)."""

    async def carried(self, account: Account, period: str) -> int:
        """What the account's key carried into its tenant's shard for a period when an operator last moved it to the
        tenant (key_move.py): its spend and holds under its other tenants then, counted against its key budget beside
        its spend (never against the tenant's). 0 for a keyless account."""

    async def heartbeat(self, router: str, ttl_s: float, pending_stale_s: float | None = None) -> None:
        """Say that this router instance is alive for `ttl_s` more seconds, and when that lapses by the store's clock
        (its last beat: last_beats.py), for the reconciler to judge how long it has been gone; and, given, the
        ROUTER_PENDING_STALE_S it runs with, for key moves (pending_stale.py)."""

    async def held_pico(self, account: Account) -> tuple[int, int]:
        """What the holds of requests in flight keep from the tenant's and the key's budget (pico-USD), counted as
        admission counts them."""

    def hold_totals(self) -> AsyncIterator[HoldsTotal]:
        """Every holds set's running total beside what its members sum to, each read at one instant."""

    async def bump_hold_totals_epoch(self) -> None:
        """Distrust every running total kept so far: each is rebuilt from a scan of its set when next read."""

    async def choose_hold_totals(self, router: str, interval_s: float) -> bool:
        """With ROUTER_HOLD_TOTALS=auto, trust the totals or not by the live routers' heartbeats (HoldTotals); run
        by `router`'s upkeep each `interval_s`, after its own heartbeat. Whether admission now trusts them; when the
        heartbeats cannot be read (StoreUnavailable), admission counts by a scan until they can."""

    async def limit_overrides(self) -> dict[tuple[str, str], int]:
        """Every limit set for one tenant or key, by (scope, name): scope is 'tenant' or 'key'."""

    async def set_limit(self, scope: str, name: str, pico: int | None) -> int | None:
        """Set (or with None remove) the limit of one tenant or key, overriding the default; returns the limit it
        replaced (None: the default), read in the same step: of two changes at once, the later learns the other's, and
        every shard ends with the later's. RedisStore raises LimitUnconfirmed when the change was recorded but some
        shard did not confirm it (finish_limit_changes completes it)."""

    async def key_moves(self, count: int) -> list[KeyMoveRecord]:
        """The last `count` key moves recorded (store/key_moves.py), the latest first."""

    async def finish_limit_changes(self) -> int:
        """Run by every router's upkeep: finish each limit change left unconfirmed on some shard (store/limits.py);
        how many were. StoreUnavailable when they cannot be finished yet."""

    async def reconcile(self, router: str, lease_s: float, stale_s: float) -> int:
        """When this router holds the reconciler lease, about every `lease_s`: settle, each at its hold, the
        pending charges of routers whose heartbeat has been gone for `lease_s`, by the store's clock against their
        last beat, or as this router saw it for one with none (after a store outage every heartbeat has expired, and
        live routers get that long to renew theirs), and those left
        pending for over `stale_s` (no request runs that long: its charge was lost); a deferred one (Hold.until)
        only once its hold has lapsed, whatever became of its router. Returns how many were settled."""

    async def shards_away(self) -> set[int]:
        """The shards (keys.py) out of reach now, each master asked once, briefly: on a Redis Cluster those of a
        master that does not answer, passed over by a reconcile round or an outbox replay without waiting out a call
        of theirs; none where shards never fail apart. StoreUnavailable when the store cannot be reached at all."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


# The ledger reason of a charge the reconciler settled at its hold.
RECONCILED = "reconciled"


def reconciled_record(pending: Pending) -> dict[str, Any]:
    """The ledger entry of a charge settled for a dead router: the outcome was never known, so the hold, owed whole
    (no tokens are on record for it). It names the model the request was admitted for (Pending.model: '' when its
    admission recorded none) and why it was settled so."""
    cost = format(Decimal(pending.hold_pico) / PICO, "f")  # plain notation, as every charge
    if pending.until:
        detail = "a provider batch line not collected before its hold lapsed: charged its hold, its outcome unknown"
    else:
        detail = "reconciled after a crash: its router died or lost the money store before charging it, so it was "
        detail += "charged its hold, its outcome unknown"
    return pending.ledger_record(
        cost_usd=cost,
        generations=[],
        owed_usd=cost,
        model=pending.model or "",
        reason=RECONCILED,
        reason_detail=detail,
        outcome="reconciled",
        router=pending.router,
        admitted_ts=pending.ts,
    )


# The ledger outcome of an entry giving back part of a reconciled charge (given_back_record): no request of its own.
GIVEN_BACK = "given_back"
# The ledger reason of a give-back of an admission its router undid (given_back_record): it freed the request id, so
# the charges of the id it amends are no charges of it any more (ledger_charges.py).
UNDONE = "undone"


@dataclass(frozen=True)
class Reconciled:
    """What the reconciler charged an admission at its hold (keys.py, AccountKeys.reconciled): the admission (its
    nonce), the pico-USD charged, the budget period it was charged in, and the model its ledger entry and metrics
    named. Only such a charge is ever given back, only in that period, and only up to that much."""

    nonce: str
    pico: int
    period: str
    model: str

    def value(self) -> str:
        return f"{self.nonce} {self.pico} {self.period} {self.model}"  # the model last: it may hold spaces

    @classmethod
    def parse(cls, value: str) -> Reconciled | None:
        parts = value.split(" ", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])


def given_back_record(
    account: Account, request_id: str, reconciled: Reconciled, pico: int, undone: bool
) -> dict[str, Any]:
    """The ledger entry giving back `pico` of a reconciled charge: a negative cost in the period it was charged in,
    under the model it named, so that the ledger's sums (per tenant, key, period, model) equal the spend counters,
    which the give-back lowers as much. Owed whole (no generation), as the reconciled charge it corrects. Every
    version's SQL sink copies it as a row of its own (its ledger entry), summed with the charge it corrects. An undo's
    (`undone`: nothing served, the whole hold) says so by its reason (UNDONE): it freed the request id."""
    cost = format(-Decimal(pico) / PICO, "f")
    if undone:
        why = "its admission was undone by its router, which never served it: the reconciled hold given back whole"
    else:
        why = "its router's charge, kept through a store outage, landed after the reconciler charged the hold: "
        why += "the hold less that charge given back"
    return {
        "request_id": request_id,
        "ts": time.time(),
        "tenant": account.tenant,
        "key": account.key,
        "period": reconciled.period,
        "cost_usd": cost,
        "generations": [],
        "owed_usd": cost,
        "model": reconciled.model,
        "reason": UNDONE if undone else RECONCILED,
        "reason_detail": why,
        "outcome": GIVEN_BACK,
    }
