"""Checks of the money store. At start-up, of the money Redis: a store that may evict keys can drop a spend counter
or a hold, and a budget silently resets; without persistence a restart loses them. On demand, of its running hold
totals (`python -m services.router.money_check hold-totals`): each set's total against a scan of its members, which
admission trusts in their place (ROUTER_HOLD_TOTALS); `bump-hold-totals-epoch` distrusts every total kept so far,
each rebuilt from a scan when admission next reads it (README, Money: running hold totals, upgrades). `ledger-spend`
compares the spend counters of the current budget period (ROUTER_BUDGET_PERIOD's unless --period names another) with
the SQL ledger's charges of it: a counter below them lost charges (a money Redis restored from a backup, a failover
that lost writes; deploy/README.md), and lets its budget be spent again; `--repair` raises it by what it lacks.
`ledger-charges` finds the SQL ledger's charges a restored store forgot (services/router/ledger_charges.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from redis.exceptions import RedisClusterException

from llmrouter.redis_connect import connect, each_answering_primary, each_primary
from llmrouter.settings import load_settings
from services.ledger.settings import LedgerSettings
from services.router.settings import BudgetPeriodSettings
from services.router.store import (
    Account,
    AccountKeys,
    CounterRead,
    HoldsTotal,
    RedisStore,
    Store,
    StoreRefusing,
    StoreUnavailable,
    StreamPosition,
    ledger_key,
    money_now,
    period_id,
    to_pico,
)
from services.router.store.keys import shard_of_key

if TYPE_CHECKING:
    from services.ledger.db import LedgerDB, Unjudged

log = logging.getLogger("llmrouter.router")


async def check_money_redis(
    url: str | SecretStr, allow_eviction: bool, cache_url: str | SecretStr | None = None
) -> list[str]:
    """Exit with a clear message when the money Redis cannot be reached, may evict, or also serves the cache;
    warn when AOF is off. On a Redis Cluster every master is checked: one that evicts loses the budgets of the
    tenants it holds. Returns the masters out of reach, not checked (money_policy.EvictionRecheck checks them once
    back)."""
    import redis.asyncio as redis

    client = connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        # A master of a Redis Cluster down at start-up fails only the requests of its shards: the router starts, and
        # its scripts reach that master once it is back (llmrouter.redis_scripts).
        memory, unreachable = await each_answering_primary(client, "INFO", "memory")
        if not memory:
            raise redis.ConnectionError("no master answers")
        persistence, _ = await each_answering_primary(client, "INFO", "persistence")
        servers, _ = await each_answering_primary(client, "INFO", "server")
    except (redis.ConnectionError, redis.TimeoutError, redis.RedisError, RedisClusterException, OSError) as exc:
        reason = type(exc).__name__
        raise SystemExit(f"router: the money store (ROUTER_REDIS_URL) cannot be reached: {reason}") from None
    finally:
        await client.aclose()
    if unreachable:
        log.error(
            "masters of the money store out of reach at start-up: the requests of their shards fail until they are "
            "back, their maxmemory-policy checked then (the router fails closed if one evicts), their AOF never",
            extra={"masters": unreachable},
        )
    money_ids = {str(info.get("run_id")) for info in servers.values()}
    if cache_url and (await _server_ids(cache_url)) & money_ids:
        # maxmemory and its policy are per server, whatever the database: under noeviction the cache's fill would
        # make the money store refuse admissions (full), and an evicting policy would drop money keys.
        raise SystemExit(
            "router: ROUTER_CACHE_REDIS_URL names the same Redis server as ROUTER_REDIS_URL (the money store): "
            "the response cache needs a Redis of its own (maxmemory-policy allkeys-lru), or leave it unset for "
            "an in-process cache."
        )
    for message in evicting(memory):
        if not allow_eviction:
            raise SystemExit(message)
        log.warning(message)
    if not all(int(info.get("aof_enabled", 0)) for info in persistence.values()):
        log.warning("the money store has AOF off: a Redis restart loses the charges since its last snapshot")
    return unreachable


def evicting(memory: dict[str, Any]) -> list[str]:
    """What is wrong with each master (each_primary's INFO memory of them) whose maxmemory-policy may evict."""
    found = []
    for node, info in memory.items():
        policy = str(info.get("maxmemory_policy", ""))
        if policy != "noeviction":
            where = "" if node == "server" else f" on master {node}"
            found.append(
                f"router: the money store (ROUTER_REDIS_URL) has maxmemory-policy {policy!r}{where}: it may evict "
                "spend counters, holds and request ids, and budgets would reset. Set maxmemory-policy noeviction "
                "(the response cache belongs on ROUTER_CACHE_REDIS_URL), or for development only "
                "ROUTER_ALLOW_EVICTING_MONEY_STORE=true."
            )
    return found


async def _server_ids(url: str | SecretStr) -> set[str]:
    """The run ids of the Redis servers at `url` (every master of a cluster); none when they cannot be asked (a
    cache that fails is bypassed)."""
    import redis.asyncio as redis

    client = connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return {str(info.get("run_id")) for info in (await each_primary(client, "INFO", "server")).values()}
    except (redis.RedisError, RedisClusterException, OSError):
        return set()
    finally:
        await client.aclose()


@dataclass(frozen=True)
class HoldTotalsAudit:
    """Every holds set's running total against a scan of its members. `drifted`: a total trusted (of this epoch and
    of as many members as its set) that sums otherwise, a money error: admission counts its budget wrongly. `stale`:
    a total not trusted, rebuilt from a scan when admission next reads it (as after a bump of the epoch, or beside
    routers of the version before)."""

    checked: int
    drifted: list[HoldsTotal]
    stale: list[HoldsTotal]


async def audit_hold_totals(store: Store) -> HoldTotalsAudit:
    checked, drifted, stale = 0, [], []
    async for found in store.hold_totals():
        checked += 1
        if found.total is None:
            stale.append(found)
        elif found.total != found.scanned:
            drifted.append(found)
    return HoldTotalsAudit(checked, drifted, stale)


# How far back the SQL ledger is read for a period's charges: a charge lands after its admission, in its period.
LOOK_BACK_S = {"day": 2 * 86400, "month": 32 * 86400}


@dataclass(frozen=True)
class SpendShortfall:
    """A spend counter (keys.py, AccountKeys.spend) holding less than the SQL ledger's charges of it. `unjudged`: an
    entry of ledger_rejected that reads as no charge and may be this counter's (a give-back, which lowered it): the
    shortfall may be none, and is not repaired."""

    counter: str
    ledger_pico: int
    counted_pico: int
    unjudged: str | None = None
    repairs: int = 0  # repairs that had raised it when read (keys.py, repairs_key): its raise names that count
    ledger_last: str = ""  # its shard's ledger stream's last id when read (StreamPosition.last): its raise names it


@dataclass(frozen=True)
class SpendAudit:
    """The shortfalls found, and the entries of ledger_rejected that read as no charge (db.Unjudged). `trimmed`: the
    shards whose ledger stream a trim cut into while the check read it (its shortfalls cannot be trusted)."""

    shortfalls: list[SpendShortfall]
    unjudged: list[Unjudged]
    trimmed: list[int]


# How many times ledger-spend reads the ledger when a trim cuts into what it reads (spend_shortfalls): a trim runs for
# seconds, hourly or daily, so the next read finds none.
READS = 3


def ledger_spend(charges: Iterable[tuple[str, str, int]], period: str) -> dict[str, int]:
    """What each spend counter of `period` holds at least: the SQL ledger's charges of that period, each account's
    (tenant, key id, pico: LedgerDB.period_charges) summed per counter as the charge script adds them (the tenant's,
    the key id's in the tenant's shard)."""
    sums: dict[str, int] = {}
    for tenant, key_id, pico in charges:
        for counter in AccountKeys.of(Account(tenant, key_id)).spend(period):
            sums[counter] = sums.get(counter, 0) + pico
    return sums


async def spend_shortfalls(
    store: RedisStore, db: LedgerDB, budget_period: str, sink_group: str | None = None
) -> SpendAudit:
    """The spend counters of the current `budget_period` (day, month, total) below the SQL ledger's charges of them.
    A charge adds to its counters and its ledger entry in one script, and the SQL ledger copies entries later: the SQL
    ledger is read first, so a charge landing meanwhile can only hide a shortfall, never make one. A give-back
    (lua.py, GIVE_BACK) lowers its counters as it adds its negative entry: the SQL ledger is taken as it stands once
    the give-backs it lacks are added, those on the streams from where the sink stood before the SQL ledger was read
    (given_back_waiting). A counter is then never below it unless the store lost charges (or the ledger was
    hand-edited). An entry the sink kept whole in ledger_rejected is in the SQL ledger as a row is (acknowledged, so
    before where the sink stood): counted as the row it would have been, or, when it reads as no charge, its tenant's
    counters (every counter, when it names no tenant) are not judged. Every entry the counters hold is then in the SQL
    ledger read or on its stream when read, unless a trim deleted it from its stream after the SQL ledger was read (the
    sink copied it meanwhile): the ledger is read again when a trim cut into a stream as it was read (_cut_into), READS
    times at most (then SpendAudit.trimmed says where). Charges are counted only as the rows (and rejected entries) hold
    them: one the sink had not copied is in the counters and not in the sum, while its give-back is counted; the sum is
    then below the counters by that charge and hides a loss of up to it until a later check, never makes one. (Exact
    would need the charges on the streams counted too, each known to be in the SQL ledger read or not: a charge the
    sink committed and had not acknowledged is in both, and only the snapshot itself, held open while the streams are
    read, could tell.) `sink_group`: the SQL sink's consumer group (sink.GROUP but in tests)."""
    from services.ledger.sink import GROUP  # imported here for the reason main() says

    for _ in range(READS):
        audit = await _spend_read(store, db, budget_period, sink_group or GROUP)
        if not audit.trimmed:
            break
    return audit


async def _spend_read(store: RedisStore, db: LedgerDB, budget_period: str, sink_group: str) -> SpendAudit:
    """spend_shortfalls, read once."""
    from services.ledger.sink import stream_entry  # imported here for the reason main() says

    look_back = LOOK_BACK_S.get(budget_period)
    period = period_id(budget_period)
    since = None if look_back is None else money_now() - look_back
    # Before where the sink stands: a trim from then on is seen (_cut_into).
    before = await store.ledger_positions()
    # Before the SQL ledger is read: every entry before where the sink stood then is among the rows read.
    unacked_from = await store.ledger_unacked_from(sink_group)
    # The rows and ledger_rejected at one instant: a retention deletes a charge and its give-back together, either of
    # them perhaps kept in ledger_rejected, and a charge read without its give-back would make a loss.
    charges, copied_give_backs, rejected = await db.period_ledger(period, since)
    sums = ledger_spend([*charges, *rejected.charges.values()], period)
    copied_give_backs |= rejected.charges.keys()
    counted: dict[str, int] = {}
    repairs: dict[str, int] = {}
    ledger_last: dict[str, str] = {}
    unreadable: list[Unjudged] = []  # give-backs waiting on their streams that read as none
    trimmed = []
    for shard, counters in _by_shard(sums).items():
        # The counters and the give-backs with them: none lands between the two reads.
        values, given_back, after = await store.spend_and_given_back(shard, counters, unacked_from[shard])
        counted.update(values.pico)
        repairs.update(values.repairs)
        ledger_last.update(dict.fromkeys(counters, after.last))
        if _cut_into(unacked_from[shard], before[shard], after):
            trimmed.append(shard)
        for entry, record in given_back:
            named = stream_entry(ledger_key(shard), entry)
            if named not in copied_give_backs:
                try:
                    given_back_waiting(sums, record or {}, period, since)
                except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:  # no router wrote it
                    unreadable.append(_unreadable_give_back(named, record, exc))
    unjudged = [*rejected.unjudged, *unreadable]
    # Of every account the sums name: one known only by a rejected charge too.
    not_judged = _unjudged_counters(unjudged, [*charges, *rejected.charges.values()], period)
    shortfalls = [
        SpendShortfall(c, sums[c], counted[c], not_judged.get(c, not_judged.get("")), repairs[c], ledger_last[c])
        for c in sorted(sums)
        if counted[c] < sums[c]
    ]
    return SpendAudit(shortfalls, unjudged, trimmed)


def _cut_into(start: str, before: StreamPosition, after: StreamPosition) -> bool:
    """Whether a trim deleted, between the two positions of a stream, an entry at or after XRANGE `start` (which the
    sink may have copied after the SQL ledger was read, so in neither read). A trim deletes from a stream's start only
    (services/router/ledger.py, XTRIM MINID): one that deleted such an entry left the stream's first entry past
    `start`, or none. (One that deleted only entries before it, and every one of them, is taken for one that did.) A
    stream deleted and made again meanwhile counts fewer entries added, or fewer deleted, or holds none of those it
    held (its ids follow theirs): one stream's counts never fall."""
    made_again = after.added < before.added or (
        before.length > 0 and (not after.first or _entry_id(after.first) > _entry_id(before.last))
    )
    deleted = made_again or after.added - after.length != before.added - before.length
    return deleted and (start == "-" or not after.first or _entry_id(after.first) > _entry_id(start.lstrip("(")))


def _unjudged_counters(
    unjudged: Iterable[Unjudged], charges: Iterable[tuple[str, str, int]], period: str
) -> dict[str, str]:
    """The counters an entry that reads as no charge may have moved, each with that entry: its tenant's, and the key
    counters of its tenant's accounts (and of the key it names); under '' when it names no tenant (every counter)."""
    accounts = [(tenant, key) for tenant, key, _ in charges]
    found: dict[str, str] = {}
    for entry in unjudged:
        if entry.tenant is None:
            found.setdefault("", entry.entry)
            continue
        keys = {key for tenant, key in accounts if tenant == entry.tenant} | ({entry.key} if entry.key else set())
        for key in keys or {""}:
            for counter in AccountKeys.of(Account(entry.tenant, key)).spend(period):
                found.setdefault(counter, entry.entry)
    return found


def _unreadable_give_back(entry: str, record: dict[str, Any] | None, exc: Exception) -> Unjudged:
    """A stream entry that names itself a give-back and reads as none: the tenant and key id it names, if as text."""
    from services.ledger.db import Unjudged  # imported here for the reason main() says

    tenant, key = (record or {}).get("tenant"), (record or {}).get("key")
    error = "unreadable record" if record is None else f"no give-back the check can read: {exc!r}"
    named = (tenant if isinstance(tenant, str) else None, key if isinstance(key, str) else None)
    return Unjudged(entry, error, *named, on_stream=True)


def given_back_waiting(sums: dict[str, int], record: dict[str, Any], period: str, since: float | None) -> None:
    """Add to `sums` (ledger_spend's) a give-back the SQL ledger lacks, as it will hold it once copied (of `period`,
    from `since`)."""
    if record["period"] != period or (since is not None and float(record["ts"]) < since):
        return
    _given_back(sums, record["tenant"], record["key"], to_pico(Decimal(record["cost_usd"])), period)


def _given_back(sums: dict[str, int], tenant: str, key: str, pico: int, period: str) -> None:
    """A give-back of `pico` (negative) in each of its counters that the ledger has charges in (one it has none in
    holds no less than 0 anyway)."""
    for counter in AccountKeys.of(Account(tenant, key)).spend(period):
        if counter in sums:
            sums[counter] += pico


def _entry_id(text: str) -> tuple[int, int]:
    """A stream entry id, ordered as Redis orders them."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def _by_shard(counters: Iterable[str]) -> dict[int, list[str]]:
    """The counters of each shard, in order: one script reads a shard's (all its keys share the shard's slot)."""
    found: dict[int, list[str]] = {}
    for counter in sorted(counters):
        found.setdefault(shard_of_key(counter), []).append(counter)
    return found


async def check_ledger_spend(
    store: RedisStore, db: LedgerDB, budget_period: str, repair: bool, sink_group: str | None = None
) -> int:
    period = period_id(budget_period)
    audit = await spend_shortfalls(store, db, budget_period, sink_group)
    if audit.trimmed:
        streams = ", ".join(ledger_key(shard) for shard in audit.trimmed)
        print(
            f"cannot judge: a trim cut into the ledger ({streams}) each of the {READS} times the check read it: no "
            "counter is repaired; run the check again once the trim is done",
            file=sys.stderr,
        )
        return 1
    for found in audit.unjudged:
        whose = (
            f"of tenant {found.tenant!r}: its counters are not repaired"
            if found.tenant is not None
            else "of no tenant it names: no counter is repaired"
        )
        # The sink's reason quoted: it may carry the record's own text.
        where = "its ledger stream holds, not copied yet," if found.on_stream else "ledger_rejected keeps"
        print(f"cannot judge: {where} entry {found.entry!r} ({found.error!r}), {whose}", file=sys.stderr)
    moved = False
    for short in audit.shortfalls:
        lacking = short.ledger_pico - short.counted_pico
        if short.unjudged is not None:
            done = f": not raised, entry {short.unjudged!r} cannot be judged"
        elif not repair:
            done = ""
        else:
            done, again = await _raised(store, short, lacking, period)
            moved = moved or again
        print(
            f"behind the ledger: {short.counter} counts {short.counted_pico} pico-USD, the SQL ledger "
            f"{short.ledger_pico} ({lacking} lacking){done}",
            file=sys.stderr,
        )
    print(f"spend of period {period}: {len(audit.shortfalls)} counter(s) behind the SQL ledger")
    # An entry it cannot judge may be a charge the SQL ledger lacks (a loss hidden): never all clear.
    return 1 if audit.unjudged or moved or (audit.shortfalls and not repair) else 0


async def _raised(store: RedisStore, short: SpendShortfall, lacking: int, period: str) -> tuple[str, bool]:
    """A shortfall's raise, said as the check prints it, and whether it must be run again."""
    read = CounterRead(short.counted_pico, short.repairs, short.ledger_last)
    try:
        raised = await store.raise_spend(short.counter, read, lacking, period)
    except (StoreUnavailable, StoreRefusing):  # its reply lost, perhaps after it ran: the next check reads which
        return ": not known whether raised, the money Redis did not answer: run the check again", True
    if raised == "raised":
        return ": raised", False
    if raised == "repaired since":  # perhaps by this same loss: what it lacks now is unknown
        return ": not raised, another repair raised it since it was read: run the check again", True
    # No charge or give-back moved it: a repair that counts no repair (the version before's) may have added this loss.
    return (
        ": not raised, it moved since it was read with no ledger entry beside it (a repair of the version before?): run"
        " the check again",
        True,
    )


def money_store() -> tuple[LedgerSettings, RedisStore] | None:
    """The routers' money Redis (ROUTER_REDIS_URL; no server settings) for an operator's command on it, beside the
    settings naming it; None, said on stderr, when none is named: the in-process store lives in its router."""
    settings = load_settings(LedgerSettings)
    if not settings.redis_url:
        print("ROUTER_REDIS_URL is not set: the in-process store lives in its router", file=sys.stderr)
        return None
    return settings, RedisStore(settings.redis_url)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.router.money_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["hold-totals", "bump-hold-totals-epoch", "ledger-spend", "ledger-charges"])
    parser.add_argument(
        "--period",
        choices=["day", "month", "total"],
        help="ledger-spend: the budget period to check (default: ROUTER_BUDGET_PERIOD's, as the routers read it)",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="ledger-spend: raise each counter by what it lacks; ledger-charges: mark each request id forgotten, drop "
        "each pending charge come back",
    )
    args = parser.parse_args(argv)
    money = money_store()
    if money is None:
        return 2
    settings, store = money
    try:
        if args.command == "ledger-charges":
            from services.router import ledger_charges  # imports services.ledger, as ledger-spend does below

            return await ledger_charges.run(store, settings, args.repair)
        if args.command == "ledger-spend":
            # Imported here: services.ledger.db imports the router's package, which imports this module.
            from services.ledger.service import ledger_for

            await store.ping()  # the current period by the money's clock
            db = ledger_for(settings)
            try:
                period = args.period or load_settings(BudgetPeriodSettings).budget_period
                return await check_ledger_spend(store, db, period, args.repair)
            finally:
                db.close()
        if args.command == "bump-hold-totals-epoch":
            await store.bump_hold_totals_epoch()
            print("hold totals: epoch bumped; each is rebuilt from a scan when admission next reads it")
            return 0
        audit = await audit_hold_totals(store)
        older = await store.older_routers_alive()
    finally:
        await store.close()
    for found in audit.drifted:
        print(f"drifted: {found.holds} total {found.total} scanned {found.scanned}", file=sys.stderr)
    print(f"hold totals: {audit.checked} sets, {len(audit.drifted)} drifted, {len(audit.stale)} to be rebuilt")
    if older:  # their holds move no total: drift is their doing, a money error only for routers set to trust
        print(
            f"{older} live router(s) keep no hold totals (a version before them): routers on ROUTER_HOLD_TOTALS=auto "
            "count holds by a scan until they are gone, then rebuild every total; routers on trust count wrongly",
            file=sys.stderr,
        )
    return 1 if audit.drifted else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
