"""The money's clock: Unix time as the money Redis' clock tells it, the one clock every router shares.

Routers compare times other routers wrote: the reconciler ages a pending charge by its admission time (written by the
router that admitted it), a batch line asked about again is still being sent while young (deferred.py, SENDING_S), a
budget period and a rate window are named by the time of the router that admits. Each router's own clock would make
those decisions off by the skew between the pods (a router 300 s ahead took a line admitted a second before for one
whose provider batch was never recorded, and its answer was lost; the reconciler charged at its hold a request still
running). Redis already keeps its own time for every TTL of the money. So each router reads the money Redis' TIME at
every upkeep round (RedisStore.ping) and dates its money by it: its own clock plus the offset measured by the fastest
recent reading (MoneyClock.follow), within half its round trip. Until the first reading (and with the in-process
store) the offset is 0: the machine's clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

# How long a reading may stand for the offset while later ones agree with it. Short, so that what this machine's clock
# drifts meanwhile (100 ppm: 6 ms a minute) stays far below a round trip's error; long enough to span many upkeep
# rounds (ROUTER_UPKEEP_INTERVAL_S, 2 s by default), so one fast reading outweighs a run of slow ones.
KEPT_S = 60.0


@dataclass(frozen=True)
class Reading:
    """One TIME round trip. The store read its clock at some instant between sending and receiving, so the offset
    (the store's clock less this machine's) lies between `low` and `high`, however the round trip's time was spent:
    an interval as wide as the round trip."""

    taken_s: float  # time.monotonic(): a step of the machine's clock ages no reading
    low: float
    high: float

    @property
    def midpoint(self) -> float:
        return (self.low + self.high) / 2

    @property
    def width(self) -> float:
        return self.high - self.low

    def agrees_with(self, other: Reading) -> bool:
        return self.low <= other.high and other.low <= self.high


class MoneyClock:
    def __init__(self) -> None:
        self.offset_s = 0.0  # the money Redis' clock less this machine's, as measured
        self.readings: list[Reading] = []  # those of the last KEPT_S that agree with the latest, oldest first

    def now(self) -> float:
        return time.time() + self.offset_s

    def follow(self, store_s: float, sent_s: float, received_s: float) -> None:
        """The store read `store_s` on its clock between `sent_s` and `received_s` on this machine's.

        Taken as read midway, a reading is off by up to half its round trip: a slow one (a Redis paused or busy, a GC
        pause here between the reply and the clock read) moved the offset by up to half of it, and every hold, pending
        charge and budget period dated by it. So the offset is the midpoint of the narrowest (fastest) reading of the
        last KEPT_S: a slow one counts only when no faster one is at hand. A reading that shares no offset with an
        older one means a clock stepped between them (this machine's, set by NTP; or the store's, a failover to
        another server): the older ones measured a clock that is no more, and are dropped, so a step is followed at
        once, by the first reading after it."""
        if received_s < sent_s:  # this machine's clock stepped back during the round trip: the reading dates nothing
            return  # (taken, it would be the "fastest", its width negative, and put the offset half the step away)
        reading = Reading(time.monotonic(), store_s - received_s, store_s - sent_s)
        recent = [r for r in self.readings if reading.taken_s - r.taken_s < KEPT_S and r.agrees_with(reading)]
        self.readings = [*recent, reading]
        self.offset_s = min(reversed(self.readings), key=lambda r: r.width).midpoint  # the newest of the fastest


MONEY_CLOCK = MoneyClock()


def money_now() -> float:
    """Unix seconds by the money's clock."""
    return MONEY_CLOCK.now()
