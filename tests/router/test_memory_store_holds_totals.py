"""The in-process money store keeps each holds set's sum as holds come and go (admission reads it, not every request
in flight): under many concurrent admissions, charges, undos, grown holds, holds past their expiry and holds left
behind by a charge through another key, every admission's verdict is the one a recomputation from scratch gives
(limit - spend - every hold not past its expiry or of an open pending charge), and every sum is its members' sum."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from services.router.store import Account, Allowance, Hold, MemoryStore, period_id
from services.router.store.holds import Holds

DAY = period_id("day")
TENANTS = ("acme", "globex")
KEYS = ("key-1", "key-2", "key-3")  # a key id of both tenants: its holds set holds both tenants' requests
# Tight enough that admissions are refused by either budget, now and then, while a few hundred are in flight.
ALLOWANCE = Allowance("day", tenant_pico=150 * 10**12, key_pico=100 * 10**12)


def live(store: MemoryStore, held_key: str, now: float) -> int:
    """What a holds set holds, from scratch: its members not past their expiry, or of an open pending charge."""
    holds = store.held.get(held_key)
    return 0 if holds is None else sum(p for m, (e, p) in holds.items() if e > now or store._open(m, p))


def assert_sums_exact(store: MemoryStore) -> None:
    for held_key, holds in store.held.items():
        assert isinstance(holds, Holds)
        assert holds.total == sum(pico for _, pico in holds.values()), held_key


async def admit_checked(store: MemoryStore, account: Account, hold: Hold, refusals: list[str]) -> bool:
    """Admit, and check the verdict against the budgets recomputed from scratch just before (no await between)."""
    now = time.time()
    lefts = [
        limit - store.counters.get(spend_key, 0) - live(store, held_key, now)
        for spend_key, held_key, limit, _ in store._budgets(account, ALLOWANCE, hold.period)
        if limit is not None
    ]
    verdict = await store.admit(account, ALLOWANCE, hold)
    assert verdict.refused in ("", "tenant", "key"), verdict
    refusals.append(verdict.refused)
    if verdict.refused:
        assert hold.pico > min(lefts) and verdict.remaining == max(min(lefts), 0), (verdict, lefts)
    else:
        assert hold.pico <= min(lefts), lefts
    assert_sums_exact(store)
    return not verdict.refused


async def turns(rng: random.Random) -> None:
    for _ in range(rng.randrange(4)):
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_holds_sums_stay_exact_under_concurrent_admit_charge_undo_extend(seed: int) -> None:
    rng = random.Random(seed)
    store = MemoryStore()
    await store.set_limit("key", KEYS[2], 20 * 10**12)  # a key whose own budget is the tighter one
    charged: dict[Account, int] = {}
    open_at_end: list[tuple[Account, Hold]] = []
    refusals: list[str] = []

    crowd = asyncio.Semaphore(200)  # requests in flight at once: about what the budgets hold

    async def one_request(n: int) -> None:
        async with crowd:
            await served(n)

    async def served(n: int) -> None:
        account = Account(rng.choice(TENANTS), rng.choice(KEYS))
        # One in five is a provider batch line whose hold lapsed already: it counts only while its charge is open.
        until = time.time() - 5 if rng.random() < 0.2 else 0.0
        pico = rng.choice([rng.randrange(1, 10**11), rng.randrange(1, 10**12), 4 * 10**12, 2**40 + n])
        hold = Hold(f"req-{n}", pico, DAY, "router-1", nonce=f"nonce-{n}", until=until)
        if not await admit_checked(store, account, hold, refusals):
            return
        await turns(rng)
        action = rng.choice(
            ["charge"] * 6 + ["undo", "extend", "extend", "other-key", "other-key", "no-nonce", "stay", "other-nonce"]
        )
        if action == "extend":
            grown = pico + rng.randrange(1, 10**12)
            if await store.extend(account, ALLOWANCE, hold, grown) == "":
                hold = Hold(hold.request_id, grown, DAY, "router-1", nonce=hold.nonce, until=hold.until)
            assert_sums_exact(store)
            await turns(rng)
            action = "charge"
        cost = rng.randrange(0, 1_000)
        if action == "charge":
            assert await store.charge(account, hold, cost, {})
            charged[account] = charged.get(account, 0) + cost
        elif action == "no-nonce":  # a charge from before admissions had a nonce: settles the request all the same
            assert await store.charge(account, Hold(hold.request_id, hold.pico, DAY, "router-1"), cost, {})
            charged[account] = charged.get(account, 0) + cost
        elif action == "undo":
            assert await store.undo(account, hold)
        elif action == "other-key":  # settled through another key of the tenant: the key's hold is left behind
            other = Account(account.tenant, next(k for k in KEYS if k != account.key))
            assert await store.charge(other, hold, cost, {})
            charged[other] = charged.get(other, 0) + cost
        elif action == "other-nonce":  # another admission's charge: this one stays in flight
            assert not await store.charge(
                account, Hold(hold.request_id, hold.pico, DAY, nonce="another"), cost, {}, True
            )
            open_at_end.append((account, hold))
        else:
            open_at_end.append((account, hold))
        assert_sums_exact(store)

    await asyncio.gather(*(one_request(n) for n in range(1_500)))
    # A last round of admissions sweeps every set (holds past their expiry whose charge settled go) and is checked.
    for n, (tenant, key) in enumerate((t, k) for t in TENANTS for k in KEYS):
        await admit_checked(
            store, Account(tenant, key), Hold(f"last-{n}", 1, DAY, "router-1", nonce=f"last-{n}"), refusals
        )
    assert {"", "tenant", "key"} <= set(refusals)  # admitted, and refused by each budget
    now = time.time()
    for held_key, holds in store.held.items():  # every set swept: what each holds is what a recount finds
        assert holds.total == live(store, held_key, now), held_key
    for account, hold in open_at_end:
        assert await store.charge(account, hold, 0, {})
    spent = [(await store.spent(Account(tenant, ""), DAY))[0] for tenant in TENANTS]
    assert sum(spent) == sum(charged.values())  # every charge counted once
    assert_sums_exact(store)
