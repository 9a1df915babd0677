"""The money's clock: Unix time as the money Redis' clock tells it, the one clock every router shares.

Routers compare times other routers wrote: the reconciler ages a pending charge by its admission time (written by the
router that admitted it), a batch line asked about again is still being sent while young (deferred.py, SENDING_S), a
budget period and a rate window are named by the time of the router that admits. Each router's own clock would make
those decisions off by the skew between the pods (a router 300 s ahead took a line admitted a second before for one
whose provider batch was never recorded, and its answer was lost; the reconciler charged at its hold a request still
running). Redis already keeps its own time for every TTL of the money. So each router reads the money Redis' TIME at
every upkeep round (RedisStore.ping) and dates its money by it: its own clock plus the offset last measured, within
half a round trip. Until the first reading (and with the in-process store) the offset is 0: the machine's clock."""

from __future__ import annotations

import time


class MoneyClock:
    def __init__(self) -> None:
        self.offset_s = 0.0  # the money Redis' clock less this machine's, as last measured

    def now(self) -> float:
        return time.time() + self.offset_s

    def follow(self, store_s: float, sent_s: float, received_s: float) -> None:
        """The store read `store_s` on its clock between `sent_s` and `received_s` on this machine's: taken as read
        midway."""
        self.offset_s = store_s - (sent_s + received_s) / 2


MONEY_CLOCK = MoneyClock()


def money_now() -> float:
    """Unix seconds by the money's clock."""
    return MONEY_CLOCK.now()
