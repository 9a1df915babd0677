"""What taking the metrics counts of a provider batch collect's line charges costs (services/router/store/lua.py,
COUNT_ONCE): one take a line (`RedisStore.count_once`, sequential, as a collect took them before) beside all of them in
one call (`RedisStore.count_once_each`: one script a shard, TAKE_PAGE charges each), side by side in one run, on
--lines charges of one account (a collect's lines are one tenant's: one shard). Each arm's charges are written first
(the uncounted records and their entries in the shard's list, as CHARGE leaves them), untimed; then taken, timed. The
Redis is the benchmark's own (redis-server on a free loopback port, in a temporary directory), or with --cluster a
Redis Cluster of 3 masters.

    python -m benchmarks.count_once [--lines 50000] [--cluster]"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from services.router.store import Account, AccountKeys, RedisStore, UncountedCharge, pending_field
from services.router.store import redis_store as redis_store_module
from services.router.store.ledger_entry import compact
from tests.redis_servers import RedisCluster, RedisServer

ACCOUNT = Account("bench-tenant", "bench-key")
FILL_PIPELINE = 5_000  # writes a pipeline sends at once while filling


class CountsScripts(RedisStore):
    """Counts the take's script calls and their acknowledgements (lua.py, ACK_TAKE): each one round trip."""

    calls = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count_once = self._counting(self._count_once)
        self._ack_take = self._counting(self._ack_take)

    def _counting(self, script: Any) -> Any:
        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await script(*args, **kwargs)

        return counting


def line_record(request_id: str) -> dict[str, Any]:
    """A line's ledger record of the size a collect writes (deferred.py, _record)."""
    return {
        "ts": time.time(),
        "request_id": request_id,
        "tenant": ACCOUNT.tenant,
        "api_key_id": "0123456789abcdef",
        "model": "strong",
        "provider": "p",
        "input_tokens": 100,
        "output_tokens": 1000,
        "tokens_estimated": False,
        "cost_usd": "0.00775",
        "generations": [{"model": "strong", "input_tokens": 100, "output_tokens": 1000}],
        "owed_usd": "0",
        "baseline_cost_usd": "0.0155",
        "reason": "batch",
        "reason_detail": "served by the provider's Batch API at its batch price",
        "outcome": "ok",
        "admitted_ts": time.time() - 3600,
    }


async def fill(store: RedisStore, arm: str, lines: int) -> list[UncountedCharge]:
    """`lines` charges left uncounted and listed, as CHARGE leaves a collect's line charges before their take."""
    keys = AccountKeys.of(ACCOUNT)
    charges = [UncountedCharge(ACCOUNT, f"{arm}-line-{n}", f"c{n:x}") for n in range(lines)]
    for start in range(0, lines, FILL_PIPELINE):
        async with store.redis.pipeline(transaction=False) as pipe:
            for charge in charges[start : start + FILL_PIPELINE]:
                record = compact(line_record(charge.request_id))
                pipe.set(keys.uncounted(charge.request_id), f"{charge.charge_id} {record}", ex=86_400)
                entry = f"{charge.charge_id} {pending_field(ACCOUNT, charge.request_id)}"
                pipe.zadd(keys.uncounted_reconciled, {entry: time.time()})
            await pipe.execute()
    return charges


async def scripts_usec(store: RedisStore, cluster: bool) -> float:
    """Microseconds the server has spent running scripts called by their digest (INFO commandstats); NaN on a
    cluster, whose nodes the store's client does not report apart."""
    if cluster:
        return float("nan")
    return float((await store.redis.info("commandstats")).get("cmdstat_evalsha", {}).get("usec", 0))


async def measure(url: str, lines: int, cluster: bool) -> dict[str, tuple[float, int, float]]:
    """Seconds, script calls and the server's seconds running them, taking `lines` counts, by arm."""
    store = CountsScripts(url)
    found: dict[str, tuple[float, int, float]] = {}
    try:
        for arm in ("one a line", "all at once"):
            charges = await fill(store, arm.replace(" ", "-"), lines)
            store.calls = 0
            server_before = await scripts_usec(store, cluster)
            started = time.perf_counter()
            if arm == "one a line":
                taken = [await store.count_once(c.account, c.request_id, c.charge_id) for c in charges]
            else:
                taken = await store.count_once_each(charges)
            elapsed = time.perf_counter() - started
            found[arm] = (elapsed, store.calls, (await scripts_usec(store, cluster) - server_before) / 1e6)
            assert all(record is not None for record in taken), "a count not taken"
        assert not await store.redis.exists(AccountKeys.of(ACCOUNT).uncounted_reconciled), "an entry left listed"
    finally:
        await store.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000, help="line charges taken by each arm")
    parser.add_argument("--cluster", action="store_true", help="on a Redis Cluster of 3 masters")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisCluster(Path(tmp) / "cluster") if args.cluster else RedisServer(Path(tmp) / "redis", "--save", "")
        server.start()
        try:
            found = asyncio.run(measure(server.url, args.lines, args.cluster))
        finally:
            server.stop()
    where = "a Redis Cluster of 3 masters" if args.cluster else "one Redis server"
    print(f"{args.lines:,} line charges of one account on {where} (TAKE_PAGE {redis_store_module.TAKE_PAGE:,}):")
    print("| takes | round trips | s in all | µs per line | ms per round trip | server ms per round trip |")
    print("|---|---|---|---|---|---|")
    for arm, (seconds, calls, server_s) in found.items():
        per_line, per_call = seconds / args.lines * 1e6, seconds / calls * 1e3
        print(f"| {arm} | {calls:,} | {seconds:.2f} | {per_line:.1f} | {per_call:.2f} | {server_s / calls * 1e3:.2f} |")
    (one, *_), (batched, *_) = found.values()
    print(f"one a line / all at once: {one / batched:.1f}x")


if __name__ == "__main__":
    main()
