"""What one admission costs the money store with 10 and with 10,000 requests in flight under the same tenant and key
(their holds open against both budgets, each with a limit), for --before (default main, exported with `git archive`)
and this tree, side by side in one run: the in-process store (`MemoryStore`, the router's store without Redis), or
with --redis-url the Redis store (`RedisStore`, its admission script). Each figure is the median of --admissions timed
`admit` calls (each admitted request then charged, untimed, so the number in flight stays put), the two levels
alternated in rounds. Each tree is measured in a process of its own, on accounts of its own; on Redis its requests
left open are undone at the end, and its charges stay (spend counters, ledger entries): give it a scratch database.

    python -m benchmarks.store_admission [--before main] [--admissions 3000] [--redis-url redis://127.0.0.1:6379/9]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

LEVELS = (10, 10_000)
ROUNDS = 10


async def measure(admissions: int, redis_url: str) -> dict[int, float]:
    """Median microseconds per admission, by requests in flight (run with the measured tree on sys.path)."""
    from services.router.store import Account, Allowance, Hold, MemoryStore, RedisStore, period_id

    run, day = uuid.uuid4().hex[:8], period_id("day")
    accounts = {level: Account(f"bench-{run}-{level}", "key-1") for level in LEVELS}  # each level's own holds sets
    allowance = Allowance("day", tenant_pico=10**18, key_pico=10**18)  # a limit on both: their holds are summed
    store = RedisStore(redis_url) if redis_url else MemoryStore()
    stores = {level: store if redis_url else MemoryStore() for level in LEVELS}
    opened = {level: [Hold(f"open-{n}", 1_000, day, "r", nonce=f"{n:x}") for n in range(level)] for level in LEVELS}
    timings: dict[int, list[float]] = {level: [] for level in LEVELS}
    try:
        for level, store in stores.items():
            for hold in opened[level]:
                assert (await store.admit(accounts[level], allowance, hold)).refused == ""
        for round_ in range(ROUNDS):
            for level, store in stores.items():
                for n in range(admissions // ROUNDS):
                    hold = Hold(f"timed-{round_}-{n}", 1_000, day, "r", nonce=f"ff{round_:x}0{n:x}")
                    started = time.perf_counter_ns()
                    verdict = await store.admit(accounts[level], allowance, hold)
                    timings[level].append((time.perf_counter_ns() - started) / 1_000)
                    assert verdict.refused == ""
                    assert await store.charge(accounts[level], hold, 700, {})
    finally:
        for level, store in stores.items():
            for hold in opened[level]:
                await store.undo(accounts[level], hold)
        for store in {id(each): each for each in stores.values()}.values():
            await store.close()
    return {level: statistics.median(figures) for level, figures in timings.items()}


def measured(tree: Path, admissions: int, redis_url: str) -> dict[int, float]:
    run = subprocess.run(
        [sys.executable, __file__, "--measure", str(admissions), redis_url],
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.PIPE,  # its errors, if any, shown as they come
        text=True,
        check=True,
    )
    return {int(level): us for level, us in json.loads(run.stdout.splitlines()[-1]).items()}


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(asyncio.run(measure(int(sys.argv[2]), sys.argv[3]))))
        return
    from benchmarks.batch_memory import REPO, code_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--admissions", type=int, default=3_000, help="timed admissions per level")
    parser.add_argument("--redis-url", default="", help="measure the Redis store there (a scratch database)")
    args = parser.parse_args()
    with code_of(args.before) as old:
        before = measured(old, args.admissions, args.redis_url)
    after = measured(REPO, args.admissions, args.redis_url)
    low, high = LEVELS
    print(f"{'RedisStore at ' + args.redis_url if args.redis_url else 'MemoryStore'}:")
    print(f"| tree | µs per admission, {low:,} in flight | {high:,} in flight | {high:,} / {low:,} |")
    print("|---|---|---|---|")
    for name, figures in ((args.before, before), ("this tree", after)):
        print(f"| {name} | {figures[low]:.1f} | {figures[high]:.1f} | {figures[high] / figures[low]:.2f}x |")
    print(f"at {high:,} in flight, {args.before} / this tree: {before[high] / after[high]:.0f}x")


if __name__ == "__main__":
    main()
