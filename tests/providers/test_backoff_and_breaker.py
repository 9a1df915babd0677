"""The retry delay and the circuit breaker on their own, with a controlled random source and clock."""

from __future__ import annotations

from services.providers.backoff import retry_delay
from services.providers.breaker import CircuitBreaker, State


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    top = [retry_delay(n, base_s=0.5, cap_s=4.0, rand=lambda: 1.0) for n in range(6)]
    assert top == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_has_full_jitter() -> None:
    assert retry_delay(3, base_s=0.5, cap_s=4.0, rand=lambda: 0.0) == 0.0
    assert retry_delay(3, base_s=0.5, cap_s=4.0, rand=lambda: 0.25) == 1.0


def test_retry_after_is_a_floor() -> None:
    assert retry_delay(0, base_s=0.5, cap_s=4.0, retry_after=3.0, rand=lambda: 1.0) == 3.0
    assert retry_delay(3, base_s=0.5, cap_s=4.0, retry_after=1.0, rand=lambda: 1.0) == 4.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_cycle() -> None:
    clock, states = Clock(), list[State]()
    breaker = CircuitBreaker(failures=2, cooldown_s=10, on_change=states.append, clock=clock)
    breaker.failure()
    assert breaker.allow()  # one failure is not enough
    breaker.success()
    breaker.failure()
    assert breaker.allow()  # a success in between resets the count
    breaker.failure()
    assert breaker.state is State.OPEN and not breaker.allow()

    clock.now += 10
    assert breaker.allow() and breaker.state is State.HALF_OPEN
    assert not breaker.allow()  # a single probe at a time
    breaker.release()  # the probe ended without a verdict (cancelled): another may go
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is State.OPEN and not breaker.allow()

    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.allow() and breaker.allow()
    assert states == [State.OPEN, State.HALF_OPEN, State.OPEN, State.HALF_OPEN, State.CLOSED]
