"""One way to open a Redis client from a URL, for every service: `redis://` (or `rediss://`) is one server,
`redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`) a Redis Cluster reached through any of the
nodes listed (the rest are discovered). Callers use the same commands on either; multi-key scripts must keep
their keys in one hash slot (services/router/store/keys.py does)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from pydantic import SecretStr
from redis.asyncio.cluster import ClusterNode, RedisCluster

from llmrouter.redis_url import CLUSTER_SCHEMES, check, cluster_addresses, revealed

# How long a master has to answer before the next is asked too, as the default node is chosen (first_to_answer).
STAGGER_S = 0.5


class Cluster(RedisCluster):
    """Learns the cluster's layout before its first command: redis-py 8.1 lets commands issued while the first
    discovery runs pick a startup connection that discovery closes (AttributeError under a burst)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    def node_unanswered(self, node: ClusterNode) -> None:
        """A node that did not answer within a caller's own time limit, which cancels the call: redis-py takes only a
        connection error or its own socket timeout for a node failing, and learns the layout again after those alone.
        Asked for so, the next command learns it (once due), as after a connection error: a failover's promoted
        replica is found even where the old master's address takes connections, or packets, and never answers."""
        self._request_refresh(last_failed_node_name=node.name)

    async def _refresh_topology(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> None:
        """redis-py's refresh, with one change: the default node, where keyless commands go (PING, TIME, INFO, SCRIPT,
        and the command table the first refresh reads), is the first primary to answer (first_to_answer), not always
        the first listed (slot 0's). With that one down, every command of the client failed, on every master: a router
        started then served no tenant at all, though the other masters served their slots. The default node chosen
        before is asked first while it is still a primary: one whose address never answers is not waited for again
        at each refresh (every command that ran one paid the stagger)."""
        chosen = self.nodes_manager.default_node
        await self.nodes_manager.initialize(
            additional_startup_nodes_info=additional_startup_nodes_info, last_failed_node_name=last_failed_node_name
        )
        node = await first_to_answer(sorted(self.get_primaries(), key=lambda primary: primary is not chosen))
        self.nodes_manager.default_node = node
        if self.commands_parser.commands:
            self.commands_parser.node = node
        else:
            await self.commands_parser.initialize(node)


async def first_to_answer(nodes: Sequence[ClusterNode], stagger_s: float = STAGGER_S) -> ClusterNode:
    """The first of `nodes` to answer a PING, asked in their order: the next one as soon as those asked have failed,
    or after `stagger_s` without an answer (an address that never answers costs that, not its timeout); the first
    listed when none answers, whose call then fails as it would have. One that answers at once is the only one asked."""
    asking: dict[asyncio.Task[Any], ClusterNode] = {}
    waiting: set[asyncio.Task[Any]] = set()
    try:
        for place, node in enumerate(nodes):
            asked = asyncio.create_task(node.execute_command("PING"))
            asking[asked] = node
            waiting.add(asked)
            last = place == len(nodes) - 1
            while waiting:
                done, waiting = await asyncio.wait(
                    waiting, timeout=None if last else stagger_s, return_when=asyncio.FIRST_COMPLETED
                )
                for answer in done:
                    if answer.exception() is None:
                        return asking[answer]
                if not done:
                    break  # slow to answer: the next one is asked too
        return nodes[0]
    finally:
        for task in asking:
            task.cancel()
        await asyncio.gather(*asking, return_exceptions=True)


def is_cluster(url: str | SecretStr) -> bool:
    return revealed(url).split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def connect(
    url: str | SecretStr, *, max_connections: int = 64, pool_timeout: float | None = None, **options: Any
) -> Any:
    """A redis.asyncio client (Redis or RedisCluster). `max_connections` caps the pool (per node on a cluster,
    where a command finding every connection busy fails: callers that must not fail bound their own
    concurrency); with `pool_timeout`, a single server's pool makes callers wait that long for a free
    connection instead. Where a URL setting (llmrouter.redis_url.RedisUrl) is revealed, for the client; a malformed
    URL is refused by a message that does not quote it (redis-py's would)."""
    url = revealed(url)
    check(url)
    if not is_cluster(url):
        if pool_timeout is None:
            return redis.Redis.from_url(url, max_connections=max_connections, **options)
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, **options
        )
        return redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    parts = urlsplit(url)
    credentials, _, addresses = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    return Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_addresses(addresses)],
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=CLUSTER_SCHEMES[parts.scheme],
        max_connections=max_connections,
        **options,
    )


async def each_primary(client: Any, *command: str) -> dict[str, Any]:
    """A command's answer from every primary (one entry, 'server', for a single server), by node address: for
    checks that must hold on every shard, such as the eviction policy."""
    if not is_cluster_client(client):
        return {"server": await client.execute_command(*command)}
    await client.initialize()
    return {node.name: await client.execute_command(*command, target_nodes=node) for node in client.get_primaries()}


async def each_answering_primary(client: Any, *command: str) -> tuple[dict[str, Any], list[str]]:
    """each_primary's answers of the primaries that answer, and the names of those out of reach (a master of a Redis
    Cluster down while the others serve their slots); a single server out of reach raises, as any other error does."""
    if not is_cluster_client(client):
        return await each_primary(client, *command), []
    await client.initialize()
    answers: dict[str, Any] = {}
    unreachable: list[str] = []
    for node in client.get_primaries():
        try:
            answers[node.name] = await client.execute_command(*command, target_nodes=node)
        except (redis.ConnectionError, redis.TimeoutError):
            unreachable.append(node.name)
    return answers, unreachable


def node_url(url: str | SecretStr, host: str, port: int) -> str:
    """A `redis://` (`rediss://`) URL of one node of the Redis Cluster at `url`, with its user and password: for
    commands that must run on one connection of that node (WAIT, which counts the writes of its own connection)."""
    url = revealed(url)
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    scheme = "rediss" if CLUSTER_SCHEMES[parts.scheme.lower()] else "redis"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{scheme}://{credentials + '@' if credentials else ''}{address}/0"
