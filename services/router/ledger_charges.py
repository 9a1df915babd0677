"""The SQL ledger's charges that a money Redis restored from a backup forgot, made known to it again
(`python -m services.router.money_check ledger-charges [--repair]`; deploy/README.md, restoring the money Redis).

A store restored from before time T has forgotten the charges since T: their request ids are free again, so a
client's retry is admitted and charged a second time; and the pending charges and holds of the requests settled
since T are back, each holding its budget until the reconciler charges it its hold, a second charge. For each
(tenant, request id) the SQL ledger charged within the request id TTL (ROUTER_REQUEST_ID_TTL_S), or earlier with its
admission's marked_until still ahead, whose charged marker the store lacks, the repair marks the id used and charged
until the TTL after its last charge (and no sooner than marked_until), as that charge did (lua.py, CHARGE); and it
drops the request's pending charge and hold as a charge drops them, adding no spend and no ledger entry: the charge
is counted (ledger-spend raises the spend counters to the SQL ledger's charges). One script a shard's slot, each
request in it atomically (lua.py, LEDGER_CHARGED).

A pending charge of such a request id is dropped whichever admission it is: the one the SQL ledger charged (come
back with the restore), or a retry admitted since the restore, before the repair (the markers would have refused
it): that retry's charge then meets the charged marker and is refused as a repeat, so the request is charged once.
But not one whose charged marker is there naming only other admissions (a store that lost the admission charged let
the id in again): CHARGE charges that one all the same, by its own charge or the reconciler's, so it keeps its hold.
A charged marker that released its id for a retry (model.py, RELEASED) naming fewer charges than the SQL ledger holds
is taken for forgotten: the restore went back to before the retry's charge, and left so, the retry of that served
retry was admitted again, or its pending charge taken for another admission in flight and charged its hold.
A request the SQL ledger has no charge of (in flight, or its charge not copied yet) is never touched. Safe beside
serving routers, and idempotent: a request whose charged marker is there is only looked at for a pending charge."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llmrouter.json_depth import loads_stored
from llmrouter.redis_scripts import Script
from llmrouter.settings import load_settings
from services.ledger.db import Charge, LedgerDB
from services.ledger.service import ledger_for
from services.ledger.settings import LedgerSettings
from services.router.settings import RequestIdSettings
from services.router.store import Account, AccountKeys, RedisStore, lua, money_now, pending_field
from services.router.store.keys import batches_key, hold_totals_epoch_key, models_key, pending_key, prices_key
from services.router.store.model import CHARGED_TOTAL, RECONCILED, UNDONE

# Requests a script call repairs: each call blocks the shard's Redis for its length.
CHUNK = 100
# A row's ledger entry as the sink names a Redis stream's (services/ledger/sink.py, stream_entry): the stream, then
# the entry id, whose first part is when Redis added it (Unix ms, by its own clock).
STREAM_ENTRY = re.compile(r"\S+ (\d+)-(\d+)")


@dataclass(frozen=True)
class LedgerCharge:
    """What the SQL ledger charged one tenant's request id within the request id TTL: `pico` in all, the last charge
    landing at `landed_ms` (Unix ms, landed) by `key` (the key id that used the id)."""

    tenant: str
    request_id: str
    key: str
    pico: int
    landed_ms: int
    # Until when its admissions' charges are marked (Hold.marked_until, Unix ms; 0: not on record), which a router
    # with a longer request id TTL than the repair's may have set.
    marked_until_ms: int = 0
    # How many charges landed on it (give-backs aside): a charged marker released for a retry (model.py, RELEASED)
    # that names fewer is one a restore took back to before the retry's charge (lua.py, LEDGER_CHARGED).
    charges: int = 0

    @property
    def shard(self) -> int:
        return AccountKeys.of(Account(self.tenant, self.key)).shard

    def markers_expire_ms(self, request_id_ttl_s: int) -> int:
        """When its last charge's markers expire (Unix ms, by Redis' clock), as that charge set them: the request id
        TTL after it lands, and no sooner than its admission's marked_until (lua.py, CHARGE). Marked again to expire
        sooner, a charge of the admission met before marked_until (its router frozen, or its reply lost and replayed
        from an outbox) was taken for one whose admission the store lost, and charged again."""
        return max(self.landed_ms + request_id_ttl_s * 1000, self.marked_until_ms)


@dataclass(frozen=True)
class Finding:
    """What the money store lacked, or held too much, of one LedgerCharge: `forgotten`, its charged marker (its request
    id marked used and charged); `come_back`, the hold (pico-USD) of a pending charge of it (dropped); `left`, why it
    was left alone ('' when it was not)."""

    charge: LedgerCharge
    forgotten: bool
    come_back: int | None
    left: str

    @property
    def found(self) -> bool:
        return self.forgotten or self.come_back is not None or bool(self.left)


def ledger_charges(rows: Iterable[Charge]) -> list[LedgerCharge]:
    """The rows' charges, one per (tenant, request id): summed, named by the last (rows come oldest first), dated by
    the last charge landing. An undo's give-back (model.py, UNDONE) freed the request id of its admission (lua.py,
    GIVE_BACK): it and the reconciled charge it gave back whole are no charge of the id, which marked again would refuse
    the retry of a request never served, and drop that retry's pending charge: served, and never charged. Another
    admission's charge of the id (a store that lost one let it in again) stands, landed before it or after: GIVE_BACK
    keeps the id used for it."""
    found: dict[tuple[str, str], list[Charge]] = {}
    for row in rows:
        found.setdefault((str(row.tenant), str(row.request_id)), []).append(row)
    charges = []
    for (tenant, request_id), each in found.items():
        kept = _without_undone(each)
        if kept:
            # A give-back (the only row of a negative cost: model.py, given_back_record) lands up to a TTL after the
            # reconciled charge it amends and leaves its markers' TTL as it was (lua.py, GIVE_BACK): it dates nothing.
            landed_ms = max((landed(row) for row in kept if row.cost_pico >= 0), default=0)
            pico = sum(int(row.cost_pico) for row in kept)
            marked_ms = max((math.ceil(row.marked_until * 1000) for row in kept if row.marked_until), default=0)
            count = sum(1 for row in kept if row.cost_pico >= 0)
            charges.append(LedgerCharge(tenant, request_id, str(kept[-1].key_id), pico, landed_ms, marked_ms, count))
    return charges


def _without_undone(rows: list[Charge]) -> list[Charge]:
    """One request id's rows less each undo's give-back and the reconciled charge it gave back: the last of that
    amount landed before it (by ledger entry order) not given back already. Rows name no admission; the reconciled
    charge an undo gives back is its hold, whole. One whose charge is before the rows read is dropped alone."""
    dropped: set[int] = set()
    for i, row in sorted(enumerate(rows), key=lambda each: _landed_at(each[1])):
        if row.reason != UNDONE or row.cost_pico >= 0:
            continue
        dropped.add(i)
        amended = [
            j
            for j, charge in enumerate(rows)
            if j not in dropped
            and charge.reason == RECONCILED
            and int(charge.cost_pico) == -int(row.cost_pico)
            and _landed_at(charge) < _landed_at(row)
        ]
        if amended:
            dropped.add(max(amended, key=lambda j: _landed_at(rows[j])))
    return [row for i, row in enumerate(rows) if i not in dropped]


def landed(row: Charge) -> int:
    """When a row's charge landed, in Unix ms by Redis' clock, which its markers' TTL runs on (lua.py, CHARGE: set
    as it lands): its ledger entry id's time. Its `ts` is its router's own clock, seconds or minutes off on a skewed
    pod, and taken before the charge landed (an outbox's replay, hours later); only a row of no Redis stream (a
    version before named none) is dated by it."""
    return _landed_at(row)[0]


def _landed_at(row: Charge) -> tuple[int, int]:
    """A row's place in its shard's ledger stream, whose entries Redis numbers in the order they landed, as its
    request's markers changed: (ms, sequence). A row of no stream is placed by its `ts`."""
    entry = STREAM_ENTRY.fullmatch(str(row.ledger_entry or ""))
    return (int(entry.group(1)), int(entry.group(2))) if entry else (int(float(row.ts) * 1000), 0)


async def settle_forgotten(
    store: RedisStore, charges: list[LedgerCharge], request_id_ttl_s: int, repair: bool
) -> list[Finding]:
    """Each charge's Finding (only those with something found); with `repair`, each mended as Finding says. A charge
    whose markers have expired by now is none the store forgot: its request id is free again, and a request that uses
    it again is a new one, whose pending charge is no charge come back."""
    script = Script(store.redis, lua.LEDGER_CHARGED)
    findings = []
    for shard, listed in _chunks(charges):
        now_ms = money_now() * 1000
        chunk = [charge for charge in listed if charge.markers_expire_ms(request_id_ttl_s) > now_ms]
        if not chunk:
            continue
        fields = [pending_field(Account(c.tenant, c.key), c.request_id) for c in chunk]
        # The key each pending charge was admitted by: its holds are in that key's set (the script checks it still is).
        records = await store.redis.hmget(pending_key(shard), fields)
        keys = [_pending_key(record) for record in records]
        names = [pending_key(shard), batches_key(shard), models_key(shard), prices_key(shard)]
        names.append(hold_totals_epoch_key(shard))
        args: list[str | int] = ["1" if repair else "0"]
        for charge, field, key in zip(chunk, fields, keys, strict=True):
            used_by = AccountKeys.of(Account(charge.tenant, charge.key))
            held_by = AccountKeys.of(Account(charge.tenant, key or charge.key))
            names += [used_by.used(charge.request_id), used_by.charged(charge.request_id), *held_by.held()]
            expiry_ms = charge.markers_expire_ms(request_id_ttl_s)
            # An entry naming no admission: a later charge of the id is refused as a repeat, but its own pending
            # charge's (lua.py, CHARGE); the total is what a duplicate's refusal tells.
            marker = f"1 {CHARGED_TOTAL}{charge.pico}"
            member = held_by.hold_member(0, charge.request_id)
            args += [field, member, key or "", used_by.key_hex, expiry_ms, marker, charge.charges]
        told = await script(keys=names, args=args)
        for charge, (forgotten, held, left) in zip(chunk, told, strict=True):
            finding = Finding(charge, _text(forgotten) == "1", int(_text(held)) if _text(held) else None, _text(left))
            if finding.found:
                findings.append(finding)
    return findings


def _chunks(charges: list[LedgerCharge]) -> Iterator[tuple[int, list[LedgerCharge]]]:
    by_shard: dict[int, list[LedgerCharge]] = {}
    for charge in charges:
        by_shard.setdefault(charge.shard, []).append(charge)
    for shard, each in sorted(by_shard.items()):
        for start in range(0, len(each), CHUNK):
            yield shard, each[start : start + CHUNK]


def _pending_key(record: Any) -> str | None:
    """The key a pending charge's record names ('' when it names none); None for no record, or one that is no JSON
    object (the script leaves it, told: no router can settle it either)."""
    if record is None:
        return None
    try:
        decoded = loads_stored(record)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    key = decoded.get("key")
    return key if isinstance(key, str) else ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def check_ledger_charges(store: RedisStore, db: LedgerDB, request_id_ttl_s: int, repair: bool) -> int:
    """Every charge of the SQL ledger within the request id TTL checked against the store (with `repair`, mended);
    what was found printed. 1 when anything is to do (with `repair`: anything left alone), else 0."""
    # Rows are dated by their routers' clocks, and some landed long after (an outbox's replay): read a TTL further
    # back, and keep what landed within the TTL (settle_forgotten).
    # And older ones whose admission's marked_until is ahead (admitted by a router of a longer TTL, a batch line's):
    # their markers live till then (LedgerCharge.markers_expire_ms).
    now = money_now()
    since, now_ms = now - 2 * request_id_ttl_s, now * 1000
    rows = db.iter_charges(since, marked_after=now)
    charges = [c for c in ledger_charges(rows) if c.markers_expire_ms(request_id_ttl_s) > now_ms]
    findings = await settle_forgotten(store, charges, request_id_ttl_s, repair)
    for finding in findings:
        charge = finding.charge
        request = f"tenant {charge.tenant!r} request {charge.request_id!r}"
        if finding.forgotten:
            done = ": marked" if repair else ""
            print(f"forgotten: {request}, charged {charge.pico} pico-USD by the SQL ledger{done}", file=sys.stderr)
        if finding.come_back is not None:
            done = ": dropped" if repair else ""
            print(f"come back: {request}, a pending charge holding {finding.come_back} pico-USD{done}", file=sys.stderr)
        if finding.left:
            print(f"left alone: {request}: {finding.left}", file=sys.stderr)
    forgotten = sum(f.forgotten for f in findings)
    come_back = sum(f.come_back is not None for f in findings)
    left = sum(bool(f.left) for f in findings)
    print(
        f"charges of the SQL ledger within the request id TTL: {len(charges)}, {forgotten} forgotten by the money "
        f"store, {come_back} pending charge(s) come back, {left} left alone"
    )
    return 1 if left or (findings and not repair) else 0


async def run(store: RedisStore, settings: LedgerSettings, repair: bool) -> int:
    """money_check ledger-charges: the SQL ledger the settings name, the request id TTL the routers' settings do."""
    await store.ping()  # the request id TTL's start by the money's clock
    db = ledger_for(settings)
    try:
        return await check_ledger_charges(store, db, load_settings(RequestIdSettings).request_id_ttl_s, repair)
    finally:
        db.close()
