"""A charge kept in the outbox by this version, replayed by a router of the version before (a rollback, its data dir
kept), as in a rolling upgrade. That router reads no marked_until: it ages the line by `charged_s` against its own
`marked_s`, as its own lines were dated, back to the end of the request's life. A line dated by when it was kept (its
router frozen long past that life, within marked_until) was young to it once the reconciler's marker had expired, and
its replay charged the request again over the reconciler's hold. Real Redis, the router's own Charger, the version
before's Outbox and store."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as redis

from services.router.outbox import OutboxCharge
from services.router.store import AccountKeys, period_id
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.old_version import checkout, run
from tests.router.servicer_kit import charger_on, store_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_after_its_markers_expired import served_then_reconciled
from tests.waiting import eventually

BEFORE = "e479658"  # the version before the store judged lateness by marked_until
DAY = period_id("day")
OLD_REPLAY = """
import asyncio, sys
from pathlib import Path
from services.router.outbox import Outbox
from services.router.store import RedisStore
async def main():
    url, data_dir, ttl_s, marked_s = sys.argv[1:]
    store = RedisStore(url, int(ttl_s))
    try:
        await store.ping()
        print(await Outbox(Path(data_dir), float(marked_s)).replay(store))
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_a_line_kept_past_its_requests_life_is_late_to_the_version_before_once_its_markers_expire(
    proxy: LossyProxy, redis_url: str, tmp_path: Path
) -> None:
    """Request id TTL 6 s, `marked_s` 5.5 s on both versions. The router, frozen, is reconciled; it thaws with the
    reconciler's marker still there (within marked_until: its charge is timely) and the store out of reach, so its
    charge is kept. Replayed by the version before once that marker has expired: past marked_until, late."""
    (tmp_path / "old").mkdir()
    old_tree = checkout(BEFORE, tmp_path / "old")
    client: redis.Redis = redis.from_url(redis_url)
    async with (
        charger_on(proxy.url_for(redis_url), tmp_path / "data", request_id_ttl_s=6, marked_s=5.5) as charger,
        store_on(redis_url, request_id_ttl_s=6) as reconciler,
    ):
        r, response, hold = await served_then_reconciled(charger, reconciler)
        marker = AccountKeys.of(ACCOUNT).charged(r.request_id)
        await eventually(lambda: _expiring_within(client, marker, 2000), "the reconciler's marker 4 s old")
        proxy.go_down()
        await charger.settle(r, response)
        (kept,) = charger.outbox.waiting()
        assert isinstance(kept, OutboxCharge) and not kept.late
        proxy.come_back()
        await eventually(lambda: _gone(client, marker), "the reconciler's charged marker expired")
        try:
            assert await run(old_tree, OLD_REPLAY, redis_url, str(tmp_path / "data"), "6", "5.5") == "1"
            assert len(charger.outbox) == 0
            assert await reconciler.spent(ACCOUNT, DAY) == (hold.pico, hold.pico), "charged again"
        finally:
            await client.aclose()


async def _expiring_within(client: redis.Redis, key: str, ms: int) -> bool:
    return 0 < await client.pttl(key) < ms


async def _gone(client: redis.Redis, key: str) -> bool:
    return not await client.exists(key)
