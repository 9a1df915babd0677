"""A key's budget holds across a move between tenants. A key's spend and holds are kept in its tenant's shard, and a
move (python -m services.router.key_move) left them there: the key's budget started again under its new tenant, so
it could spend about twice its limit in one period. The move now carries what the key spent and holds in every other
shard into the new one (store/keys.py, AccountKeys.carried), counted against the key's budget alone. On one real Redis
and a real Redis Cluster (the tenants in two shards, on the cluster two masters' slots maybe), the store's scripts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from services.router import key_move
from services.router.budget_alerts import use
from services.router.budgets import budgets
from services.router.operator_servicer import budget_message
from services.router.outbox import Outbox
from services.router.store import DEFERRED_HOLD_S, HOLDS_LINGER_S, Account, Allowance, Hold, RedisStore, period_id
from services.router.store.keys import GLOBAL_SLOT, PENDING_STALE, AccountKeys, key_tenant_key, shard_of
from services.router.store.model import next_period, period_start, spend_ttl_s
from services.router.store.pending_stale import PendingStale
from services.router.upkeep import Upkeep
from tests.redis_servers import RedisCluster, RedisServer, free_port
from tests.router.servicer_kit import store_on
from tests.router.test_key_of_two_tenants import KEY, tenants

OLD, NEW = tenants(same_shard=False)
DAY_ONE = 1_800_000_000.25  # 2027-01-15 08:00 UTC
LIMIT = 1000  # the key's, pico-USD
ALLOWANCE = Allowance("day", key_pico=LIMIT)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The time (its one item), which the test moves on (a period's end)."""
    now = [DAY_ONE]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


@pytest.fixture
async def store(any_redis_url: str, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RedisStore]:
    """A store on the clock, whose key_move names the same Redis."""
    monkeypatch.setenv("ROUTER_REDIS_URL", any_redis_url)
    async with store_on(any_redis_url) as made:
        yield made


async def admitted(store: RedisStore, tenant: str, request_id: str, pico: int, key: str = KEY) -> str:
    """Admits the request (its refusal: '' none) under the key's binding read now."""
    binding = await store.bind_key(key, tenant)
    assert binding.tenant == tenant
    hold = Hold(request_id, pico, period_id("day"), "router-1", f"n-{request_id}")
    return (await store.admit(Account(tenant, key), ALLOWANCE, hold, moves=binding.moves)).refused


async def spend(store: RedisStore, tenant: str, request_id: str, pico: int) -> None:
    """Admits the request and charges its hold."""
    assert await admitted(store, tenant, request_id, pico) == ""
    hold = Hold(request_id, pico, period_id("day"), "router-1", f"n-{request_id}")
    assert await store.charge(Account(tenant, KEY), hold, pico, {})


async def counted_under_the_new_tenant(store: RedisStore) -> None:
    """The key's 600 held under the old tenant was charged whole in that tenant's shard today: under its new tenant the
    key is admitted its limit less that."""
    assert await store.spent(Account(OLD, KEY), period_id("day")) == (600, 600)  # landed on that day
    assert await admitted(store, NEW, "r2", 500) == "key"
    assert await admitted(store, NEW, "r3", 400) == ""


async def reconciled_then_counted(
    store: RedisStore, clock: list[float], at: float, ttl_s: float, pending_stale_s: float
) -> None:
    """At `at`, another router's reconciler charges the key's 600 held under the old tenant (as stale, at its hold):
    counted under the new tenant that day."""
    clock[0] = at
    assert await store.reconcile("router-2", ttl_s, pending_stale_s) == 1
    await counted_under_the_new_tenant(store)


async def test_a_key_moved_to_another_tenant_spends_no_more_than_its_limit_in_the_period(store: RedisStore) -> None:
    """800 of 1,000 spent under the old tenant: under the new one 300 is refused for the key's budget, 200 admitted;
    the new tenant's own budget is not charged what it did not spend (another key of it may use all of its limit
    that the 200 in flight leave)."""
    await spend(store, OLD, "r1", 800)
    assert await key_move.main([KEY, NEW]) == 0
    assert await admitted(store, NEW, "r2", 300) == "key"
    assert await admitted(store, NEW, "r3", 200) == ""
    day = period_id("day")
    assert await store.spent(Account(OLD, KEY), day) == (800, 800)  # the old tenant's accounting keeps its spend
    assert await store.spent(Account(NEW, KEY), day) == (0, 0)  # the new tenant spent nothing
    other, tenant_wide = "fedcba9876543210", Allowance("day", tenant_pico=LIMIT)
    binding = await store.bind_key(other, NEW)
    rest = Hold("r4", LIMIT - 200, day, "router-1", "n-r4")
    assert (await store.admit(Account(NEW, other), tenant_wide, rest, moves=binding.moves)).refused == ""


async def test_a_hold_under_the_new_tenant_grows_only_within_what_the_key_has_left(store: RedisStore) -> None:
    """A stream's hold grown past its first estimate (Store.extend) meets the same key budget as its admission."""
    await spend(store, OLD, "r1", 700)
    assert await key_move.main([KEY, NEW]) == 0
    assert await admitted(store, NEW, "r2", 100) == ""
    hold = Hold("r2", 100, period_id("day"), "router-1", "n-r2")
    assert await store.extend(Account(NEW, KEY), ALLOWANCE, hold, 400) == "key"
    assert await store.extend(Account(NEW, KEY), ALLOWANCE, hold, 300) == ""


async def test_what_the_key_holds_under_the_old_tenant_at_the_move_is_carried(store: RedisStore) -> None:
    """A request in flight under the old tenant may still be charged up to its hold, after the move: counted."""
    assert await admitted(store, OLD, "r1", 600) == ""
    assert await key_move.main([KEY, NEW]) == 0
    assert await admitted(store, NEW, "r2", 500) == "key"
    assert await admitted(store, NEW, "r3", 400) == ""


Hook = Callable[[], Awaitable[None]]


class AdmittingDuringTheMove(RedisStore):
    """A store on which a request is admitted while a move runs: under the key's old tenant once the move has carried
    what the key had (before the key is rebound and the move's token reached the old tenant's shard); or under the new
    one once the key is rebound and every shard has the token, before the move reads what the key has again."""

    before_rebinding: Hook | None = None  # run after what the key has is read while it is still bound to the old
    after_rebinding: Hook | None = None  # run before what the key has is read once it is bound to the new one

    async def _carry(self, key: str, tenant: str, pending_stale_s: float) -> None:
        rebound = await self.key_tenant(key) == tenant
        if rebound and self.after_rebinding is not None:
            await self.after_rebinding()
        await super()._carry(key, tenant, pending_stale_s)
        if not rebound and self.before_rebinding is not None:
            await self.before_rebinding()


@pytest.mark.parametrize("during", ["old tenant, after the first read", "new tenant, before the last read"])
async def test_what_is_admitted_while_the_move_runs_counts(any_redis_url: str, clock: list[float], during: str) -> None:
    """Under the old tenant once the move has first read what the key has: read again once every shard has the move's
    token, nothing admitted there is missed. Under the new tenant once the key is rebound, before that second read: it
    meets what the move carried before the rebinding."""
    moving = AdmittingDuringTheMove(any_redis_url)
    try:
        await spend(moving, OLD, "r1", 500)
        ran = []

        async def admit_under_old() -> None:
            ran.append(await admitted(moving, OLD, "r2", 300))

        async def admit_under_new() -> None:
            ran.append(await admitted(moving, NEW, "r2", 600))

        if during.startswith("old"):
            moving.before_rebinding = admit_under_old
        else:
            moving.after_rebinding = admit_under_new
        await moving.move_key(KEY, NEW)
        if during.startswith("old"):
            assert ran == [""]
            assert await admitted(moving, NEW, "r3", 300) == "key"
            assert await admitted(moving, NEW, "r4", 200) == ""
        else:
            assert ran == ["key"]
    finally:
        await moving.close()


async def test_a_key_moved_back_counts_each_spend_once(store: RedisStore) -> None:
    """Old 500, new 300, back to the old: 800 spent, so 200 is admitted there (what it carried into the new tenant,
    the old one's own spend, is not carried back on top of it) and 250 refused."""
    await spend(store, OLD, "r1", 500)
    assert await key_move.main([KEY, NEW]) == 0
    await spend(store, NEW, "r2", 300)
    assert await key_move.main([KEY, OLD]) == 0
    assert await admitted(store, OLD, "r3", 250) == "key"
    assert await admitted(store, OLD, "r4", 200) == ""


async def test_a_key_moved_within_its_shard_carries_nothing(store: RedisStore) -> None:
    """Two tenants of one shard share the key's spend there already: nothing more is carried."""
    first, second = tenants(same_shard=True)
    await spend(store, first, "r1", 800)
    assert await key_move.main([KEY, second]) == 0
    assert await admitted(store, second, "r2", 300) == "key"
    assert await admitted(store, second, "r3", 200) == ""


async def test_the_carried_spend_counts_in_its_own_period_alone(store: RedisStore, clock: list[float]) -> None:
    """Moved near the day's end: the next day the key's budget under its new tenant is whole again."""
    clock[0] = DAY_ONE + 15 * 3600  # 23:00 UTC
    await spend(store, OLD, "r1", 900)
    assert await key_move.main([KEY, NEW]) == 0
    assert await admitted(store, NEW, "r2", 200) == "key"
    clock[0] = DAY_ONE + 17 * 3600  # the next day
    assert await admitted(store, NEW, "r3", LIMIT) == ""


async def test_the_budgets_view_shows_what_the_key_carried(store: RedisStore) -> None:
    """The key's row under its new tenant: its own spend, what it carried beside it, and what admission leaves."""
    await spend(store, OLD, "r1", 800)
    assert await key_move.main([KEY, NEW]) == 0
    await spend(store, NEW, "r2", 100)
    views = await budgets(store, ALLOWANCE, [Account(OLD, KEY), Account(NEW, KEY)])
    rows = {view.tenant: view for view in views if view.scope == "key"}
    assert (rows[OLD].spent_pico, rows[OLD].carried_pico, rows[OLD].remaining_pico) == (800, 0, 200)
    assert (rows[NEW].spent_pico, rows[NEW].carried_pico, rows[NEW].remaining_pico) == (100, 800, 100)
    shown = {tenant: budget_message(view) for tenant, view in rows.items()}  # as Budgets and the edge show it
    assert (shown[OLD].carried_usd, shown[NEW].carried_usd, shown[NEW].remaining_usd) == (
        "",
        "0.0000000008",
        "0.0000000001",
    )
    assert use(rows[NEW]) == 0.9  # the budget alerts' use


async def test_a_hold_carried_at_the_move_is_not_carried_into_the_next_period(
    store: RedisStore, clock: list[float]
) -> None:
    """A request in flight under the old tenant at a move early in the day holds 600 for minutes, and is charged 100
    within the day: the next day, the key's budget under its new tenant is whole again (its hold, gone long before,
    is no spend of that day; at the routers' hour, its charge lost, the reconciler would charge it that day too)."""
    assert await admitted(store, OLD, "r1", 600) == ""
    assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    hold = Hold("r1", 600, period_id("day"), "router-1", "n-r1")
    assert await store.charge(Account(OLD, KEY), hold, 100, {})
    clock[0] = DAY_ONE + 17 * 3600  # the next day
    assert await admitted(store, NEW, "r2", LIMIT) == ""


async def test_a_hold_open_past_the_period_end_at_the_move_is_carried_into_the_next(
    store: RedisStore, clock: list[float]
) -> None:
    """Moved seconds before the day's end, a request in flight under the old tenant is charged its whole hold just
    after it, in the next day: that day the key under its new tenant has its limit less that charge."""
    clock[0] = DAY_ONE + 16 * 3600 - 10  # 23:59:50 UTC
    assert await admitted(store, OLD, "r1", 600) == ""
    assert await key_move.main([KEY, NEW]) == 0
    (row,) = [view for view in await budgets(store, ALLOWANCE, [Account(NEW, KEY)]) if view.scope == "key"]
    assert (row.carried_pico, row.next_carried_pico, row.remaining_pico) == (600, 600, 400)
    hold = Hold("r1", 600, period_id("day"), "router-1", "n-r1")
    clock[0] = DAY_ONE + 16 * 3600 + 30  # the next day
    assert await store.charge(Account(OLD, KEY), hold, 600, {})
    assert await admitted(store, NEW, "r2", 500) == "key"
    assert await admitted(store, NEW, "r3", 400) == ""


async def test_a_hold_under_the_old_tenant_grows_no_more_once_the_key_moved(store: RedisStore) -> None:
    """600 held under the old tenant at the move, carried; 400 then admitted under the new one: the hold's growth to
    900 under the old tenant, which its shard alone would allow, is refused 'moved' (the key would pass its limit)."""
    binding = await store.bind_key(KEY, OLD)
    hold = Hold("r1", 600, period_id("day"), "router-1", "n-r1")
    assert (await store.admit(Account(OLD, KEY), ALLOWANCE, hold, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW]) == 0
    assert await admitted(store, NEW, "r2", 400) == ""
    assert await store.extend(Account(OLD, KEY), ALLOWANCE, hold, 900, moves=binding.moves) == "moved"


async def test_what_the_key_carried_counts_against_no_tenant_budget(store: RedisStore) -> None:
    """800 spent under the old tenant, carried: under the new tenant, whose own limit is 1,000 and which spent
    nothing, the moved key itself (no key limit) is admitted the tenant's whole limit."""
    await spend(store, OLD, "r1", 800)
    assert await key_move.main([KEY, NEW]) == 0
    binding = await store.bind_key(KEY, NEW)
    whole = Hold("r2", LIMIT, period_id("day"), "router-1", "n-r2")
    tenant_only = Allowance("day", tenant_pico=LIMIT)
    assert (await store.admit(Account(NEW, KEY), tenant_only, whole, moves=binding.moves)).refused == ""


async def test_a_batch_line_held_past_the_next_period_at_the_move_is_carried_into_it(
    store: RedisStore, clock: list[float]
) -> None:
    """A provider batch line's hold lasts 26 h (DEFERRED_HOLD_S): one admitted under the old tenant late on day one and
    moved then is still held, and may be collected, on day three. Collected there at its whole hold, in the old
    tenant's shard, it is that day's spend of the key, so under its new tenant the key has its limit less it; the move
    carried the key's spend and holds into day one and day two alone, and the key spent its limit again on day three."""
    clock[0] = DAY_ONE + 15 * 3600  # 23:00 UTC, day one
    binding = await store.bind_key(KEY, OLD)
    line = Hold("b1", 600, period_id("day"), "router-1", "n-b1", until=clock[0] + DEFERRED_HOLD_S)
    assert (await store.admit(Account(OLD, KEY), ALLOWANCE, line, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW]) == 0
    clock[0] = DAY_ONE + 40 * 3600  # 00:00 UTC, day three: the line still held
    assert await store.charge(Account(OLD, KEY), line, 600, {})
    await counted_under_the_new_tenant(store)  # landed on day three


@pytest.mark.money_clock_follows  # the money's clock follows Redis' TIME here (tests/conftest.py)
async def test_a_move_from_a_machine_whose_clock_is_a_day_ahead_carries_the_routers_day(
    any_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """key_move dates what it carries by the money Redis' clock, as the routers date their budget periods: run on a
    machine whose clock says tomorrow (an operator's laptop, a job's node), it carries the key's spend into the day the
    routers count, not into tomorrow and the day after, which let the key spend its limit again today."""
    monkeypatch.setenv("ROUTER_REDIS_URL", any_redis_url)
    machines = time.time
    async with store_on(any_redis_url) as router:
        assert await router.ping()  # the router's money clock: Redis'
        await spend(router, OLD, "r1", 800)
        monkeypatch.setattr(time, "time", lambda: machines() + 86400)  # the machine key_move runs on
        assert await key_move.main([KEY, NEW]) == 0
        monkeypatch.setattr(time, "time", machines)
        assert await router.ping()
        assert await admitted(router, NEW, "r2", 300) == "key"
        assert await admitted(router, NEW, "r3", 200) == ""


async def test_a_hold_past_its_expiry_at_the_move_is_carried_into_each_day_the_reconciler_may_charge_it_in(
    store: RedisStore, clock: list[float]
) -> None:
    """A hold past its expiry at the move, its charge still open (its router alive, the charge lost, or waiting in an
    outbox), is charged at the latest by the reconciler, ROUTER_PENDING_STALE_S after its admission: up to
    HOLDS_LINGER_S (a week), the old tenant's shard counting it meanwhile. Set to 36 h, it lands on day three, in the
    old tenant's shard: that day's spend of the key. The move carried it into day one and day two alone, and under its
    new tenant the key spent its limit again on day three."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one; held HOLD_S
    clock[0] = DAY_ONE + 3600  # its hold past its expiry, its charge open
    assert await key_move.main([KEY, NEW]) == 0
    await reconciled_then_counted(store, clock, DAY_ONE + 40 * 3600, 5.0, 36 * 3600)  # 00:00 UTC, day three


@pytest.mark.parametrize("told", ["flag", "environment"])
async def test_a_hold_past_its_expiry_is_carried_no_further_than_the_routers_pending_stale_s(
    store: RedisStore, clock: list[float], monkeypatch: pytest.MonkeyPatch, told: str
) -> None:
    """Not knowing ROUTER_PENDING_STALE_S, the move carried a hold past its expiry into every day of the week after it
    (HOLDS_LINGER_S): charged within the routers' hour on day one, it still took the key's limit on day three under
    its new tenant. Told the routers' hour (--pending-stale-s, or ROUTER_PENDING_STALE_S as the routers read it), the
    move carries it into day one and the next alone, where it may land."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one; held HOLD_S
    clock[0] = DAY_ONE + 3600  # its hold past its expiry, its charge open
    if told == "flag":
        monkeypatch.setenv("ROUTER_PENDING_STALE_S", str(HOLDS_LINGER_S))  # the flag overrides it
        assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    else:
        monkeypatch.setenv("ROUTER_PENDING_STALE_S", "3600")
        assert await key_move.main([KEY, NEW]) == 0
    clock[0] = DAY_ONE + 2 * 3600 + 1
    assert await store.reconcile("router-2", 5.0, 3600) == 1  # charged at its hold, as stale, on day one
    clock[0] = DAY_ONE + 40 * 3600  # 00:00 UTC, day three
    assert await admitted(store, NEW, "r2", LIMIT) == ""


async def test_a_hold_past_its_expiry_is_carried_into_each_day_within_the_pending_stale_s_given(
    store: RedisStore, clock: list[float]
) -> None:
    """Errs safe: given the routers' 40 h, the move carries a hold past its expiry into day three, which it may be
    charged in (its admission on day one at 08:00, due at 00:00 day three)."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one
    clock[0] = DAY_ONE + 3600
    assert await key_move.main([KEY, NEW, "--pending-stale-s", str(40 * 3600)]) == 0
    await reconciled_then_counted(store, clock, DAY_ONE + 40 * 3600 + 1, 5.0, 40 * 3600)  # 00:00:01 UTC, day three


async def test_a_hold_held_at_the_move_whose_charge_is_then_lost_is_carried_into_the_day_the_reconciler_charges_it(
    store: RedisStore, clock: list[float]
) -> None:
    """A request in flight at the move (23:30 on day one, its hold still held) whose charge is then lost (store and
    outbox both failed, its router alive) is charged its hold by the reconciler ROUTER_PENDING_STALE_S after its
    admission, at the default hour: 00:30 on day two, in the old tenant's shard. The move counted a hold still held
    only in the periods starting before its expiry (and CHARGED_LATE_S), day one alone, and under its new tenant the
    key spent its limit again on day two beside that charge."""
    clock[0] = DAY_ONE + 15.5 * 3600  # 23:30 UTC, day one
    assert await admitted(store, OLD, "r1", 600) == ""  # held HOLD_S: to 23:40
    clock[0] += 60
    assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    await reconciled_then_counted(store, clock, DAY_ONE + 16.5 * 3600 + 1, 5.0, 3600)  # 00:30 UTC, day two


async def test_a_batch_line_held_past_26_hours_is_carried_into_each_day_it_is_held_in(
    store: RedisStore, clock: list[float]
) -> None:
    """ROUTER_PROVIDER_BATCH_HOLD_S may be up to a week: a line held three days at the move may be charged on day four,
    in the old tenant's shard. The move took no hold to last past DEFERRED_HOLD_S (26 h), carried the line into day one
    and day two alone, and under its new tenant the key spent its limit again on day four."""
    binding = await store.bind_key(KEY, OLD)
    line = Hold("b1", 600, period_id("day"), "router-1", "n-b1", until=clock[0] + 3 * 86400)
    assert (await store.admit(Account(OLD, KEY), ALLOWANCE, line, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    clock[0] = DAY_ONE + 64 * 3600  # 00:00 UTC, day four: the line still held
    assert await store.charge(Account(OLD, KEY), line, 600, {})
    await counted_under_the_new_tenant(store)  # landed on day four


async def test_a_hold_past_its_expiry_is_carried_no_further_than_the_pending_stale_s_the_routers_publish(
    store: RedisStore, clock: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    """Told nothing, the move went by a week: a hold past its expiry took the key's limit on day three under its new
    tenant, though the routers charge it within their hour. They publish their ROUTER_PENDING_STALE_S at each beat
    (store/pending_stale.py), and the move goes by it."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one; held HOLD_S
    clock[0] = DAY_ONE + 3600  # its hold past its expiry, its charge open
    await store.heartbeat("router-1", 5.0, 3600.0)  # a live router's upkeep beats
    assert await key_move.main([KEY, NEW]) == 0
    assert "ROUTER_PENDING_STALE_S" not in capsys.readouterr().err
    clock[0] = DAY_ONE + 2 * 3600 + 1
    assert await store.reconcile("router-2", 5.0, 3600) == 1  # charged at its hold, as stale, on day one
    clock[0] = DAY_ONE + 40 * 3600  # 00:00 UTC, day three
    assert await admitted(store, NEW, "r2", LIMIT) == ""


async def test_a_routers_upkeep_publishes_its_pending_stale_s(store: RedisStore, tmp_path: Path) -> None:
    await Upkeep(store, Outbox(tmp_path), "router-1", 2.0, 5.0, 7200.0).tick()
    assert await PendingStale(store.redis).longest() == 7200.0


async def test_a_pending_stale_s_given_shorter_than_a_routers_is_overruled_and_said(
    store: RedisStore, clock: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's shell set to an hour while a router runs with 40 h: the move carried the hold by the hour, and the
    key spent its limit again on day three, when that router's reconciler charges the hold in the old tenant's shard.
    The move takes the longer, and says so."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one
    clock[0] = DAY_ONE + 3600
    await store.heartbeat("router-1", 5.0, 3600.0)
    await store.heartbeat("router-2", 5.0, 40 * 3600.0)
    assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    assert "ROUTER_PENDING_STALE_S=144000, longer than the 3600 s given" in capsys.readouterr().err
    await reconciled_then_counted(store, clock, DAY_ONE + 40 * 3600 + 1, 5.0, 40 * 3600)  # 00:00:01 UTC, day three


async def test_a_move_that_cannot_read_the_routers_pending_stale_s_carries_a_week(
    store: RedisStore, clock: list[float]
) -> None:
    """The published values unreadable (denied to the operator's user, or the key hand-edited), a router's may be
    longer than the one given: the move carries by the longest it may be, not by the flag."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one
    clock[0] = DAY_ONE + 3600
    await store.redis.set(PENDING_STALE, "3600")
    assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    clock[0] = DAY_ONE + 40 * 3600  # 00:00 UTC, day three
    assert await admitted(store, NEW, "r2", 500) == "key"


@pytest.mark.parametrize("written", ["3456000.0", "-86400.0", "0.0"])
async def test_a_pending_stale_s_no_router_may_run_with_counts_as_the_longest_a_move_carries(
    store: RedisStore, clock: list[float], written: str
) -> None:
    """A value in the published set that no router may run with (hand-edited, or another tool's): one past a week
    carried the hold into every day up to it (one far past, 1e12, counted days to the end of the calendar and never
    returned); none, or a negative one, carried it by its expiry alone, and the key spent its limit again on day three.
    Any is taken as a week, the longest a router may run with and a move carries."""
    assert await admitted(store, OLD, "r1", 600) == ""  # 08:00 UTC, day one
    clock[0] = DAY_ONE + 3600
    await store.redis.zadd(PENDING_STALE, {written: (DAY_ONE + 60 * 86400) * 1000})
    assert await key_move.main([KEY, NEW]) == 0
    assert not await store.redis.exists(AccountKeys(shard_of(NEW), "", KEY.encode().hex()).carried(day(10)))
    clock[0] = DAY_ONE + 40 * 3600  # 00:00 UTC, day three
    assert await admitted(store, NEW, "r2", 500) == "key"


def day(n: int) -> str:
    """Day n's period id (day one: DAY_ONE's)."""
    return period_id("day", DAY_ONE + (n - 1) * 86400)


async def test_a_routers_pending_stale_s_counts_no_longer_than_it_may_settle_by_it(
    store: RedisStore, clock: list[float]
) -> None:
    """A router gone a heartbeat TTL and its ROUTER_PENDING_STALE_S settles nothing by it: the move no longer takes
    it; one that beat within that does."""
    await store.heartbeat("router-1", 5.0, 40 * 3600.0)
    await store.heartbeat("router-2", 5.0, 3600.0)
    stale = PendingStale(store.redis)
    clock[0] = DAY_ONE + 3600 + 4.9
    assert await stale.longest() == 40 * 3600.0
    clock[0] = DAY_ONE + 40 * 3600 + 5.1
    assert await stale.longest() is None  # both gone: the move goes by a week
    await store.heartbeat("router-2", 5.0, 3600.0)
    assert await stale.longest() == 3600.0
    assert await store.redis.zcard(PENDING_STALE) == 1  # the lapsed value dropped by the beat
    assert await store.redis.pttl(PENDING_STALE) > 0  # and the key lapses with the last


@pytest.mark.parametrize("any_redis_url", ["redis"], indirect=True)  # refused before any Redis is used
@pytest.mark.parametrize(
    "asked",
    [
        ["--pending-stale-s", "0"],
        ["--pending-stale-s", "nan"],
        ["--pending-stale-s", "604801"],
        ["--pending-stale-s", "60"],  # an hour in minutes: no router runs with it (request_timeout_s and 60 s at least)
    ],
)
async def test_a_move_given_a_pending_stale_s_no_router_takes_is_refused_before_it_writes(
    store: RedisStore, asked: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        await key_move.main([KEY, NEW, *asked])
    assert exited.value.code == 2
    assert "--pending-stale-s must be above 60 and at most 604800" in capsys.readouterr().err
    assert await store.key_tenant(KEY) is None, "nothing written"


@pytest.mark.parametrize("any_redis_url", ["redis"], indirect=True)  # refused before any Redis is used
@pytest.mark.parametrize("variable", ["0", "604801", "an hour", "60"])
async def test_a_move_reading_a_pending_stale_s_no_router_takes_is_refused_before_it_writes(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    """The routers would refuse to start with it: the move says so, naming the setting, and writes nothing."""
    monkeypatch.setenv("ROUTER_PENDING_STALE_S", variable)
    with pytest.raises(SystemExit) as exited:
        await key_move.main([KEY, NEW])
    assert exited.value.code == 2
    assert "ROUTER_PENDING_STALE_S" in capsys.readouterr().err
    assert await store.key_tenant(KEY) is None, "nothing written"


async def test_a_move_run_again_after_a_batch_line_is_charged_carries_its_hold_no_more_on_the_day_after_next(
    store: RedisStore, clock: list[float]
) -> None:
    """A batch line held into day three at the move is charged 100 on day one; the move run again, to the same tenant,
    counts it as charged (README): on day three the key under its new tenant has its whole limit. The second move, with
    no hold left into day three, set what the key carries for day one and day two alone, and left the first one's 600
    for day three."""
    clock[0] = DAY_ONE + 15 * 3600  # 23:00 UTC, day one
    binding = await store.bind_key(KEY, OLD)
    line = Hold("b1", 600, period_id("day"), "router-1", "n-b1", until=clock[0] + DEFERRED_HOLD_S)
    assert (await store.admit(Account(OLD, KEY), ALLOWANCE, line, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW]) == 0
    assert await store.charge(Account(OLD, KEY), line, 100, {})
    assert await key_move.main([KEY, NEW]) == 0
    clock[0] = DAY_ONE + 40 * 3600  # 00:00 UTC, day three
    assert await admitted(store, NEW, "r2", LIMIT) == ""


@pytest.mark.parametrize("ends_before_s", [0, 5])
async def test_a_batch_line_whose_hold_ends_as_a_day_starts_and_is_charged_by_the_reconciler_then_is_carried_into_it(
    store: RedisStore, clock: list[float], ends_before_s: int
) -> None:
    """A provider batch line never collected is charged its hold by the reconciler's first sweep after its hold ends:
    one ending at 00:00 on day three (or seconds before) is charged on day three, in the old tenant's shard, so under
    its new tenant the key has its limit less it that day. The move counted a hold in a later period only when held
    past its start, and the key spent its limit again on day three beside the line's charge."""
    clock[0] = DAY_ONE + 14 * 3600 - ends_before_s  # about 22:00 UTC, day one: the line's hold ends at 00:00, day three
    binding = await store.bind_key(KEY, OLD)
    line = Hold("b1", 600, period_id("day"), "router-1", "n-b1", until=clock[0] + DEFERRED_HOLD_S)
    assert (await store.admit(Account(OLD, KEY), ALLOWANCE, line, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW]) == 0
    await reconciled_then_counted(store, clock, DAY_ONE + 40 * 3600 + 1, 10.0, 3600.0)  # day three: no collect came


LAST_SECOND_OF_JANUARY = DAY_ONE + 16 * 86400 + 16 * 3600 - 1  # 2027-01-31 23:59:59.25 UTC


@pytest.mark.parametrize("kind", ["day", "month", "total"])
async def test_a_batch_line_held_across_a_month_end_at_the_move_counts_in_each_kind_of_period(
    store: RedisStore, clock: list[float], kind: str
) -> None:
    """Moved in the last second of a month, 300 spent and a 600 batch line held under the old tenant, the line charged
    its whole hold on the first of the next month: under its new tenant the key has its limit less what landed in each
    period of each kind (day and month: the line's 600 in the new one; total: both)."""
    clock[0] = LAST_SECOND_OF_JANUARY
    allowance = Allowance(kind, key_pico=LIMIT)
    binding = await store.bind_key(KEY, OLD)
    spent = Hold("r1", 300, period_id(kind), "router-1", "n-r1")
    assert (await store.admit(Account(OLD, KEY), allowance, spent, moves=binding.moves)).refused == ""
    assert await store.charge(Account(OLD, KEY), spent, 300, {})
    line = Hold("b1", 600, period_id(kind), "router-1", "n-b1", until=clock[0] + DEFERRED_HOLD_S)
    assert (await store.admit(Account(OLD, KEY), allowance, line, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW]) == 0
    clock[0] += 3600  # 2027-02-01 00:59:59 UTC
    assert await store.charge(Account(OLD, KEY), line, 600, {})
    left = LIMIT - 600 - (300 if kind == "total" else 0)
    binding = await store.bind_key(KEY, NEW)
    for request_id, pico, refused in (("r2", left + 1, "key"), ("r3", left, "")):
        hold = Hold(request_id, pico, period_id(kind), "router-1", f"n-{request_id}")
        assert (await store.admit(Account(NEW, KEY), allowance, hold, moves=binding.moves)).refused == refused


async def test_what_a_move_carries_is_kept_to_its_periods_end_and_for_total_for_good(
    store: RedisStore, clock: list[float]
) -> None:
    """Each key of what is carried lives at least as long as the spend of its period from that period's start (a
    later period's starts after the move): past the period's end, never before; 'total' never expires."""
    clock[0] = LAST_SECOND_OF_JANUARY
    await spend(store, OLD, "r1", 300)
    binding = await store.bind_key(KEY, OLD)
    line = Hold("b1", 600, period_id("day"), "router-1", "n-b1", until=clock[0] + DEFERRED_HOLD_S)
    assert (await store.admit(Account(OLD, KEY), ALLOWANCE, line, moves=binding.moves)).refused == ""
    assert await key_move.main([KEY, NEW, "--pending-stale-s", "3600"]) == 0
    destination = AccountKeys(shard_of(NEW), "", KEY.encode().hex())
    for period in ["20270131", "20270201", "20270202", "202701", "202702"]:  # the line is held into 2 February
        kept_s = await store.redis.ttl(destination.carried(period))
        assert kept_s >= spend_ttl_s(period) + max(period_start(period) - clock[0], 0) - 2, period  # whole seconds
        assert kept_s > period_start(next_period(period)) - clock[0], period
    assert await store.redis.ttl(destination.carried("all")) == -1
    assert await store.redis.exists(destination.carried("20270203")) == 0  # the line ends before that day


@pytest.mark.parametrize("unread", ["TIME refused to the user", "the store away"])
async def test_a_move_that_cannot_read_the_money_clock_writes_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], unread: str
) -> None:
    """The move dates what it carries by the money Redis' clock: unread, it went on by its machine's, which may be in
    another day than the routers' (the key then spends its limit again there), and said nothing. It now writes nothing
    and exits 1 saying why, to be run again."""
    server = RedisServer(tmp_path / "redis").start()
    admin = redis.Redis(port=server.port)
    try:
        if unread.startswith("TIME"):
            admin.execute_command("ACL", "SETUSER", "default", "-time")
            monkeypatch.setenv("ROUTER_REDIS_URL", server.url)
        else:
            monkeypatch.setenv("ROUTER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        assert await key_move.main([KEY, NEW]) == 1
        assert "not moved: the money Redis' clock (TIME)" in capsys.readouterr().err
        assert admin.keys("*") == []
    finally:
        admin.close()
        server.stop()


async def test_a_move_on_a_cluster_whose_clock_master_is_down_writes_nothing_and_says_so(
    cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The master of the {llmrouter} slot, whose TIME every router follows, down: the move writes nothing, not even the
    key's binding (in a slot of another master), and says why."""
    down, bound_on = cluster.owner(GLOBAL_SLOT), cluster.owner(key_slot(key_tenant_key(KEY).encode()))
    assert bound_on != down
    monkeypatch.setenv("ROUTER_REDIS_URL", f"redis+cluster://127.0.0.1:{cluster.nodes[bound_on].port}")
    cluster.nodes[down].shut_down()
    assert await key_move.main([KEY, NEW]) == 1
    assert "not moved: the money Redis' clock (TIME)" in capsys.readouterr().err
    binding = redis.Redis(port=cluster.nodes[bound_on].port)
    try:
        assert binding.get(key_tenant_key(KEY)) is None
    finally:
        binding.close()
