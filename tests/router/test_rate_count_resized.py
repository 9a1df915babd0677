"""A request refused for its budget is counted against the rate limit, and admitted resized to what the budget has left
(Admission.admit). When that resized admission runs in the next minute, the request is counted once, in the minute its
first admission was counted in: it was counted in both, and took one of the next minute's requests from its caller.
Admission over a real Redis and over the in-process store, the money's clock moved to the next minute as the first
admission's refusal comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.router import admission
from services.router.store import MemoryStore, RedisStore, Store, Verdict
from tests.router.money_time import HeldMoneyClock
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox

ONE_A_MINUTE = SETTINGS.model_copy(update={"rate_limit_rpm": 1})
REMAINDER = 200_000_000  # $0.0002: the plan's worst case is refused, the cheap model capped to it admitted


@pytest.fixture(params=["redis", "memory"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    made: Store = RedisStore(store_url) if store_url else MemoryStore()
    yield made
    await made.close()


async def test_a_request_resized_into_the_next_minute_is_counted_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = HeldMoneyClock(monkeypatch)
    await store.set_limit("tenant", ACCOUNT.tenant, REMAINDER)
    admit, verdicts = store.admit, list[str]()

    async def answered_in_the_next_minute(*args: Any, **kwargs: Any) -> Verdict:
        verdict = await admit(*args, **kwargs)
        if not verdicts:  # the first admission's refusal comes back in the next minute
            clock.next_window()
        verdicts.append(verdict.refused)
        return verdict

    monkeypatch.setattr(store, "admit", answered_in_the_next_minute)
    gate, resized = await routed(request(), admission.Admission(ONE_A_MINUTE, REGISTRY, store, scratch_outbox()))
    await gate.admit(resized)
    assert verdicts == ["tenant", ""]  # refused for its budget, then admitted resized, a minute later
    assert resized.hold is not None and resized.hold.pico <= REMAINDER
    await gate.count(ACCOUNT)  # the minute's one request is still the caller's (a Decide's count, not RATE_LIMITED)
