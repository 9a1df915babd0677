"""What a page of `GET /v1/files?purpose=batch` costs a tenant with many files of another purpose: --outputs batch
output files (a batch's output and error files) and --inputs uploaded ones, indexed in the edge's Redis as each
version's own store indexes them, then the first page of 20 input files asked of `python -m services.edge` --runs
times. Reported: the median answer time, for --before (default main, exported with `git archive`) and this tree, side
by side in one run, each on a Redis database emptied for it.

    python -m benchmarks.files_by_purpose --redis redis://127.0.0.1:6380/19 [--before main] [--outputs 20000]"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from benchmarks.batch_memory import REPO, code_of, edge

# Run with the tree's own store: an earlier one's index takes no purpose.
POPULATE = """
import asyncio, inspect, sys
from services.batches.store import RedisStore, file_key

async def main(url, inputs, outputs):
    store = RedisStore(url)
    grouped = "group" in inspect.signature(store.index).parameters
    # The uploads first, as their batches' output files come after them.
    files = [(f"file-in-{i}", "batch") for i in range(inputs)]
    files += [(f"file-out-{i}", "batch_output") for i in range(outputs)]
    for file_id, purpose in files:
        fields = {"tenant": "default", "filename": "f.jsonl", "purpose": purpose, "created_at": "0", "bytes": "1"}
        await store.put(file_key(file_id), fields)
        await store.index("default", "file", file_id, 3600, *([purpose] if grouped else []))
    await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def measure(tree: Path, url: str, inputs: int, outputs: int, runs: int) -> float:
    redis.from_url(url).flushdb()
    subprocess.run([sys.executable, "-c", POPULATE, url, str(inputs), str(outputs)], cwd=tree, check=True)
    took = []
    with edge(tree, url) as (base, _):
        for _ in range(runs):
            started = time.perf_counter()
            reply = httpx.get(f"{base}/v1/files", params={"purpose": "batch", "limit": 20}, timeout=120)
            took.append(time.perf_counter() - started)
            assert reply.status_code == 200 and len(reply.json()["data"]) == min(20, inputs), reply.text
    redis.from_url(url).flushdb()
    return statistics.median(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="a Redis database this benchmark may empty")
    parser.add_argument("--before", default="main")
    parser.add_argument("--inputs", type=int, default=30)
    parser.add_argument("--outputs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with code_of(args.before) as before:
        then = measure(before, args.redis, args.inputs, args.outputs, args.runs)
    now = measure(REPO, args.redis, args.inputs, args.outputs, args.runs)
    print(
        f"{args.inputs} uploads among {args.outputs} output files, first page of 20 by purpose, median of {args.runs}"
    )
    print(f"  {args.before:>10}: {then * 1000:9.1f} ms")
    print(f"  {'this tree':>10}: {now * 1000:9.1f} ms  ({then / now:.0f}x faster)")


if __name__ == "__main__":
    main()
