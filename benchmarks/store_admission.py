"""What one admission costs the in-process money store (`MemoryStore`, the router's store without Redis) with 10 and
with 10,000 requests in flight under the same tenant and key (their holds open against both budgets, each with a
limit), for --before (default main, exported with `git archive`) and this tree, side by side in one run. Each figure
is the median of --admissions timed `admit` calls (each admitted request then charged, untimed, so the number in
flight stays put), the two levels alternated in rounds. Each tree is measured in a process of its own.

    python -m benchmarks.store_admission [--before main] [--admissions 3000]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LEVELS = (10, 10_000)
ROUNDS = 10


async def measure(admissions: int) -> dict[int, float]:
    """Median microseconds per admission, by requests in flight (run with the measured tree on sys.path)."""
    from services.router.store import Account, Allowance, Hold, MemoryStore, period_id

    account, day = Account("acme", "key-1"), period_id("day")
    allowance = Allowance("day", tenant_pico=10**18, key_pico=10**18)  # a limit on both: their holds are summed
    stores = {level: MemoryStore() for level in LEVELS}
    timings: dict[int, list[float]] = {level: [] for level in LEVELS}
    for level, store in stores.items():
        for n in range(level):
            assert (
                await store.admit(account, allowance, Hold(f"open-{n}", 1_000, day, "r", nonce=f"o{n}"))
            ).refused == ""
    for round_ in range(ROUNDS):
        for level, store in stores.items():
            for n in range(admissions // ROUNDS):
                hold = Hold(f"timed-{round_}-{n}", 1_000, day, "r", nonce=f"t{round_}-{n}")
                started = time.perf_counter_ns()
                verdict = await store.admit(account, allowance, hold)
                timings[level].append((time.perf_counter_ns() - started) / 1_000)
                assert verdict.refused == ""
                assert await store.charge(account, hold, 700, {})
    return {level: statistics.median(figures) for level, figures in timings.items()}


def measured(tree: Path, admissions: int) -> dict[int, float]:
    run = subprocess.run(
        [sys.executable, __file__, "--measure", str(admissions)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(level): us for level, us in json.loads(run.stdout.splitlines()[-1]).items()}


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(asyncio.run(measure(int(sys.argv[2])))))
        return
    from benchmarks.batch_memory import REPO, code_of

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--admissions", type=int, default=3_000, help="timed admissions per level")
    args = parser.parse_args()
    with code_of(args.before) as old:
        before = measured(old, args.admissions)
    after = measured(REPO, args.admissions)
    low, high = LEVELS
    print(f"| tree | µs per admission, {low:,} in flight | {high:,} in flight | {high:,} / {low:,} |")
    print("|---|---|---|---|")
    for name, figures in ((args.before, before), ("this tree", after)):
        print(f"| {name} | {figures[low]:.1f} | {figures[high]:.1f} | {figures[high] / figures[low]:.2f}x |")
    print(f"at {high:,} in flight, {args.before} / this tree: {before[high] / after[high]:.0f}x")


if __name__ == "__main__":
    main()
