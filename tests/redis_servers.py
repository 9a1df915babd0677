"""Real redis-server processes on free ports, started by a test: the money store and the cache with the
eviction policies a deployment gives them, stopped and restarted mid-test to play an outage."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, *args: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.bus_port = 0  # a cluster node's bus port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        # A replica's full sync starts at once: a master's default waits 5 s for more replicas to share it, which
        # each test that starts a replica (or a cluster with replicas) spent doing nothing.
        command += ["--repl-diskless-sync-delay", "0"]
        self.process = subprocess.Popen([*command, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        """Killed, as a crash: with appendfsync everysec the writes of its last second or two may be lost (Redis
        postpones its AOF writes while a background fsync runs, for up to 2 s, longest on a busy disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def shut_down(self) -> None:
        """Stopped as Kubernetes stops a pod (SIGTERM): Redis writes and fsyncs its AOF before it exits, so started
        again it holds every write it acknowledged, however busy the disk."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()

    def info(self, section: str) -> dict:
        client = redis.Redis(port=self.port)
        try:
            return client.info(section)
        finally:
            client.close()


def money_redis(workdir: Path) -> RedisServer:
    """As the money store must be: never evicting, persisted with AOF (so a restart keeps every counter)."""
    return RedisServer(workdir, "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction")


def cache_redis(workdir: Path, maxmemory: str = "2mb") -> RedisServer:
    return RedisServer(workdir, "--save", "", "--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru")


class RedisCluster:
    """A real Redis Cluster of `masters` redis-server processes (no replicas) on free loopback ports, each in
    its own directory, given an equal slot range (CLUSTER ADDSLOTSRANGE) and introduced (CLUSTER MEET); as the
    money store must be (never evicting, AOF on). A missing redis-server is an error, never a skip. Without
    `full_coverage`, the masters serve their slots while another's are uncovered (cluster-require-full-coverage no)."""

    def __init__(self, workdir: Path, masters: int = 3, full_coverage: bool = True, replicas: int = 0) -> None:
        coverage = ("--cluster-require-full-coverage", "yes" if full_coverage else "no")
        cluster_args = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000", *coverage)
        self.nodes = [money_redis(workdir / f"node-{i}") for i in range(masters)]
        # `replicas` of each master (CLUSTER REPLICATE), master i's the i-th `replicas` of these.
        self.replicas = [money_redis(workdir / f"replica-{i}") for i in range(masters * replicas)]
        for node in [*self.nodes, *self.replicas]:
            config = ("--cluster-config-file", str(node.workdir / "nodes.conf"))
            # The bus port defaults to port + 10000, past 65535 for a high free port: one of its own.
            node.bus_port = free_port()
            node.args = (*node.args, *cluster_args, *config, "--cluster-port", str(node.bus_port))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no node outlives a cluster that did not form
            raise

    def _start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        # Each master takes an equal slot range, then they meet on their bus ports, each pair directly (not left to
        # gossip, which takes seconds on a busy machine).
        slots = 16384
        for i, node in enumerate(self.nodes):
            first, last = i * slots // len(self.nodes), (i + 1) * slots // len(self.nodes) - 1
            self._command(node, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for i, node in enumerate(self.nodes):
            for met in self.nodes[:i]:
                self._command(met, "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self._ready()
        for replica in self.replicas:
            replica.start()
            self._command(self.nodes[0], "CLUSTER", "MEET", "127.0.0.1", replica.port, replica.bus_port)
        for i, replica in enumerate(self.replicas):
            master = self._id(i * len(self.nodes) // len(self.replicas))
            deadline = time.monotonic() + 30
            while master.encode() not in self._command(replica, "CLUSTER", "NODES"):  # met once the gossip says so
                if time.monotonic() > deadline:
                    raise RuntimeError("a replica never learnt its master")
                time.sleep(0.05)
            self._command(replica, "CLUSTER", "REPLICATE", master)
        for replica in self.replicas:
            self.linked(replica)
        return self._ready(self.replicas)

    @staticmethod
    def linked(replica: RedisServer) -> None:
        """Returns once `replica` has synced with its master."""
        deadline = time.monotonic() + 30
        while replica.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica on port {replica.port} never synced with its master")
            time.sleep(0.05)

    def restart(self) -> RedisCluster:
        """Every node started again after stop(), on its port, from its own data and cluster configuration."""
        for node in self.nodes:
            node.start()
        return self._ready()

    def restart_node(self, index: int) -> RedisCluster:
        """One node started again after its stop(), on its port, from its own data and cluster configuration."""
        self.nodes[index].start()
        return self._ready()

    def _ready(self, replicas: Sequence[RedisServer] = ()) -> RedisCluster:
        """Returns once every master says cluster_state:ok and knows every master's slots. Without full coverage a
        master said ok before it knew another: a master shut down then, the one that knew but it and itself found
        itself in a minority once it took it for failing (after the node timeout, 5 s) and refused every key
        (CLUSTERDOWN), though two masters of three answered."""
        deadline = time.monotonic() + 30
        # And every one of `replicas`: synced with its master a moment after its start (no diskless-sync delay), a
        # replica not yet told the cluster is whole answers a read CLUSTERDOWN.
        while not all(self._whole(node) for node in [*self.nodes, *replicas]):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok with every master known")
            time.sleep(0.05)
        return self

    def _whole(self, node: RedisServer) -> bool:
        info = dict(
            line.split(":", 1) for line in self._command(node, "CLUSTER", "INFO").decode().split() if ":" in line
        )
        return (
            info["cluster_state"] == "ok"
            and int(info["cluster_size"]) == len(self.nodes)  # the masters serving slots it knows
            and int(info["cluster_slots_assigned"]) == 16384
        )

    @staticmethod
    def _command(node: RedisServer, *command: str | int) -> Any:
        client = redis.Redis(port=node.port)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def owner(self, slot: int) -> int:
        """The index of the master serving `slot`."""
        for first, last, (_, port, *_), *_ in self._command(self.nodes[0], "CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return next(i for i, node in enumerate(self.nodes) if node.port == port)
        raise AssertionError(f"slot {slot} is not served")

    def start_migrating(self, slot: int, source: int, target: int) -> None:
        """As redis-cli --cluster reshard begins: the target importing the slot, then the source migrating it."""
        self._command(self.nodes[target], "CLUSTER", "SETSLOT", slot, "IMPORTING", self._id(source))
        self._command(self.nodes[source], "CLUSTER", "SETSLOT", slot, "MIGRATING", self._id(target))

    def keys_in_slot(self, index: int, slot: int) -> list[str]:
        """The keys a master holds in `slot`."""
        node = self.nodes[index]
        count = self._command(node, "CLUSTER", "COUNTKEYSINSLOT", slot)
        return [key.decode() for key in self._command(node, "CLUSTER", "GETKEYSINSLOT", slot, count)]

    def migrate(self, source: int, target: int, *keys: str) -> None:
        """Keys of a migrating slot moved from its source to its target."""
        node = self.nodes[target]
        command: tuple[str | int, ...] = ("MIGRATE", "127.0.0.1", node.port, "", 0, 5000, "KEYS", *keys)
        assert self._command(self.nodes[source], *command) == b"OK"

    def finish_migrating(self, slot: int, target: int) -> None:
        """As the reshard ends: the target serving the slot, told first, then every other master."""
        for node in sorted(self.nodes, key=lambda node: node is not self.nodes[target]):
            self._command(node, "CLUSTER", "SETSLOT", slot, "NODE", self._id(target))

    def cancel_migrating(self, slot: int) -> None:
        """Every master's migrating or importing state of `slot` cleared (the keys moved stay where they are)."""
        for node in self.nodes:
            self._command(node, "CLUSTER", "SETSLOT", slot, "STABLE")

    def _id(self, index: int) -> str:
        return self._command(self.nodes[index], "CLUSTER", "MYID").decode()

    def on_every_node(self, *command: str | int) -> None:
        for node in self.nodes:
            self._command(node, *command)

    def flush(self) -> None:
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in [*self.nodes, *self.replicas]:
            node.stop()


class StandIn:
    """What listens on a stopped node's port in its place: it counts the connections asked of it (`asked`), and
    closes each at once (a master gone) or, `silent`, leaves it unanswered (a host cut off) until it is closed."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.asked = 0
        self.closing = asyncio.Event()

    async def answer(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.asked += 1
        if self.silent:
            await self.closing.wait()
        writer.close()


@asynccontextmanager
async def stood_in_for(node: RedisServer, silent: bool) -> AsyncIterator[StandIn]:
    """A StandIn listening on `node`'s port (the node stopped) for the block, its connections closed as it ends."""
    stand_in = StandIn(silent)
    listener = await asyncio.start_server(stand_in.answer, "127.0.0.1", node.port)
    try:
        yield stand_in
    finally:
        stand_in.closing.set()
        listener.close()
        await listener.wait_closed()
