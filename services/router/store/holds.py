"""One holds set of the in-process money store (RedisStore's sorted set of hold members scored by expiry): member ->
(expiry, pico), with the sum of its members' pico-dollars kept as members come and go, and its members in expiry
order, so that admission reads what a budget holds and drops the expired holds without walking every request in
flight. An exact integer sum: every change adds or subtracts one member's pico."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, MutableMapping


class Holds(MutableMapping[str, tuple[float, int]]):
    """A mapping, member -> (expiry, pico), whose `total` is the sum of its members' pico."""

    # The expiry heap is rebuilt from the members once its entries of members gone or re-set pass this many plus
    # its members: its memory stays within a constant factor of the members', each rebuild paid for by as many
    # changes before it.
    SLACK = 64

    def __init__(self) -> None:
        self._members: dict[str, tuple[float, int]] = {}
        self.total = 0
        self._by_expiry: list[tuple[float, str]] = []  # a heap; an entry whose member is gone or re-set is skipped
        self._overdue: set[str] = set()  # past their expiry but kept (open), checked again at each sweep

    def __getitem__(self, member: str) -> tuple[float, int]:
        return self._members[member]

    def __setitem__(self, member: str, value: tuple[float, int]) -> None:
        old = self._members.get(member)
        if old is not None:
            self.total -= old[1]
        self._members[member] = value
        self.total += value[1]
        self._overdue.discard(member)
        heapq.heappush(self._by_expiry, (value[0], member))
        if len(self._by_expiry) > 2 * len(self._members) + self.SLACK:
            self._by_expiry = [(expiry, m) for m, (expiry, _) in self._members.items() if m not in self._overdue]
            heapq.heapify(self._by_expiry)

    def __delitem__(self, member: str) -> None:
        _, pico = self._members.pop(member)
        self.total -= pico
        self._overdue.discard(member)

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def drop_expired(self, now: float, kept: Callable[[str, int], bool]) -> None:
        """Drop every member whose expiry is at or before `now`, except those `kept(member, pico)` keeps (RedisStore's
        ADMIT: the hold of an open pending charge counts past its expiry). Costs what expired since the last sweep
        and the members kept past their expiry, not the members in all."""
        for member in list(self._overdue):
            expiry, pico = self._members[member]
            if expiry > now:  # the clock went back: not past its expiry any more, so in the heap again
                self._overdue.discard(member)
                heapq.heappush(self._by_expiry, (expiry, member))
            elif not kept(member, pico):
                del self[member]
        heap = self._by_expiry
        while heap and heap[0][0] <= now:
            expiry, member = heapq.heappop(heap)
            current = self._members.get(member)
            if current is None or current[0] != expiry:
                continue  # gone, or re-set since: its entry now is another
            if kept(member, current[1]):
                self._overdue.add(member)
            else:
                del self[member]
