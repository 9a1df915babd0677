"""How full the router's Redis stores are, for the alert that comes before a full money store: under noeviction a
full one refuses writes and the router then refuses every request; and, by the same read, how many masters of a Redis
Cluster store are out of reach, for the alert on one master down (its tenants refused while the router stays up).
Read by the upkeep loop, never on a request."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from llmrouter.redis_connect import each_answering_primary
from services.router import metrics

log = logging.getLogger("llmrouter.router")
READ_EVERY_S = 15.0  # its alerts wait 10 minutes; each read is an INFO a master


def memory_ratio(infos: dict[str, Any]) -> float:
    """The fullest primary's memory against its maxmemory, as Redis counts it for maxmemory (used_memory less the
    replication and AOF buffers): at 1 a noeviction store refuses writes. NaN when no primary has a maxmemory
    (unbounded: it grows until the host's memory runs out, and no ratio tells how far that is)."""
    ratios = [
        (int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))) / int(info["maxmemory"])
        for info in infos.values()
        if int(info.get("maxmemory", 0))
    ]
    return max(ratios, default=math.nan)


class StoreMemory:
    """llmrouter_router_store_memory_ratio of each store with a Redis (`clients`, by store label: money, cache), read
    at most every `every_s`. A store that cannot be read has no series until it can: never a stale ratio (the
    store's llmrouter_router_store_up says why). A Redis Cluster with masters out of reach (one down while the others
    serve their slots) is the fullest of those that answer, the others logged: their memory is not known, not 0, and
    a master nearly full elsewhere still fires the alert. How many are out of reach is
    llmrouter_router_store_masters_unreachable (no series either while the store cannot be read)."""

    def __init__(self, clients: dict[str, Any], every_s: float = READ_EVERY_S) -> None:
        self.clients = clients
        self.every_s = every_s
        self._due = float("-inf")  # monotonic
        self._unread: set[str] = set()  # stores whose last read failed, logged once
        self._left_out: dict[str, list[str]] = {}  # store -> its masters out of reach at the last read, logged once

    async def refresh(self) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every_s
        for store, client in self.clients.items():
            try:
                ratio = memory_ratio(await self._answering(store, client))
            except Exception:  # out of reach, or INFO denied: no figure rather than an old one
                if store not in self._unread:
                    log.warning(f"the {store} store's memory use cannot be read", exc_info=True)
                    self._unread.add(store)
                    metrics.STORE_MEMORY.remove(store)
                    metrics.STORE_MASTERS_UNREACHABLE.remove(store)
                continue
            self._unread.discard(store)
            metrics.STORE_MEMORY.labels(store).set(ratio)

    async def _answering(self, store: str, client: Any) -> dict[str, Any]:
        """INFO memory of the store's masters that answer; raises when none does (no figure: not NaN, which says
        unbounded)."""
        infos, out_of_reach = await each_answering_primary(client, "INFO", "memory")
        unreachable = sorted(out_of_reach)
        if not infos:
            raise ConnectionError(f"no master answers: {', '.join(unreachable)}")
        metrics.STORE_MASTERS_UNREACHABLE.labels(store).set(len(unreachable))
        if unreachable and unreachable != self._left_out.get(store):
            log.warning(
                f"the {store} store's memory use leaves out its masters out of reach", extra={"masters": unreachable}
            )
        self._left_out[store] = unreachable
        return infos
