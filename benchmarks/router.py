"""What routing costs in time: the same chat completions sent straight to an OpenAI-compatible upstream and
through the whole stack (edge -> router -> classifier + providers -> the same upstream), side by side in one
run. The services run as their own processes, as deployed; the upstream is the loopback fake that speaks
OpenAI's wire format and answers at once, so every millisecond measured is the stack's own. Memory: the
resident size of each service after the run.

    python -m benchmarks.router [--requests 200] [--seconds 5] [--concurrency 16]"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from benchmarks.classifier import rss_mb
from services.__main__ import running_stack
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, registry

COUNTER = itertools.count()


async def one(http: httpx.AsyncClient, url: str, model: str) -> float:
    # A short question (~15 tokens): classifier time grows with prompt length, up to its 64-token window.
    question = f"Question {next(COUNTER)}: how far is the moon from the earth?"
    body = {"model": model, "messages": [{"role": "user", "content": question}]}
    start = time.perf_counter()
    reply = await http.post(url, json=body)
    reply.raise_for_status()
    return time.perf_counter() - start


async def sequential(url: str, model: str, n: int) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(10):  # warm connections and caches
            await one(http, url, model)
        return [await one(http, url, model) for _ in range(n)]


async def throughput(url: str, model: str, concurrency: int, seconds: float) -> float:
    done, stop = 0, time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await one(http, url, model)
                done += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    with FakeOpenAI() as upstream, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "models.yaml"
        path.write_text(yaml.safe_dump(registry(upstream.base_url, upstream.base_url)))
        os.environ |= {"BUDGETAI_KEY": "sk-bench", "PREMIUMAI_KEY": "sk-bench", "ROUTER_CACHE_TTL_S": "0"}
        os.environ |= {"ROUTER_REGISTRY_PATH": str(path), "PROVIDERS_REGISTRY_PATH": str(path)}
        for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
            os.environ |= {f"{service}_PORT": str(free_port()), f"{service}_LOG_LEVEL": "WARNING"}
            os.environ.pop(f"{service}_METRICS_PORT", None)
        with running_stack() as (edge, procs):
            arms = {
                "upstream directly": (f"{upstream.base_url}/chat/completions", "cheap-model"),
                "through the stack (auto)": (f"{edge}/v1/chat/completions", "auto"),
                "through the stack (named)": (f"{edge}/v1/chat/completions", "cheap-model"),
            }
            rows = {}
            for name, (url, model) in arms.items():
                latencies = asyncio.run(sequential(url, model, args.requests))
                rps = asyncio.run(throughput(url, model, args.concurrency, args.seconds))
                rows[name] = (np.percentile(latencies, 50) * 1e3, np.percentile(latencies, 99) * 1e3, rps)
            memory = {name: rss_mb(proc.pid)[0] for name, proc in procs.items()}

    base = rows["upstream directly"]
    print(f"\n{'arm':<28}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'p50 x':>8}{'req/s x':>9}")
    for name, (p50, p99, rps) in rows.items():
        print(f"{name:<28}{p50:>9.2f}{p99:>9.2f}{rps:>9.0f}{p50 / base[0]:>8.2f}{rps / base[2]:>9.2f}")
    auto = rows["through the stack (auto)"]
    print(
        f"\nrouting adds {auto[0] - base[0]:.2f} ms at p50 and {auto[1] - base[1]:.2f} ms at p99 "
        f"(concurrency {args.concurrency} for throughput; {os.cpu_count()} CPUs shared by client and services)"
    )
    print("RSS after the run, MB: " + ", ".join(f"{name} {mb:.0f}" for name, mb in memory.items()))


if __name__ == "__main__":
    main()
