"""RedisStore's scripts and MemoryStore give the same answers on one request id, whatever befalls it: admissions
(of holds beyond a double's 2^53), charges (replayed, late, of another admission, past the spend's bound), admissions a
store lost, undos, markers of versions before and of provider batch lines, markers expired. Compared after each step:
the step's answer (a duplicate's charged total and open hold too), the charged marker and the tenant's spend."""

from __future__ import annotations

import random

import redis.asyncio as redis

from services.router.store import Account, AccountKeys, Allowance, Hold, MemoryStore, RedisStore, period_id
from services.router.store.model import pending_field

ACCOUNT = Account("acme", "key1")
FREE = Allowance("day")
DAY = period_id("day")
KEYS = AccountKeys.of(ACCOUNT)
ID = "r"
RUNS, STEPS = 150, 14
OLD_MARKERS = ("1", "1:c0ffee09", "1:c0ffee09:ffff0000", "batch:b-1")


def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def forget_admission(memory: MemoryStore, client: redis.Redis) -> None:
    """Both stores forget the id's admission (pending charge, holds, used id), as a replica that never had it."""
    field = pending_field(ACCOUNT, ID)
    memory.pending.pop(field, None)
    for held in KEYS.held():
        memory.held.pop(held, None)
        await client.delete(held)
    memory.used.discard(KEYS.used(ID))
    await client.hdel(KEYS.pending, field)
    await client.delete(KEYS.used(ID))


async def set_marker(memory: MemoryStore, client: redis.Redis, marker: str | None) -> None:
    memory.charged.discard(KEYS.charged(ID))
    await client.delete(KEYS.charged(ID))
    if marker is not None:
        memory.charged.add(KEYS.charged(ID), marker)
        await client.set(KEYS.charged(ID), marker)


async def charged(store: MemoryStore | RedisStore, hold: Hold, pico: int, late: bool, charge_id: str) -> object:
    try:
        return await store.charge(ACCOUNT, hold, pico, {}, late=late, charge_id=charge_id)
    except Exception as refused:  # past the spend's bound: both refuse the charge whole
        return "overflow" if "overflow" in str(refused) else repr(refused)


async def test_both_stores_answer_alike_on_one_request_id(redis_url: str) -> None:
    client, store = redis.from_url(redis_url), RedisStore(redis_url)
    try:
        for run in range(RUNS):
            rng = random.Random(run)
            await client.flushdb()
            memory = MemoryStore()
            holds = [Hold(ID, rng.choice([5_000, 2**62 + 1]), DAY, "router-1", f"aaaa000{n}") for n in range(3)]
            steps: list[tuple[object, ...]] = []
            answers: tuple[object, object]
            for _ in range(STEPS):
                hold, step = rng.choice(holds), rng.choice(["admit", "charge", "charge", "forget", "old", "undo"])
                if step == "admit":
                    answers = await memory.admit(ACCOUNT, FREE, hold), await store.admit(ACCOUNT, FREE, hold)
                elif step == "charge":
                    pico = rng.choice([0, 7, 10**9 - 1, 10**9, 2**61 + 3])
                    late, charge_id = rng.random() < 0.3, rng.choice(["", "c0ffee01", "c0ffee02"])
                    step = f"charge {pico} {charge_id!r} late={late}"
                    answers = (
                        await charged(memory, hold, pico, late, charge_id),
                        await charged(store, hold, pico, late, charge_id),
                    )
                elif step == "forget":
                    await forget_admission(memory, client)
                    answers = None, None
                elif step == "old":
                    marker = rng.choice([*OLD_MARKERS, None])  # None: the marker expired
                    await set_marker(memory, client, marker)
                    answers = marker, marker
                else:
                    answers = await memory.undo(ACCOUNT, hold), await store.undo(ACCOUNT, hold)
                markers = memory.charged.get(KEYS.charged(ID)), text(await client.get(KEYS.charged(ID)))
                spends = (
                    memory.counters.get(KEYS.spend(DAY)[0], 0),
                    int(text(await client.get(KEYS.spend(DAY)[0])) or 0),
                )
                steps.append((step, hold.nonce, *answers, *markers, *spends))
                assert (answers[0], markers[0], spends[0]) == (answers[1], markers[1], spends[1]), (
                    f"run {run}:\n" + "\n".join(map(str, steps))
                )
    finally:
        await store.close()
        await client.aclose()
