"""Redis commands per request, counted by the servers themselves: the whole stack runs as deployed (its own
processes) against a money Redis and a cache Redis started here, and each scenario's requests are counted from
`INFO commandstats` deltas. Background work (heartbeats, the reconciler, the ledger sink's polling) is
measured alone over an idle window and subtracted at its rate; the ledger sink's reads of the entries the
requests wrote stay in (they are per request). A script (EVALSHA) is one command and one round trip.

    python -m benchmarks.redis_ops [--requests 200]"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from services.__main__ import running_stack
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, registry
from tests.redis_servers import RedisServer, cache_redis, money_redis

COUNTER = itertools.count()
IDLE_S = 6.0


def commandstats(server: RedisServer) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in server.info("commandstats").items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls - before.get(name, 0)}


async def send(url: str, model: str, n: int, repeat: bool) -> None:
    """n requests; with `repeat`, the same question each time (after one that fills the cache)."""
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(n):
            question = "What is the boiling point of water?" if repeat else f"Question {next(COUNTER)}: why?"
            body = {"model": model, "messages": [{"role": "user", "content": question}]}
            (await http.post(url, json=body)).raise_for_status()


def measure(servers: dict[str, RedisServer], run: Callable[[], object]) -> tuple[dict[str, dict[str, int]], float]:
    before = {role: commandstats(server) for role, server in servers.items()}
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    time.sleep(1.5)  # the ledger sink copies the last entries
    return {role: delta(commandstats(server), before[role]) for role, server in servers.items()}, elapsed + 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    n = args.requests

    with FakeOpenAI() as upstream, tempfile.TemporaryDirectory() as tmp:
        servers = {"money": money_redis(Path(tmp) / "money"), "cache": cache_redis(Path(tmp) / "cache", "64mb")}
        for server in servers.values():
            server.start()
        try:
            path = Path(tmp) / "models.yaml"
            path.write_text(yaml.safe_dump(registry(upstream.base_url, upstream.base_url)))
            os.environ |= {"BUDGETAI_KEY": "sk-bench", "PREMIUMAI_KEY": "sk-bench", "ROUTER_CACHE_TTL_S": "300"}
            os.environ |= {"ROUTER_REGISTRY_PATH": str(path), "PROVIDERS_REGISTRY_PATH": str(path)}
            os.environ |= {"ROUTER_REDIS_URL": servers["money"].url, "ROUTER_CACHE_REDIS_URL": servers["cache"].url}
            os.environ |= {"ROUTER_LEDGER_SQL_PATH": str(Path(tmp) / "ledger.sqlite3")}
            for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
                os.environ |= {f"{service}_PORT": str(free_port()), f"{service}_LOG_LEVEL": "WARNING"}
                os.environ.pop(f"{service}_METRICS_PORT", None)
            with running_stack() as (edge, _):
                url = f"{edge}/v1/chat/completions"
                asyncio.run(send(url, "auto", 5, repeat=False))  # warm: scripts loaded, connections open
                idle, idle_s = measure(servers, lambda: time.sleep(IDLE_S))
                rows = {}
                for name, model, repeat in (
                    ("named model, cache miss", "cheap-model", False),
                    ("auto, cache miss", "auto", False),
                    ("named model, cache hit", "cheap-model", True),
                    ("auto, cache hit", "auto", True),
                ):
                    if repeat:
                        asyncio.run(send(url, model, 1, repeat=True))  # fills the cache
                    rows[name] = measure(servers, lambda m=model, r=repeat: asyncio.run(send(url, m, n, r)))
        finally:
            for server in servers.values():
                server.stop()

    def per_request(counts: dict[str, int], elapsed: float, role: str) -> dict[str, float]:
        background = {k: v * elapsed / idle_s for k, v in idle[role].items()}
        return {k: (v - background.get(k, 0)) / n for k, v in counts.items() if (v - background.get(k, 0)) / n > 0.005}

    print(f"\nRedis commands per request ({n} requests per row; background subtracted)")
    print(f"{'scenario':<26}{'money':>7}{'cache':>7}{'total':>7}  commands (per request)")
    for name, (counts, elapsed) in rows.items():
        money, cache = per_request(counts["money"], elapsed, "money"), per_request(counts["cache"], elapsed, "cache")
        detail = ", ".join(
            f"{role}:{cmd} {calls:.2f}"
            for role, stats in (("money", money), ("cache", cache))
            for cmd, calls in sorted(stats.items(), key=lambda kv: -kv[1])
        )
        total_money, total_cache = sum(money.values()), sum(cache.values())
        print(f"{name:<26}{total_money:>7.2f}{total_cache:>7.2f}{total_money + total_cache:>7.2f}  {detail}")
    background = {role: sum(counts.values()) / idle_s for role, counts in idle.items()}
    print("background, commands/s: " + ", ".join(f"{role} {rate:.1f}" for role, rate in background.items()))


if __name__ == "__main__":
    main()
