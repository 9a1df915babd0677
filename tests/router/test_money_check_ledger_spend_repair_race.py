"""Two `money_check ledger-spend --repair` at once (two operators, or one run again while the first still reads a long
backlog): each reads the same counter short by the same loss, and each raised it by that loss, so the tenant paid it
twice, money it never spent. A counter is raised only as it was read: the second repair finds it moved, raises
nothing, and says to run the check again. Real Redis (one server and a Redis Cluster), the real sink, real PostgreSQL;
the two runs interleaved by real ordering (the second runs whole as the first is about to raise)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.ledger.db import LedgerDB
from services.router.store import AccountKeys, RedisStore
from tests.ledger.conftest import fresh_postgres
from tests.router.test_money_check_ledger_spend_given_back import ACME, DAY, HOLD, Ledger, lose, reconciled


class OvertakenStore(RedisStore):
    """A money Redis whose first raise of a counter (ledger-spend --repair) lets another whole check run first."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.address = url
        self.first_raise: Ledger | None = None

    async def raise_spend(self, counter: str, counted: int, pico: int, period: str) -> bool:
        overtaking, self.first_raise = self.first_raise, None
        if overtaking is not None:
            assert await overtaking.check(repair=True) == 0, "the other check raised the counter"
        return await super().raise_spend(counter, counted, pico, period)


@pytest.fixture
async def ledger(any_redis_url: str) -> AsyncIterator[Ledger]:
    store = OvertakenStore(any_redis_url)
    with fresh_postgres() as dsn:
        db = LedgerDB(dsn=dsn)
        try:
            yield Ledger(store, db)
        finally:
            db.close()
            await store.close()


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
        f"{behind}: not raised, the counter moved since it was read: run the check again",
    ]
    capsys.readouterr()
    assert await ledger.check(repair=True) == 0
    assert "0 counter(s) behind the SQL ledger" in capsys.readouterr().out
