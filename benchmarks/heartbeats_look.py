"""How long the look at the routers' heartbeats (ROUTER_HOLD_TOTALS=auto; services/router/store/heartbeats.py) takes
on a Redis Cluster of 3 masters holding --keys filler keys (request-id markers, spread over every master's slots)
beside four routers' heartbeats, one of them a router keeping no hold totals: for --before (default main, exported
with `git archive`) and this tree, side by side in one run, each in a process of its own. Each figure is the median
of --looks looks (`RedisStore.older_routers_alive`). The cluster is the benchmark's own (redis-server on free
loopback ports, in a temporary directory), filled once by a script on each master.

    python -m benchmarks.heartbeats_look [--before main] [--keys 1000000] [--looks 5]"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.redis_servers import RedisCluster

FILL = """
-- ARGV: how many keys, then hash tags of this master's slots
for i = 1, tonumber(ARGV[1]) do
  redis.call('SET', 'marker:{' .. ARGV[2 + i % (#ARGV - 1)] .. '}:' .. i, '1')
end
"""
TAGS_PER_MASTER = 64


async def measure(url: str, looks: int) -> tuple[float, int]:
    """The median milliseconds per look, and the routers keeping no totals it found (run with the measured tree on
    sys.path)."""
    from services.router.store import RedisStore

    store = RedisStore(url, hold_totals="auto")
    timings, found = [], set()
    try:
        for _ in range(looks):
            started = time.perf_counter()
            found.add(await store.older_routers_alive())
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await store.close()
    assert len(found) == 1, found
    return statistics.median(timings), found.pop()


def measured(tree: Path, url: str, looks: int) -> tuple[float, int]:
    run = subprocess.run(
        [sys.executable, __file__, "--measure", url, str(looks)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.PIPE,  # its errors, if any, shown as they come
        text=True,
        check=True,
    )
    ms, older = json.loads(run.stdout.splitlines()[-1])
    return ms, older


def fill(cluster: RedisCluster, keys: int) -> None:
    """`keys` filler keys over every master's slots, and the heartbeats: three routers keeping totals, one not."""
    from services.router.store.keys import GLOBAL_SLOT, KEEPS_HOLD_TOTALS, alive_key

    for index, node in enumerate(cluster.nodes):
        owned = (f"t{n}" for n in itertools.count() if cluster.owner(key_slot(f"t{n}".encode())) == index)
        tags = list(itertools.islice(owned, TAGS_PER_MASTER))
        with redis.Redis(port=node.port) as client:
            client.eval(FILL, 0, keys // len(cluster.nodes), *tags)
    with redis.Redis(port=cluster.nodes[cluster.owner(GLOBAL_SLOT)].port) as client:
        for router in ("router-1", "router-2", "router-3"):
            client.set(alive_key(router), f"{time.time()} {KEEPS_HOLD_TOTALS}", px=600_000)
        client.set(alive_key("old-router"), str(time.time()), px=600_000)  # as the version before wrote it


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(asyncio.run(measure(sys.argv[2], int(sys.argv[3])))))
        return
    from benchmarks.batch_memory import REPO, code_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--keys", type=int, default=1_000_000, help="filler keys over the cluster's masters")
    parser.add_argument("--looks", type=int, default=5, help="timed looks per tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisCluster(Path(tmp) / "cluster").start()
        try:
            fill(cluster, args.keys)
            with code_of(args.before) as old:
                before = measured(old, cluster.url, args.looks)
            after = measured(REPO, cluster.url, args.looks)
        finally:
            cluster.stop()
    print(f"Redis Cluster of {len(cluster.nodes)} masters, {args.keys:,} filler keys:")
    print(f"| tree | ms per look (median of {args.looks}) | routers keeping no totals found |")
    print("|---|---|---|")
    for name, (ms, older) in ((args.before, before), ("this tree", after)):
        print(f"| {name} | {ms:.1f} | {older} |")
    print(f"{args.before} / this tree: {before[0] / after[0]:.0f}x")


if __name__ == "__main__":
    main()
