"""Two `money_check ledger-spend --repair` at once (two operators, or one run again while the first still reads a long
backlog): each reads the same counter short by the same loss, and each raised it by that loss, so the tenant paid it
twice, money it never spent. A counter is raised only while no other repair raised it since it was read (its
repairs count, keys.py, repairs_key): the second repair raises nothing, and says to run the check again. Routers
serving meanwhile stop no repair: one that refused to raise a counter a charge had moved since the check read it kept
refusing under live traffic, and never converged; the loss it found is still missing beside those charges, and is
added exactly. Real Redis (one server and a Redis Cluster), the real sink, real PostgreSQL; the runs and the charges
interleaved by real ordering (the other run, or the charges, land whole as the first repair is about to raise)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.router.store import PICO, Account, AccountKeys, Allowance, CounterRead, Hold, Raised, RedisStore, lua
from services.router.store.keys import repairs_key
from services.router.store.model import spend_ttl_s
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.old_version import checkout, run
from tests.router.test_money_check_ledger_spend_given_back import (
    ACME,
    DAY,
    HOLD,
    Ledger,
    lose,
    opened_ledger,
    reconciled,
)
from tests.waiting import eventually


class OvertakenStore(RedisStore):
    """A money Redis whose first raise of a counter (ledger-spend --repair) lets another whole check run first, and
    whose routers may serve before each raise."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.address = url
        self.first_raise: Ledger | None = None
        # What the routers do before each raise: money of their own landing on the counters the check read.
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def raise_spend(self, counter: str, read: CounterRead, pico: int, period: str) -> Raised:
        overtaking, self.first_raise = self.first_raise, None
        if overtaking is not None:
            assert await overtaking.check(repair=True) == 0, "the other check raised the counter"
        if self.meanwhile is not None:
            await self.meanwhile()
        return await super().raise_spend(counter, read, pico, period)


@pytest.fixture
async def ledger(any_redis_url: str) -> AsyncIterator[Ledger]:
    async with opened_ledger(OvertakenStore(any_redis_url)) as opened:
        yield opened


async def test_two_repairs_at_once_raise_a_counter_by_its_loss_once(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ledger.store
    assert isinstance(store, OvertakenStore)
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    tenant = AccountKeys.of(ACME).spend(DAY)[0]
    await lose(store, tenant, 50)
    other = Ledger(RedisStore(store.address), ledger.db)
    other.group = ledger.group
    store.first_raise = other
    try:
        capsys.readouterr()
        checked = await ledger.check(repair=True)
    finally:
        await other.store.close()
    assert await store.spent(ACME, DAY) == (HOLD, HOLD), "raised by the loss once"
    assert checked == 1, "its counter moved: run the check again"
    err = capsys.readouterr().err.splitlines()
    behind = f"behind the ledger: {tenant} counts {HOLD - 50} pico-USD, the SQL ledger {HOLD} (50 lacking)"
    assert err == [
        f"{behind}: raised",  # the other check's
        f"{behind}: not raised, another repair raised it since it was read: run the check again",
    ]
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out


async def served(store: RedisStore, account: Account, request_id: str, pico: int) -> None:
    """A router admits a request and charges it `pico`, its ledger entry written with the charge."""
    hold = Hold(request_id, pico, DAY, "router-serving", uuid.uuid4().hex)
    assert (await store.admit(account, Allowance("day"), hold)).refused == ""
    record = {
        "request_id": request_id,
        "ts": time.time(),
        "tenant": account.tenant,
        "key": account.key,
        "period": DAY,
        "cost_usd": str(pico / PICO),
    }
    assert await store.charge(account, hold, pico, record, charge_id=uuid.uuid4().hex)


async def test_charges_and_give_backs_landing_as_it_repairs_leave_the_counter_raised_by_its_loss_exactly(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between the check's read of the counters and each raise, a router charges the account and another's charge
    gives back a reconciled hold (lua.py, GIVE_BACK): the repair still raises, by the loss read, and once the sink has
    copied what landed, the counters equal the SQL ledger to the pico: nothing double-counted, nothing hidden."""
    store = ledger.store
    assert isinstance(store, OvertakenStore)
    first = await reconciled(store, ACME, "r1")
    await ledger.copy()
    tenant, key = AccountKeys.of(ACME).spend(DAY)
    await lose(store, tenant, 50)
    await lose(store, key, 30)
    landed = 0

    async def serving() -> None:
        nonlocal landed
        landed += 1
        await served(store, ACME, f"live-{landed}", 200)
        if landed == 1:
            assert await store.give_back(ACME, first, 300) == HOLD - 300

    store.meanwhile = serving
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0, "both counters raised, with charges landing before each raise"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"behind the ledger: {key} counts {HOLD - 30} pico-USD, the SQL ledger {HOLD} (30 lacking): raised",
        f"behind the ledger: {tenant} counts {HOLD - 50} pico-USD, the SQL ledger {HOLD} (50 lacking): raised",
    ]
    store.meanwhile = None
    assert landed == 2
    await ledger.copy()
    assert await ledger.check() == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    exact = 300 + 2 * 200  # the reconciled charge as given back, and the two served
    assert await store.spent(ACME, DAY) == (exact, exact), "the counters as the SQL ledger holds them"


async def test_a_repair_under_live_traffic_converges_on_the_ledger(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A router charges the account again and again, in a task of its own, all the while a repair runs: the repair
    raises each counter (never refused for a charge that moved it), and once the traffic stops and the sink has copied
    it, the counters hold the SQL ledger's sum to the pico: the loss added once, every charge counted once. (A charge
    landing between the check's read of the SQL ledger and its read of the counters hides as much of the loss until
    the next check, as ever: the run after the traffic finds that rest.)"""
    store = ledger.store
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    tenant, key = AccountKeys.of(ACME).spend(DAY)
    await lose(store, tenant, 500)
    await lose(store, key, 300)
    served_count, stop = 0, asyncio.Event()

    async def serving() -> None:
        nonlocal served_count
        while not stop.is_set():
            served_count += 1
            await served(store, ACME, f"live-{served_count}", 1)

    traffic = asyncio.create_task(serving())
    try:
        await eventually(lambda: served_count > 3, "the router serving")
        assert await ledger.check(repair=True) == 0, "raised under live traffic"
    finally:
        stop.set()
        await traffic
    assert "not raised" not in capsys.readouterr().err
    await ledger.copy()
    assert await ledger.check(repair=True) == 0  # the rest a charge hid, if any
    capsys.readouterr()
    assert await ledger.check() == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
    exact = HOLD + served_count
    assert await store.spent(ACME, DAY) == (exact, exact), "the loss added once, every charge counted once"


async def test_a_repairs_count_lives_as_long_as_the_counter_it_counts(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A day's counter raised: its repairs count (keys.py, repairs_key) is kept the counter's TTL too, not for good,
    or every repaired counter of every day would leave a key behind in the money Redis, which never evicts."""
    store = ledger.store
    await reconciled(store, ACME, "r1")
    await ledger.copy()
    tenant, _ = AccountKeys.of(ACME).spend(DAY)
    await lose(store, tenant, 50)
    assert await ledger.check(repair=True) == 0
    raised = f"{tenant} counts {HOLD - 50} pico-USD, the SQL ledger {HOLD} (50 lacking): raised"
    assert raised in capsys.readouterr().err
    assert await store.redis.get(repairs_key(tenant)) == b"1"
    kept = spend_ttl_s(DAY)
    for name in (tenant, repairs_key(tenant)):
        assert kept - 60 < await store.redis.ttl(name) <= kept, f"{name} kept as a day's counter is"


class ReplyLostStore(RedisStore):
    """A money Redis reached through a proxy that drops the reply of the first raise: the raise made, its caller sees
    the connection drop."""

    def __init__(self, url: str, proxy: LossyProxy) -> None:
        super().__init__(url)
        self.proxy = proxy
        self.lost = False

    async def raise_spend(self, counter: str, read: CounterRead, pico: int, period: str) -> Raised:
        if not self.lost:
            self.lost = True
            await self.redis.script_load(lua.RAISE_SPEND)  # the reply lost is the raise's, not a NOSCRIPT's
            self.proxy.lose_next_reply()
        return await super().raise_spend(counter, read, pico, period)


async def test_a_raise_whose_reply_was_lost_raises_the_counter_once(
    proxy: LossyProxy, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The raise ran, its reply lost: the check cannot know whether it raised the counter, and says so (exit 1, run
    it again), going on with the other counters, never a traceback that leaves them unrepaired and the operator
    guessing. Run again, it finds the counter raised by its loss once, nothing behind."""
    store = ReplyLostStore(proxy.url_for(redis_url), proxy)
    async with opened_ledger(store) as ledger:
        await reconciled(store, ACME, "r1")
        await ledger.copy()
        tenant, _ = AccountKeys.of(ACME).spend(DAY)
        await lose(store, tenant, 50)
        key = AccountKeys.of(ACME).spend(DAY)[1]
        await lose(store, key, 30)
        capsys.readouterr()
        assert await ledger.check(repair=True) == 1
        assert store.lost
        assert capsys.readouterr().err.splitlines() == [
            f"behind the ledger: {key} counts {HOLD - 30} pico-USD, the SQL ledger {HOLD} (30 lacking): not known"
            " whether raised, the money Redis did not answer: run the check again",
            f"behind the ledger: {tenant} counts {HOLD - 50} pico-USD, the SQL ledger {HOLD} (50 lacking): raised",
        ]
        assert await store.spent(ACME, DAY) == (HOLD, HOLD), "each raised by its loss once"
        capsys.readouterr()
        assert await ledger.check() == 0
        assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out


BEFORE = "ffb9399"  # the version before the repairs count: its repair raises a counter only as it read it
OLD_REPAIR = """
import asyncio, sys
from services.ledger.db import LedgerDB
from services.router.money_check import check_ledger_spend
from services.router.store import RedisStore

async def main() -> None:
    store, db = RedisStore(sys.argv[1]), LedgerDB(dsn=sys.argv[2])
    try:
        print(await check_ledger_spend(store, db, "day", True, sink_group=sys.argv[3]))
    finally:
        db.close()
        await store.close()

asyncio.run(main())
"""


class OldRepairFirst(RedisStore):
    """A money Redis on which a whole repair of the version before runs as this one is about to raise its first
    counter."""

    def __init__(self, url: str, tree: Path) -> None:
        super().__init__(url)
        self.tree = tree
        self.overtaking: tuple[str, str] | None = None  # the SQL ledger's DSN and the sink's group

    async def raise_spend(self, counter: str, read: CounterRead, pico: int, period: str) -> Raised:
        overtaking, self.overtaking = self.overtaking, None
        if overtaking is not None:
            said = await run(self.tree, OLD_REPAIR, str(self.url), *overtaking)
            assert said.splitlines()[-1] == "0", "the old repair raised it"
        return await super().raise_spend(counter, read, pico, period)


async def test_a_repair_of_the_version_before_between_the_read_and_the_raise_is_not_added_to(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Routers kept off the store (as a restore's runbook has them), an operator runs the repair of the version before
    beside this one: it raises the counter, counting no repair. The counter moved since this check read it, and no
    ledger entry was added to its shard meanwhile: no charge or give-back moved it, so this repair raises nothing (it
    added the loss a second time: the tenant's budget short by money never spent) and says to run it again."""
    store = OldRepairFirst(redis_url, checkout(BEFORE, tmp_path))
    async with opened_ledger(store) as ledger:
        await reconciled(store, ACME, "r1")
        await ledger.copy()
        tenant, _ = AccountKeys.of(ACME).spend(DAY)
        await lose(store, tenant, 50)
        store.overtaking = (ledger.db._dsn, ledger.group)
        capsys.readouterr()
        assert await ledger.check(repair=True) == 1
        assert await store.spent(ACME, DAY) == (HOLD, HOLD), "raised by the loss once, by the old repair"
        behind = f"behind the ledger: {tenant} counts {HOLD - 50} pico-USD, the SQL ledger {HOLD} (50 lacking)"
        assert capsys.readouterr().err.splitlines() == [
            f"{behind}: not raised, it moved since it was read with no ledger entry beside it (a repair of the"
            " version before?): run the check again"
        ]
        assert await ledger.check(repair=True) == 0
        assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
