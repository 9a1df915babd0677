"""How long to wait before the next retry."""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter (spreads out clients that failed together), never shorter than
    the provider's Retry-After. `attempt` counts from 0 for the first retry."""
    delay = rand() * min(cap_s, base_s * 2**attempt)
    return max(delay, retry_after) if retry_after is not None else delay
