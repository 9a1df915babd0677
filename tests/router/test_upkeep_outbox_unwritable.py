"""An outbox replay that fails (its file cannot be rewritten: a full disk) holds up none of the upkeep round's other
duties: it raised out of the round, every round while the disk stayed full, and the reconciler after it never ran, so
the pending charges of dead routers were never settled at their hold, their holds counted against their budgets. Here
the rewrite's scratch file cannot be made, as the outbox tests simulate a full disk (a real small tmpfs needs root).
A real Redis."""

from __future__ import annotations

import os
from pathlib import Path

from services.router.outbox import Outbox
from services.router.store import Allowance, Hold, RedisStore, period_id
from services.router.upkeep import Upkeep
from tests.router.test_admission import ACCOUNT

DAY = period_id("day")


async def test_a_replay_that_cannot_rewrite_its_outbox_does_not_stop_the_reconciler(
    redis_url: str, tmp_path: Path
) -> None:
    store = RedisStore(redis_url)
    upkeep = Upkeep(store, Outbox(tmp_path / "data"), "router-1", 1, 15, 0)
    try:
        outbox = upkeep.outbox
        with outbox.path.open("a", encoding="utf-8") as file:
            file.write('{"account": {"ten\n')  # cut short by a crash: the replay moves it out, rewriting the file
        outbox.path.with_suffix(f".{os.getpid()}.tmp").mkdir()  # as Outbox._rewrite names it: no room for it
        # Admitted by a router that is gone, long enough ago (stale_s=0) for the reconciler to settle at its hold.
        hold = Hold("r-gone", 7_000, DAY, "gone-router")
        assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
        await upkeep.tick()
        assert await store.spent(ACCOUNT, DAY) == (7_000, 7_000), "the reconciler did not run after the replay failed"
        assert await store.pending_charge(ACCOUNT, "r-gone") is None
    finally:
        await upkeep.close()
        await store.close()
