"""A batch run's lines still to send, and when the batch may send the next one.

A line the router refuses for now (a rate limit, the router or its money store out of reach) goes back to wait,
and the whole batch is parked until the router's retry time: its lines then hold none of the edge's runner slots,
which other batches' lines use meanwhile. So does a line sent again after its edge died whose first attempt's charge
is still open (the router refuses it as a duplicate, pending): it is asked again until that charge settles. Each line
is waiting, in flight or finished, never two of these, so it is sent again only after a refusal (nothing admitted,
nothing charged; or a duplicate, charged once whichever) and recorded once."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # without the router's retry time; then every 5 s, until it admits a line
MAX_PARK_S = 60.0  # a rate limit's window: a retry time past it is not the router's to give


class Pending:
    def __init__(self, indices: Iterable[int]) -> None:
        self.waiting = deque(indices)
        self.in_flight = 0
        self.parked_until = 0.0  # the event loop's clock
        self.refusals = 0  # parks since the router last admitted one of the batch's lines
        # Since a refusal for the budget, until a line finishes, one line is sent at a time: each call a budget refuses
        # is counted against its tenant's requests per minute, and every slot's line again each park used up the limit.
        self.probing = False
        self._changed = asyncio.Event()

    def wait_s(self) -> float | None:
        """0 when a line may be sent now; else how long until one may (inf: only lines in flight are left, which
        may come back); None when every line has finished."""
        if self.waiting:
            if self.probing and self.in_flight:  # the line sent after the refusal comes back first
                return float("inf")
            return max(0.0, self.parked_until - asyncio.get_running_loop().time())
        return float("inf") if self.in_flight else None

    def parked(self) -> bool:
        return bool(self.waiting) and self.parked_until > asyncio.get_running_loop().time()

    def take(self) -> int:
        self.in_flight += 1
        return self.waiting.popleft()

    def keep(self, indices: set[int]) -> bool:
        """Only these lines may still be sent: the others stop waiting. True when any did."""
        before = len(self.waiting)
        self.waiting = deque(i for i in self.waiting if i in indices)
        return len(self.waiting) < before

    def finished(self) -> None:
        """The line has its result, written once: it is not sent again."""
        self.in_flight -= 1
        self.refusals = 0
        self.probing = False
        self._changed.set()

    def refused(self, index: int, retry_after_s: float | None, probe: bool = False) -> None:
        """The router did not admit the line (or its charge is open): it waits again, first in line, and the batch
        parks until the router's retry time, or for a backoff that grows with each park while the router admits none.
        `probe`: the router counted the call all the same (a budget's refusal), and the lines after the park go one at
        a time until one finishes."""
        self.in_flight -= 1
        self.probing = self.probing or probe
        self.waiting.appendleft(index)
        now = asyncio.get_running_loop().time()
        if now >= self.parked_until:  # once per park: the lines in flight as it parks come back refused too
            backoff = RETRY_S[min(self.refusals, len(RETRY_S) - 1)]
            self.refusals += 1
            self.parked_until = now + backoff
        if retry_after_s is not None:
            self.parked_until = max(self.parked_until, now + min(max(retry_after_s, RETRY_S[0]), MAX_PARK_S))
        self._changed.set()

    async def changed(self, within_s: float) -> None:
        """Return when a line in flight finishes or comes back, or after within_s."""
        try:
            async with asyncio.timeout(within_s):
                await self._changed.wait()
        except TimeoutError:
            pass
        self._changed.clear()
