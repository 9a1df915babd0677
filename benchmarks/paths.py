"""The routed path's speed, as issue 12 tabulates it: for a named model and for `auto` (the classifier in the
path), through the edge of the whole stack (four processes, as `make run` starts them) against a fast local
OpenAI-compatible stub (benchmarks/stub.py, its own process), beside the stub called directly, in one run:

- max req/s at --concurrency connections; CPU per request (user + system time of the four services and any
  worker processes, divided by the requests served), at that load and at 1 in flight;
- added p50 at 1 in flight: the path's p50 minus the stub's own;
- streamed req/s at 8 in flight (server-sent events, 8 deltas each);
- `auto (seen)`: `auto` with one prompt over and over, what the router's score cache saves (every other arm
  sends a prompt of its own with each request, so no cache answers it);
- RSS of each service after about 1,000 requests, after about 20,000 and after --rss-requests: the last two
  equal means no growth (every bounded structure is full by 20,000).

The load generator is wrk (Debian's `wrk`, C, event-driven) with benchmarks/chat.lua: every request carries a
prompt of its own, so no cache answers it. It shares the machine's cores with the services: say the load.

    python -m benchmarks.paths [--seconds 10] [--concurrency 16] [--rss-requests 100000] [--rss-model auto]"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.__main__ import running_stack
from tests.integration.conftest import free_port, registry

LUA = Path(__file__).with_name("chat.lua")
ARMS = ("stub directly", "named model", "auto", "auto (seen)")
TICK = os.sysconf("SC_CLK_TCK")
RSS_MIDWAY = 20_000  # requests: every bounded structure in the services is full well before this


@dataclass
class Run:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: dict[str, float]  # per service, during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def cpu_ms_per_request(self, service: str | None = None) -> float:
        total = self.cpu_s[service] if service else sum(self.cpu_s.values())
        return total * 1e3 / max(self.requests, 1)


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def rss_mb(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    return total / 1024


def wrk(
    url: str,
    model: str,
    services: dict[str, int],
    *,
    connections: int,
    seconds: float,
    stream: bool = False,
    repeat: bool = False,
) -> Run:
    threads = min(2, connections)
    env = {
        **os.environ,
        "BENCH_MODEL": model,
        "BENCH_STREAM": "1" if stream else "0",
        "BENCH_REPEAT": "1" if repeat else "0",
        "BENCH_SALT": f"{time.time_ns()}",
    }
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "30s",
    ]
    before = {name: cpu_seconds(pid) for name, pid in services.items()}
    out = subprocess.run([*command, "-s", str(LUA), url], env=env, capture_output=True, text=True, check=True).stdout
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in services.items()}
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    return Run(r["requests"], r["duration_us"] / 1e6, r["errors"], r["p50_us"] / 1e3, r["p99_us"] / 1e3, cpu)


@contextmanager
def stub_upstream() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.stub"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"stub did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def stack(upstream: str, redis_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    """The four services against the stub; money in `redis_url` when set, else in the router's process."""
    with tempfile.TemporaryDirectory() as tmp:
        if redis_url:
            os.environ["ROUTER_REDIS_URL"] = redis_url
        path = Path(tmp) / "models.yaml"
        path.write_text(yaml.safe_dump(registry(upstream, upstream)))
        os.environ |= {"BUDGETAI_KEY": "sk-bench", "PREMIUMAI_KEY": "sk-bench", "ROUTER_CACHE_TTL_S": "0"}
        os.environ |= {"ROUTER_REGISTRY_PATH": str(path), "PROVIDERS_REGISTRY_PATH": str(path)}
        os.environ.setdefault("EDGE_ACCESS_LOG", str(Path(tmp) / "access.log"))  # on, as deployed
        for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
            os.environ |= {f"{service}_PORT": str(free_port()), f"{service}_LOG_LEVEL": "WARNING"}
            os.environ.pop(f"{service}_METRICS_PORT", None)
        with running_stack() as (edge, procs):
            yield f"{edge}/v1/chat/completions", {name: proc.pid for name, proc in procs.items()}


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each timed run")
    parser.add_argument("--concurrency", type=int, default=16, help="connections for max req/s")
    parser.add_argument("--rss-requests", type=int, default=100_000, help="requests before the last RSS")
    parser.add_argument("--rss-model", default="auto", help="the model of the requests sent for the RSS figures")
    parser.add_argument("--redis-url", default="", help="money store (a Redis that never evicts); unset: in process")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks.paths needs wrk: apt-get install wrk")
    print(f"load average before the run: {load_average()} ({os.cpu_count()} CPUs)", flush=True)
    with stub_upstream() as upstream, stack(upstream, args.redis_url) as (edge_url, services):
        arms = {
            "stub directly": (f"{upstream}/chat/completions", "cheap-model"),
            "named model": (edge_url, "cheap-model"),
            "auto": (edge_url, "auto"),
            "auto (seen)": (edge_url, "auto"),  # one prompt again and again: scored once, then from the cache
        }
        arms = {name: arm for name, arm in arms.items() if name in args.arms.split(",")}
        # Memory early in the stack's life (about 1,000 requests), then after all the runs below and more runs
        # of --rss-model (`auto` by default: every service in the path).
        served = wrk(edge_url, "auto", services, connections=2, seconds=1).requests
        memory = [(served, {name: rss_mb(pid) for name, pid in services.items()})]
        rows: dict[str, tuple[Run, Run, Run]] = {}
        for name, (url, model) in arms.items():
            repeat = name == "auto (seen)"
            warm = wrk(url, model, services, connections=args.concurrency, seconds=2, repeat=repeat)
            single = wrk(url, model, services, connections=1, seconds=args.seconds, repeat=repeat)
            loaded = wrk(url, model, services, connections=args.concurrency, seconds=args.seconds, repeat=repeat)
            streamed = wrk(url, model, services, connections=8, seconds=args.seconds, stream=True, repeat=repeat)
            rows[name] = (single, loaded, streamed)
            if url == edge_url:
                served += sum(run.requests for run in (warm, single, loaded, streamed))
            print(f"  measured: {name}", flush=True)
        # Then after about RSS_MIDWAY requests (every cap is full by then) and after --rss-requests.
        for target in sorted({min(RSS_MIDWAY, args.rss_requests), args.rss_requests} - {0}):
            while served < target:
                served += wrk(edge_url, args.rss_model, services, connections=args.concurrency, seconds=10).requests
            memory.append((served, {name: rss_mb(pid) for name, pid in services.items()}))
    print_table(rows, memory, args)


def print_table(rows: dict[str, tuple[Run, Run, Run]], memory: list, args: argparse.Namespace) -> None:
    base = rows["stub directly"][0].p50_ms if "stub directly" in rows else 0.0
    print(
        f"\n{'path':<16}{'max req/s':>10}{'added p50 @1':>14}{'CPU/req':>10}{'CPU/req @1':>12}"
        f"{'streamed req/s @8':>19}{'errors':>8}"
    )
    for name, (single, loaded, streamed) in rows.items():
        added = "-" if name == "stub directly" else f"{single.p50_ms - base:.2f} ms"
        cpu = "-" if name == "stub directly" else f"{loaded.cpu_ms_per_request():.2f} ms"
        cpu1 = "-" if name == "stub directly" else f"{single.cpu_ms_per_request():.2f} ms"
        errors = single.errors + loaded.errors + streamed.errors
        print(f"{name:<16}{loaded.rps:>10.0f}{added:>14}{cpu:>10}{cpu1:>12}{streamed.rps:>19.0f}{errors:>8}")
    print(
        f"\nmoney store: {args.redis_url or 'in process'}; stub p50 at 1 in flight {base:.3f} ms; "
        f"max req/s at {args.concurrency} connections (wrk, 2 threads)"
    )
    print("CPU per request by service at max load, ms:")
    for name, (_, loaded, _) in rows.items():
        if name != "stub directly":
            per = ", ".join(f"{s} {loaded.cpu_ms_per_request(s):.2f}" for s in loaded.cpu_s)
            print(f"  {name:<14}{per}")
    for count, rss in memory:
        print(f"RSS after {count:>7,} requests, MB: " + ", ".join(f"{s} {mb:.0f}" for s, mb in rss.items()))
    print(f"load average after the run: {load_average()} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
