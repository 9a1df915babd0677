"""The money's clock (services/router/store/clock.py) held at a time the test sets and moves: a rate window turns when
the test says, never because the machine's clock reached a window's end while a request was on its way."""

from __future__ import annotations

import pytest

from services.router.store import keys as store_keys
from services.router.store.clock import MONEY_CLOCK

# Thirty seconds into a minute (1_800_000_000 is a minute's start): as far from either end of it as can be.
MID_MINUTE = 1_800_000_030.0


class HeldMoneyClock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: float = MID_MINUTE) -> None:
        self.at = at
        monkeypatch.setattr(MONEY_CLOCK, "now", lambda: self.at)

    def next_window(self) -> None:
        """Into the next rate window, as far into it as the clock was into its own."""
        self.at += store_keys.RATE_WINDOW_S
