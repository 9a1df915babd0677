"""Memory per money record on a real Redis, for sizing the money Redis (deploy/README.md, Redis sizing).

Writes N request-id markers (the pair kept per served request: `llmrouter:request:` and `llmrouter:charged:`,
with the router's default TTL, ROUTER_REQUEST_ID_TTL_S) and N ledger entries shaped like the router's, on an empty
database, and prints the growth of `used_memory` per request. Use a scratch server: it flushes the database it is given.

Usage: python deploy/redis_sizing.py redis://127.0.0.1:6390/0 [N]
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import redis

TTL_S = 24 * 3600  # ROUTER_REQUEST_ID_TTL_S by default (services/router/store/model.py)


def ledger_record(request_id: str) -> str:
    """A ledger entry as the router writes it (services/router: the charge's record), typical values."""
    return json.dumps(
        {
            "request_id": request_id,
            "ts": time.time(),
            "tenant": "acme-production",
            "key": "k-3f9a1c0b7e2d4a58",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "input_tokens": 812,
            "output_tokens": 245,
            "tokens_estimated": False,
            "cost_usd": "0.000268800000",
            "baseline_cost_usd": "0.004480000000",
            "latency_ms": 1843,
            "reason": "classifier",
            "cache_hit": False,
            "escalated": False,
            "retries": 0,
            "outcome": "ok",
        }
    )


def grow(client: redis.Redis, n: int, write: object) -> float:
    client.flushdb()
    before = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        write(pipe, uuid.uuid4().hex)  # type: ignore[operator]
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return (int(client.info("memory")["used_memory"]) - before) / n


def main(url: str, n: int) -> None:
    client = redis.Redis.from_url(url)

    def markers(pipe: redis.client.Pipeline, rid: str) -> None:
        pipe.set(f"llmrouter:request:acme-production:{rid}", "1", ex=TTL_S)
        pipe.set(f"llmrouter:charged:acme-production:{rid}", "1", ex=TTL_S)

    def ledger(pipe: redis.client.Pipeline, rid: str) -> None:
        pipe.xadd("llmrouter:ledger", {"record": ledger_record(rid)})

    per_marker = grow(client, n, markers)
    per_entry = grow(client, n, ledger)
    client.flushdb()
    print(f"request-id markers: {per_marker:.0f} bytes per request (both keys, with their TTL)")
    print(f"ledger entry:       {per_entry:.0f} bytes per request")
    print(f"per served request: {per_marker + per_entry:.0f} bytes")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50_000)
