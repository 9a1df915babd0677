"""An admission whose reply is lost, the store then out of reach: the request is refused STORE_UNAVAILABLE (nothing
admitted, send the same request id again) and its undo waits in the router's outbox. Cut off past its heartbeat, the
router is taken for dead, and another router's reconciler charges the admission's pending charge at its hold: it cannot
know of an undo kept on another router's disk. The undo, replayed once the store is back, finds nothing left to undo,
and gives the reconciled hold back whole to the spend of the period charged, with a ledger entry of minus as much: a
request never served, whose caller was told nothing was admitted, costs nothing. (Its request id stays used until its
charged marker expires: a retry under it is refused as a duplicate, told it was charged 0.) A real Redis behind a proxy
that loses the admission's reply."""

from __future__ import annotations

import pytest

from services.router import admission
from services.router.store import RedisStore, StoreUnavailable, period_id
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox
from tests.router.test_undone_admissions import proxied_store
from tests.waiting import eventually

DAY = period_id("day")


async def test_an_admission_undone_from_the_outbox_after_the_reconciler_charged_it_is_not_charged(
    redis_url: str,
) -> None:
    async with proxied_store(redis_url) as money:
        outbox = scratch_outbox()
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, money.store, outbox))
        await money.store.ping()  # connected: the admission is the next command
        money.proxy.lose_next_reply(then_down=True)
        with pytest.raises(StoreUnavailable):
            await gate.admit(r)
        assert len(outbox) == 1  # the undo waits
        reconciler = RedisStore(redis_url)
        try:
            await eventually(lambda: reconciler.reconcile("router-alive", 0.2, 3600), "the admission reconciled")
            money.proxy.come_back()
            await outbox.replay(money.store)
            assert len(outbox) == 0
            assert await reconciler.spent(ACCOUNT, DAY) == (0, 0), "charged its hold, never served"
        finally:
            await reconciler.close()
