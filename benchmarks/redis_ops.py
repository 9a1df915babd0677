"""Redis commands per request, counted by the servers themselves: the whole stack runs as deployed (its own
processes) against a money Redis and a cache Redis started here, and each scenario's requests are counted from
MONITOR (commands clients send) and INFO commandstats deltas (commands executed, scripts' calls included).
Background work (heartbeats, the reconciler, the ledger sink's polling) is measured alone over an idle window
and subtracted at its rate; the ledger sink's reads of the entries the requests wrote stay in (they are per
request). A script (EVALSHA) is one command sent and one round trip. CPU per request per service (and per
Redis) is read from /proc and INFO cpu over the same windows.

    python -m benchmarks.redis_ops [--requests 200]"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from services.__main__ import running_stack
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, registry
from tests.redis_servers import RedisServer, cache_redis, money_redis

COUNTER = itertools.count()
IDLE_S = 6.0


def commandstats(server: RedisServer) -> dict[str, int]:
    """Calls per command, scripts' own calls included."""
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in server.info("commandstats").items()}


class Sent:
    """Counts the commands clients send a server (a script is one; the calls it makes are not), by MONITOR."""

    STOP = "benchmark-monitor-stop"

    def __init__(self, server: RedisServer) -> None:
        self.server, self.count = server, 0
        self.thread = threading.Thread(target=self._watch)
        self.ready = threading.Event()

    def _watch(self) -> None:
        with redis.Redis(port=self.server.port, socket_timeout=3600).monitor() as monitor:
            self.ready.set()
            for command in monitor.listen():
                if self.STOP in command["command"]:
                    return
                if command["client_type"] != "lua":
                    self.count += 1

    def __enter__(self) -> Sent:
        self.thread.start()
        self.ready.wait()
        return self

    def __exit__(self, *_: object) -> None:
        client = redis.Redis(port=self.server.port)
        client.echo(self.STOP)
        client.close()
        self.thread.join()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(server: RedisServer) -> float:
    info = server.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, float]:
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls - before.get(name, 0)}


async def send(url: str, model: str, n: int, repeat: bool) -> None:
    """n requests; with `repeat`, the same question each time (after one that fills the cache)."""
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(n):
            question = "What is the boiling point of water?" if repeat else f"Question {next(COUNTER)}: why?"
            body = {"model": model, "messages": [{"role": "user", "content": question}]}
            (await http.post(url, json=body)).raise_for_status()


def measure(
    servers: dict[str, RedisServer], procs: dict[str, Any], run: Callable[[], object]
) -> tuple[dict[str, dict[str, float]], float]:
    """Commands per Redis role, and CPU seconds per service and Redis role (key 'cpu'), over `run`."""
    before = {role: commandstats(server) for role, server in servers.items()}
    cpu_before = {name: cpu_s(proc.pid) for name, proc in procs.items()}
    cpu_before |= {f"redis {role}": redis_cpu_s(server) for role, server in servers.items()}
    with Sent(servers["money"]) as money, Sent(servers["cache"]) as cache:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        time.sleep(1.5)  # the ledger sink copies the last entries
    counts: dict[str, dict[str, float]] = {
        role: delta(commandstats(server), before[role]) for role, server in servers.items()
    }
    counts["money"]["sent"], counts["cache"]["sent"] = money.count, cache.count
    cpu_after = {name: cpu_s(proc.pid) for name, proc in procs.items()}
    cpu_after |= {f"redis {role}": redis_cpu_s(server) for role, server in servers.items()}
    counts["cpu"] = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
    return counts, elapsed + 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
                os.environ[f"{service}_METRICS_PORT"] = "0"  # off: the default ports may be taken
            with running_stack() as (edge, procs):
                url = f"{edge}/v1/chat/completions"
                asyncio.run(send(url, "auto", 5, repeat=False))  # warm: scripts loaded, connections open
                idle, idle_s = measure(servers, procs, lambda: time.sleep(IDLE_S))
                rows = {}
                for name, model, repeat in (
                    ("named model, cache miss", "cheap-model", False),
                    ("auto, cache miss", "auto", False),
                    ("named model, cache hit", "cheap-model", True),
                    ("auto, cache hit", "auto", True),
                ):
                    if repeat:
                        asyncio.run(send(url, model, 1, repeat=True))  # fills the cache
                    send_all = lambda m=model, r=repeat: asyncio.run(send(url, m, n, r))  # noqa: E731
                    rows[name] = measure(servers, procs, send_all)
        finally:
            for server in servers.values():
                server.stop()

    def per_request(counts: dict[str, float], elapsed: float, role: str) -> dict[str, float]:
        background = {k: v * elapsed / idle_s for k, v in idle[role].items()}
        return {k: (v - background.get(k, 0)) / n for k, v in counts.items() if (v - background.get(k, 0)) / n > 0.005}

    print(f"\nRedis commands sent per request ({n} requests per row; background subtracted; a script is one)")
    print(f"{'scenario':<26}{'money':>7}{'cache':>7}{'total':>7}  executed, scripts' own calls included")
    for name, (counts, elapsed) in rows.items():
        money, cache = per_request(counts["money"], elapsed, "money"), per_request(counts["cache"], elapsed, "cache")
        sent_money, sent_cache = money.pop("sent", 0.0), cache.pop("sent", 0.0)
        detail = ", ".join(
            f"{role}:{cmd} {calls:.2f}"
            for role, stats in (("money", money), ("cache", cache))
            for cmd, calls in sorted(stats.items(), key=lambda kv: -kv[1])
        )
        print(f"{name:<26}{sent_money:>7.2f}{sent_cache:>7.2f}{sent_money + sent_cache:>7.2f}  {detail}")
    print(f"\nCPU ms per request, one request in flight (background subtracted; {os.cpu_count()} CPUs, shared)")
    services = list(idle["cpu"])
    print(f"{'scenario':<26}" + "".join(f"{name:>14}" for name in services))
    for name, (counts, elapsed) in rows.items():
        cpu = {k: (v - idle["cpu"][k] * elapsed / idle_s) * 1000 / n for k, v in counts["cpu"].items()}
        print(f"{name:<26}" + "".join(f"{cpu[k]:>14.2f}" for k in services))
    background = {role: idle[role].get("sent", 0) / idle_s for role in servers}
    print("background (idle stack), commands sent/s: " + ", ".join(f"{r} {rate:.1f}" for r, rate in background.items()))


if __name__ == "__main__":
    main()
