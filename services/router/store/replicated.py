"""Writes an operator's command waits to see replicated (key_move.py): a failover to a replica that never got them
would lose them silently. Redis' WAIT counts the replicas that acknowledged the writes of its own connection, so each
master's share of the writes is sent on one connection of its own (a pipeline), WAIT last; on a Redis Cluster, master
by master, the first write's first, so the writes land in the order given."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

from pydantic import SecretStr
from redis.exceptions import AskError

from llmrouter.redis_connect import connect, is_cluster_client, node_url
from services.router.store.model import StoreUnavailable

# How much longer than WAIT's own timeout a connection waits for its reply.
REPLY_MARGIN_S = 5.0


class Replicated(NamedTuple):
    """Of one master ('the master' on one server, else 'master <address>'): how many replicas acknowledged its share
    of the writes."""

    master: str
    replicas: int


async def set_replicated(
    url: str | SecretStr, client: Any, writes: Sequence[tuple[str, str]], replicas: int, wait_s: float
) -> tuple[list[Any], list[Replicated]]:
    """SET each (key, value) of `writes` (GET: what each held before, in order), then WAIT for `replicas` replicas of
    each master written to, `wait_s` at most. `client`: the store's client on `url`, for a cluster's layout. A slot
    moved meanwhile (MOVED, ASK) is StoreUnavailable: the writes may be made in part."""
    shares: dict[str, list[int]] = {}  # master -> the writes' indexes, masters in order of their first write
    urls: dict[str, str | SecretStr] = {}
    if is_cluster_client(client):
        await client.initialize()
        for i, (key, _) in enumerate(writes):
            node = client.get_node_from_key(key)
            shares.setdefault(f"master {node.name}", []).append(i)
            urls[f"master {node.name}"] = node_url(url, node.host, node.port)
    else:
        shares["the master"], urls["the master"] = list(range(len(writes))), url
    before: list[Any] = [None] * len(writes)
    told = []
    for master, indexes in shares.items():
        commands = [partial(_set, *writes[i]) for i in indexes]
        values, acknowledged = await _share(urls[master], commands, replicas, wait_s)
        for i, value in zip(indexes, values, strict=True):
            before[i] = value
        told.append(Replicated(master, acknowledged))
    return before, told


async def add_replicated(
    url: str | SecretStr, client: Any, stream: str, fields: dict[str, str], replicas: int, wait_s: float
) -> Replicated:
    """XADD `fields` to `stream`, then WAIT for `replicas` replicas of its master, `wait_s` at most."""
    master, master_url = "the master", url
    if is_cluster_client(client):
        await client.initialize()
        node = client.get_node_from_key(stream)
        master, master_url = f"master {node.name}", node_url(url, node.host, node.port)
    _, acknowledged = await _share(master_url, [lambda pipe: pipe.xadd(stream, fields)], replicas, wait_s)
    return Replicated(master, acknowledged)


def _set(key: str, value: str, pipe: Any) -> None:
    pipe.set(key, value, get=True)


async def _share(
    url: str | SecretStr, commands: Sequence[Callable[[Any], Any]], replicas: int, wait_s: float
) -> tuple[list[Any], int]:
    """The commands (one master's, each queuing itself on the pipeline given), then WAIT, on one connection of their
    own: what each answered, and how many replicas acknowledged them."""
    node = connect(url, max_connections=1, socket_connect_timeout=2, socket_timeout=wait_s + REPLY_MARGIN_S)
    try:
        async with node.pipeline(transaction=False) as pipe:
            for command in commands:
                command(pipe)
            pipe.wait(replicas, max(1, round(wait_s * 1000)))
            *values, acknowledged = await pipe.execute()
    except AskError as exc:  # MOVED too: the layout changed under the writes
        raise StoreUnavailable() from exc
    finally:
        await node.aclose()
    return values, int(acknowledged)
