"""Request ids seen recently, for the in-process money store: what Redis's `used` and `charged` markers do (an
id counts for ROUTER_REQUEST_ID_TTL_S), in memory bounded by a cap.

An id is kept as a 128-bit digest (no two of a few thousand ids collide in practice: ~1e-31) with its expiry,
about 125 bytes, and forgotten when its TTL ends or, once `cap` ids are kept, oldest first. So a duplicate is
caught only within the last `cap` ids of the TTL: an id seen again after that many newer ones counts as new. An id
may be kept longer than the TTL (add's ttl_s, outlive: a used id outlives its request's hold, model.py, used_ttl_s):
one kept longer than ids added after it holds their memory until it is forgotten (they no longer count as kept
once their own expiry passes), within the cap all the same."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable


class RecentIds:
    def __init__(self, ttl_s: float, cap: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.cap = cap
        self._clock = clock
        self._expiry: dict[int, float] = {}  # digest -> when it is forgotten
        self._order: deque[int] = deque()  # digests, oldest first: in expiry order but for those kept longer
        self._values: dict[int, str] = {}  # digest -> what was kept with it, when not ''

    def __contains__(self, request_key: str) -> bool:
        expiry = self._expiry.get(_digest(request_key))
        return expiry is not None and expiry > self._clock()

    def get(self, request_key: str) -> str | None:
        """What was kept with the id ('' by default); None when the id is not kept."""
        return self._values.get(_digest(request_key), "") if request_key in self else None

    def add(self, request_key: str, value: str = "", ttl_s: float | None = None) -> bool:
        """Keep the id (and `value` with it) for `ttl_s` (the TTL by default), unless it is kept already: then
        False, and its expiry and value stay (as Redis's SET NX)."""
        now = self._clock()
        self._forget(now)
        digest = _digest(request_key)
        if digest in self._expiry:
            if self._expiry[digest] > now:
                return False
            self.discard(request_key)  # expired, behind one kept longer: kept anew
        if len(self._order) >= self.cap:
            self._drop(self._order.popleft())
        self._expiry[digest] = now + (self.ttl_s if ttl_s is None else ttl_s)
        self._order.append(digest)
        if value:
            self._values[digest] = value
        return True

    def left_s(self, request_key: str) -> float:
        """How long the id is kept still (as Redis's PTTL); 0 when it is not kept."""
        expiry = self._expiry.get(_digest(request_key))
        return max(0.0, expiry - self._clock()) if expiry is not None else 0.0

    def outlive(self, request_key: str, ttl_s: float) -> None:
        """Keep the id, when kept, at least `ttl_s` from now (as Redis's EXPIRE GT)."""
        digest = _digest(request_key)
        if request_key in self:
            self._expiry[digest] = max(self._expiry[digest], self._clock() + ttl_s)

    def discard(self, request_key: str) -> None:
        """Forget the id now (an undone admission frees its id). Rare: a linear walk of at most `cap` ids."""
        digest = _digest(request_key)
        if digest in self._expiry:
            self._drop(digest)
            self._order.remove(digest)

    def __len__(self) -> int:
        return len(self._order)

    def _forget(self, now: float) -> None:
        while self._order and self._expiry[self._order[0]] <= now:
            self._drop(self._order.popleft())

    def _drop(self, digest: int) -> None:
        del self._expiry[digest]
        self._values.pop(digest, None)


def _digest(request_key: str) -> int:
    return int.from_bytes(hashlib.blake2b(request_key.encode(), digest_size=16).digest(), "big")
