"""What a caller is told of a charge kept in the outbox, when the reconciler charges its request first. The router is
cut off from the money store as it charges: the charge is fsynced to the outbox, and the caller told what it costs
(cost_usd). Cut off past its heartbeat, the router is taken for dead, and another router's reconciler charges the
request at its hold, which the ledger keeps: it cannot know of a charge kept on another router's disk. The outbox's
charge, replayed once the store is back, amends that charge to what its caller was told: the hold less the cost is
given back to the spend of the period charged, and the ledger gets an entry of minus as much, so the request costs
what its caller was told, in the budgets and the ledger alike. A real Redis behind a proxy that goes down."""

from __future__ import annotations

from decimal import Decimal

from services.router import charging
from services.router.store import RedisStore, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served
from tests.waiting import eventually

DAY = period_id("day")


async def test_a_caller_is_told_what_the_ledger_charged_when_the_reconciler_charged_first(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    r, response = await served(charger)
    proxy.go_down()  # the router is cut off from the store as it charges: the charge waits in the outbox
    await charger.settle(r, response)
    told = Decimal(response.cost_usd)
    reconciler = RedisStore(redis_url)
    try:
        # The router's heartbeat missing past the grace: another router's reconciler settles the request at its hold.
        await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the request reconciled")
        proxy.come_back()
        await charger.outbox.replay(charger.store)
        records = [x for x in await ledger_records(reconciler.redis) if x["request_id"] == r.request_id]
        assert await reconciler.spent(ACCOUNT, DAY) == (to_pico(told), to_pico(told)), "the tenant charged the hold"
    finally:
        await reconciler.close()
    assert sum(Decimal(x["cost_usd"]) for x in records) == told, "the caller was told the cost, the ledger charged more"
