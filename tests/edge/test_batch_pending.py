"""A batch run's lines still to send: a line the router refused for now comes back first, and the batch parks until
the router's retry time (or a backoff growing once per park), each line waiting, in flight or finished."""

from __future__ import annotations

import asyncio

import pytest

from services.batches.pending import RETRY_S, Pending


async def test_a_refused_line_comes_back_first_and_its_batch_parks_until_the_retry_time() -> None:
    pending = Pending(range(3))
    first, second = pending.take(), pending.take()
    assert (first, second, pending.wait_s()) == (0, 1, 0)  # line 2 may go too
    pending.finished()
    pending.refused(second, retry_after_s=30)
    wait_s = pending.wait_s()
    assert wait_s is not None and 29 < wait_s <= 30 and pending.parked()  # line 2 waits with it
    pending.parked_until = 0.0  # the retry time passed
    assert [pending.take(), pending.take()] == [1, 2]  # the refused line first, then the rest; each once
    assert pending.wait_s() == float("inf")  # only lines in flight: they may still come back
    pending.finished()
    pending.finished()
    assert pending.wait_s() is None


async def test_without_a_retry_time_the_backoff_grows_once_per_park_and_resets_on_an_answer() -> None:
    pending = Pending(range(2))
    a, b = pending.take(), pending.take()
    pending.refused(a, None)
    pending.refused(b, None)  # in flight as the batch parked: the same park
    assert pending.refusals == 1
    assert pending.wait_s() == pytest.approx(RETRY_S[0], abs=0.05)
    pending.parked_until = 0.0
    pending.refused(pending.take(), None)  # sent again, refused again: a longer park
    assert pending.wait_s() == pytest.approx(RETRY_S[1], abs=0.05)
    pending.parked_until = 0.0
    pending.take()
    pending.finished()  # the router admitted one: the next park is short again
    pending.refused(pending.take(), None)
    assert pending.wait_s() == pytest.approx(RETRY_S[0], abs=0.05)


async def test_a_parked_batch_wakes_when_a_line_in_flight_comes_back() -> None:
    pending = Pending(range(1))
    index = pending.take()
    waiter = asyncio.create_task(pending.changed(within_s=10))
    await asyncio.sleep(0)
    pending.refused(index, retry_after_s=None)
    await asyncio.wait_for(waiter, timeout=1)  # not after within_s


async def test_after_a_budget_refusal_lines_go_one_at_a_time_until_one_finishes() -> None:
    """A call the budget refuses is counted against the tenant's requests per minute: after one, a slot's worth sent
    again each park used up the tenant's rate limit. One line goes, and the next only once it is back."""
    pending = Pending(range(4))
    pending.refused(pending.take(), None, probe=True)
    pending.parked_until = 0.0  # the park ended
    assert pending.take() == 0 and pending.wait_s() == float("inf")  # the others wait for it to come back
    pending.refused(0, None, probe=True)
    pending.parked_until = 0.0
    pending.take()
    pending.finished()  # admitted: the batch sends a slot's worth again
    assert pending.take() == 1 and pending.wait_s() == 0


async def test_after_a_refusal_counted_nowhere_lines_go_a_slots_worth_at_once() -> None:
    """A rate limit's refusal, or an unreachable router's, is counted against nothing: after its park the batch sends
    as many lines as it has slots, not one and then wait for its whole answer."""
    pending = Pending(range(3))
    pending.refused(pending.take(), 1.0)
    pending.parked_until = 0.0
    assert pending.take() == 0 and pending.wait_s() == 0  # line 1 may go beside it
