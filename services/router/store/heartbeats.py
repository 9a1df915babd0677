"""The look at the routers' heartbeats for ROUTER_HOLD_TOTALS=auto: how many live routers keep no hold totals.

The heartbeats (keys.py, alive_key) live beside a day of request-id markers, tens of millions of keys. One Redis
server can only find them by a scan of its whole keyspace (~1 s a million keys). On a Redis Cluster every GLOBAL key
is in one hash slot, so the master that owns it lists that slot's few keys (CLUSTER GETKEYSINSLOT) and reads the
heartbeats among them, in one script: the cost no longer grows with the keyspace. Unless that master is the slot's
stable owner, the listing may be partial (the slot migrating: its keys split between two nodes), so the look falls
back to the scan of every master."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

from llmrouter.redis_connect import is_cluster_client
from services.router.store import lua
from services.router.store.keys import ALIVE_KEYS, ALIVE_PREFIX, GLOBAL, GLOBAL_SLOT, KEEPS_HOLD_TOTALS

log = logging.getLogger("llmrouter.router")
_refused_told = False  # a refused listing is told once: the scan goes on each look, a warning each would be noise


async def older_routers(client: Any) -> int:
    """How many live routers' heartbeats say they keep no hold totals (written by a version before them)."""
    if is_cluster_client(client):
        try:
            listed = await _listed_in_slot(client)
        except ResponseError as refused:  # denied (an ACL, a managed service), renamed, or the cluster busy
            global _refused_told
            if not _refused_told:
                _refused_told = True
                log.warning(
                    "the money store's global slot could not be listed: the heartbeats are looked for by a scan "
                    "(a router's Redis user needs CLUSTER MYID, NODES, COUNTKEYSINSLOT and GETKEYSINSLOT)",
                    extra={"error": str(refused)},
                )
        else:
            if listed is not None:
                return _older(listed)
            log.info("the money store's global slot is not stably owned: the heartbeats are looked for by a scan")
    return _older(await _scanned(client))


def owns_stably(node_line: str, slot: int) -> bool:
    """Whether a node's own line of CLUSTER NODES says it is a master serving `slot`, neither migrating it to another
    node ('[<slot>->-<node>]') nor importing it ('[<slot>-<-<node>]'): then it holds every key of the slot."""
    fields = node_line.split()
    if len(fields) < 8 or "master" not in fields[2].split(","):
        return False
    served = False
    for entry in fields[8:]:
        if entry.startswith("["):
            if int(entry[1:].split("-", 1)[0]) == slot:
                return False
        else:
            first, _, last = entry.partition("-")
            served = served or int(first) <= slot <= int(last or first)
    return served


async def _listed_in_slot(client: Any) -> list[Any] | None:
    """The heartbeats, as the master this client takes for the GLOBAL slot's owner lists and reads them at one
    instant; None when it is not that slot's stable owner (the slot migrating or importing, given to another node
    since this client learnt the layout, or the node a replica now)."""
    await client.initialize()
    node = client.get_node_from_key(GLOBAL)
    line, beats = await client.execute_command(
        "EVAL", lua.SLOT_HEARTBEATS, 0, GLOBAL_SLOT, ALIVE_PREFIX, target_nodes=node
    )
    return beats if owns_stably(line.decode(), GLOBAL_SLOT) else None


async def _scanned(client: Any) -> list[Any]:
    names = {name async for name in client.scan_iter(match=ALIVE_KEYS, count=1000)}  # a cluster's may meet one twice
    if not is_cluster_client(client):
        return await client.mget(list(names)) if names else []
    # One at a time: while the slot migrates, its owner refuses an MGET of keys split between two nodes (TRYAGAIN),
    # and a heartbeat moved already is read where it is (ASK).
    return [await client.get(name) for name in names]


def _older(beats: list[Any]) -> int:
    # A key gone between its listing and the read is a router gone: nothing of it is left to write a hold.
    return sum(1 for beat in beats if beat is not None and KEEPS_HOLD_TOTALS.encode() not in beat)
