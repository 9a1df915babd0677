"""Circuit breaker for one (provider, model): stop sending calls to an upstream that keeps failing, then let a
single probe through after a cool-down to find out whether it recovered."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):  # values are the llmrouter_provider_circuit_state gauge
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        on_change: Callable[[State], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.on_change = on_change
        self.clock = clock
        self.state = State.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time may."""
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self._set(State.HALF_OPEN)
        if self.state is State.CLOSED:
            return True
        if self.state is State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.probing = 0, False
        self._set(State.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.state is State.HALF_OPEN or self.failures >= self.threshold:
            self.opened_at = self.clock()
            self._set(State.OPEN)

    def release(self) -> None:
        """A call ended with no verdict on the upstream's health (cancelled, or refused as a bad request)."""
        self.probing = False

    def _set(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(state)
