"""The reconciler's charge heard back, but the take of its count lost its reply and the store was out of reach for the
take's resend too (a Redis failover as it answered): the take had run, so the count waits under the take's claim
alone. The reconciler sends its charge and take again at its next round, under the same claim, and counts the charge
then. A real Redis behind a proxy that loses the take's reply and is out of reach from then on, until it comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.router.store import AccountKeys, Allowance, Hold, RedisStore, StoreUnavailable, lua
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_charge_counted_once import counted, counted_since
from tests.router.test_collect_model import ACCOUNT
from tests.router.test_reconcile_reply_lost import DAY, HOLD_PICO, LEASE_S, charged_once, heard_back


class TakeReplyLost(RedisStore):
    """Once given the proxy, its next take runs in Redis, but its reply is lost and the store is out of reach from
    then on: the take's resend finds it so."""

    proxy: LossyProxy | None = None

    async def _take(self, *args: Any, **kwargs: Any) -> Any:
        if self.proxy is not None:
            self.proxy.lose_next_reply(then_down=True)
            self.proxy = None
        return await super()._take(*args, **kwargs)


@pytest.fixture
async def reconciler(proxy: LossyProxy, redis_url: str) -> AsyncIterator[TakeReplyLost]:
    store = TakeReplyLost(proxy.url_for(redis_url))
    try:
        yield store
    finally:
        await store.close()


async def test_a_reconciled_charge_whose_take_and_its_resend_lost_their_replies_is_counted_at_the_next_round(
    proxy: LossyProxy, reconciler: TakeReplyLost, redis_store: RedisStore
) -> None:
    # Admitted by a router taken for dead (stale_s 0): the reconciler charges its hold.
    hold = Hold("request-1", HOLD_PICO, DAY, "gone", "n1")
    assert (await redis_store.admit(ACCOUNT, Allowance("day"), hold, model="strong")).refused == ""
    await redis_store.redis.script_load(lua.COUNT_ONCE)  # the reply lost is the take's, not a NOSCRIPT
    before = counted("strong")
    reconciler.proxy = proxy
    with pytest.raises(StoreUnavailable):
        await reconciler.reconcile("alive", LEASE_S, 0.0)
    keys = AccountKeys.of(ACCOUNT)
    assert not await redis_store.redis.exists(keys.uncounted("request-1"))  # taken: only its reply was lost
    assert not await redis_store.redis.exists(keys.uncounted_reconciled)  # no sweep will take it
    proxy.come_back()
    await heard_back(reconciler)
    assert not reconciler.unanswered
    await charged_once(redis_store, "request-1")
    assert counted_since("strong", before) == (1, pytest.approx(HOLD_PICO / 1e12)), "counted by no router"
