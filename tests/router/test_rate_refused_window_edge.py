"""A router that saw an account's requests per minute used up refuses its later requests of that window before routing
them (rate_refused.py). The store counts a request in the window its admission names; the refusal's reply may arrive in
the next window (a slow store, a call queued behind others). Taken for the window it arrived in, it refused the
account's requests of a window the store had counted none in, for a whole minute. Real Redis behind the router's gRPC
server on loopback; the money's clock is held, and moved into the next window as the store's refusal comes back
(tests/router/money_time.py). On the machine's clock, the test sent its request 0.4 s before a window's end and paused
the store past it: a machine busy enough to take 0.4 s to get the request to the store had it counted in the next
window, admitted, and the test failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.router.store import Verdict
from services.router.store.keys import rate_window
from tests.router.money_time import HeldMoneyClock
from tests.router.servicer_kit import router_stub, store_on
from tests.router.test_decide_rate_limited import Answering, Counting, ask, rate_limited, refusal


async def test_a_refusal_answered_in_the_next_window_refuses_nothing_of_it(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = HeldMoneyClock(monkeypatch)
    async with (
        store_on(redis_url) as redis_store,
        router_stub(tmp_path, redis_store, Answering(), classifier=Counting(), rate_limit_rpm=1) as router,
    ):
        assert (await router.Complete(ask("busy", model="cheap"), timeout=10)).content == "an answer"
        counted_in, admit = rate_window(clock.at), redis_store.admit

        async def answered_in_the_next_window(*args: Any, **kwargs: Any) -> Verdict:
            verdict = await admit(*args, **kwargs)
            clock.next_window()
            return verdict

        monkeypatch.setattr(redis_store, "admit", answered_in_the_next_window)
        assert rate_limited(await refusal(router.Complete(ask("busy", model="cheap"), timeout=10)))
        monkeypatch.setattr(redis_store, "admit", admit)
        assert rate_window(clock.at) == counted_in + 1  # its refusal was answered in the next window
        # The store has counted nothing of this window: the account's request is admitted and served.
        assert (await router.Complete(ask("busy", model="cheap"), timeout=10)).content == "an answer"
