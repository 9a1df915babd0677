"""RedisStore's scripts and MemoryStore take the counts of provider batch lines' charges alike (count_once_each), on two
request ids of one tenant, whatever befalls them: admissions, batches recorded, charges (by one charge id or another,
late, of another admission), markers expired, and takes of many charges at once, by their ids, by another's, by any,
the same charge named more than once. Compared after each step: its answer, and the spend."""

from __future__ import annotations

import random

import redis.asyncio as redis

from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    MemoryStore,
    RedisStore,
    UncountedCharge,
    period_id,
)
from services.router.store.clock import money_now

ACCOUNT = Account("acme", "key1")
FREE = Allowance("day")
DAY = period_id("day")
KEYS = AccountKeys.of(ACCOUNT)
IDS = ("r1", "r2")
CHARGE_IDS = ("", "c0ffee01", "c0ffee02")
RUNS, STEPS = 120, 16


async def test_both_stores_take_counts_alike(redis_url: str) -> None:
    client, store = redis.from_url(redis_url), RedisStore(redis_url)
    try:
        for run in range(RUNS):
            rng = random.Random(run)
            await client.flushdb()
            memory = MemoryStore()
            until = money_now() + 3_600
            holds = [Hold(rid, 5_000, DAY, "router-1", f"aaaa000{n}", until) for rid in IDS for n in range(2)]
            steps: list[tuple[object, ...]] = []
            answers: tuple[object, object]
            for _ in range(STEPS):
                hold = rng.choice(holds)
                step = rng.choice(["admit", "batch", "charge", "charge", "expire", "take", "take"])
                if step == "admit":
                    answers = (
                        (await memory.admit(ACCOUNT, FREE, hold, model="strong")).refused,
                        (await store.admit(ACCOUNT, FREE, hold, model="strong")).refused,
                    )
                elif step == "batch":
                    answers = (
                        await memory.record_provider_batch(ACCOUNT, hold, "b-1"),
                        await store.record_provider_batch(ACCOUNT, hold, "b-1"),
                    )
                elif step == "charge":
                    pico, late, charge_id = rng.choice([0, 7, 5_000]), rng.random() < 0.5, rng.choice(CHARGE_IDS)
                    step = f"charge {hold.request_id} {pico} {charge_id!r} late={late}"
                    record = {"request_id": hold.request_id, "charge": charge_id, "cost_usd": str(pico)}
                    answers = (
                        await memory.charge(ACCOUNT, hold, pico, record, late=late, charge_id=charge_id),
                        await store.charge(ACCOUNT, hold, pico, record, late=late, charge_id=charge_id),
                    )
                elif step == "expire":  # the charged marker gone: the request id may be admitted again
                    memory.charged.discard(KEYS.charged(hold.request_id))
                    memory.used.discard(KEYS.used(hold.request_id))
                    await client.delete(KEYS.charged(hold.request_id), KEYS.used(hold.request_id))
                    step, answers = f"expire {hold.request_id}", (None, None)
                else:
                    asked = [
                        UncountedCharge(ACCOUNT, rng.choice(IDS), rng.choice([*CHARGE_IDS, "c0ffee03"]))
                        for _ in range(rng.randint(1, 4))
                    ]
                    step = f"take {[(each.request_id, each.charge_id) for each in asked]}"
                    answers = (
                        [None if r is None else r["charge"] for r in await memory.count_once_each(asked)],
                        [None if r is None else r["charge"] for r in await store.count_once_each(asked)],
                    )
                spends = await memory.spent(ACCOUNT, DAY), await store.spent(ACCOUNT, DAY)
                steps.append((step, hold.nonce, *answers, *spends))
                assert (answers[0], spends[0]) == (answers[1], spends[1]), f"run {run}:\n" + "\n".join(map(str, steps))
    finally:
        await store.close()
        await client.aclose()
