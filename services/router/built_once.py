"""Tables built once per key, off the event loop: a build of tens of milliseconds (a pass over the reference mix for a
model set first seen) runs in a thread, once however many requests wait for it, and whichever of them leaves; the
tables are kept, a bounded number of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Table = TypeVar("Table")
KEPT = 32  # model sets and prices rarely change; never let their tables pile up


class BuiltOnce(Generic[Key, Table]):
    def __init__(self) -> None:
        self._kept: dict[Key, Table] = {}
        self._building: dict[Key, asyncio.Future[Table]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def building(self) -> int:
        """How many builds are under way."""
        return len(self._building)

    def build_here(self, key: Key, build: Callable[[], Table]) -> None:
        """Builds now, on this thread: at start, before any request waits on it."""
        self._keep(key, build())

    async def get(self, key: Key, build: Callable[[], Table]) -> Table:
        """The table of `key`, built in a thread by `build` unless it is kept or under way."""
        if (kept := self._kept.get(key)) is not None:
            return kept
        building = self._building.get(key)
        if building is None:
            building = asyncio.ensure_future(asyncio.to_thread(build))
            self._building[key] = building
            building.add_done_callback(lambda done: self._built(key, done))
        return await asyncio.shield(building)

    def _built(self, key: Key, done: asyncio.Future[Table]) -> None:
        del self._building[key]
        if not done.cancelled() and done.exception() is None:  # else the next request builds it again
            self._keep(key, done.result())

    def _keep(self, key: Key, table: Table) -> None:
        if len(self._kept) >= KEPT:
            self._kept.clear()
        self._kept[key] = table
