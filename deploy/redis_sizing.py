"""Memory per money record on a real Redis, for sizing the money Redis (deploy/README.md, Redis sizing).

Writes N request-id markers (the pair kept per served request: the tenant's `used` and `charged` keys of
services/router/store/keys.py, as the admission and the charge set them, with the router's default TTL,
ROUTER_REQUEST_ID_TTL_S) and N ledger entries as the router's charge appends them (services/router/charging.py: an
`auto` request, a candidate per model of config/models.yaml), on an empty database, and prints the growth of
`used_memory` per request. Use a scratch server: it flushes the database it is given. `--full` writes each ledger
entry as the routers of the versions before did, its record as built (services/router/store/ledger_entry.py keeps it
compact), for the comparison.

Usage: python deploy/redis_sizing.py redis://127.0.0.1:6390/0 [N] [--full]
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import uuid
from decimal import Decimal

import redis

from llmrouter.registry import load_registry
from services.router.store.keys import AccountKeys
from services.router.store.ledger_entry import compact
from services.router.store.model import REQUEST_ID_TTL_S, Account, charged_marker, marker_after_charge, to_pico

TTL_S = REQUEST_ID_TTL_S  # ROUTER_REQUEST_ID_TTL_S by default
ACCOUNT = Account("acme-production", secrets.token_hex(8))  # a key id is its digest's first 16 hex digits
CHOSEN = "gpt-4o-mini"
REASON = "cheapest model predicted within 0.85 of the best (gpt-4o 0.90): predicted 0.85, est. $0.00006"
COST_USD = "0.0002688"  # what the request is charged: its ledger entry and its charged marker keep it
MODELS = [model.name for model in load_registry().models]


def ledger_record(request_id: str, full: bool = False) -> str:
    """A ledger entry as the router's charge writes it, typical values: one generation, every registry model a
    candidate (what an `auto` request's decision lists). `full`: as built, as the versions before wrote it."""
    candidates = [
        {
            "model": model,
            "predicted_quality": 0.8505,
            "estimated_cost_usd": "0.0000597",
            "eligible": True,
            "excluded_because": "",
        }
        for model in MODELS
    ]
    return (json.dumps if full else compact)(
        {
            "request_id": request_id,
            "ts": time.time(),
            "tenant": ACCOUNT.tenant,
            "key": ACCOUNT.key,
            "period": "20261202",
            "model": CHOSEN,
            "provider": "openai",
            "input_tokens": 812,
            "output_tokens": 245,
            "tokens_estimated": False,
            "cost_usd": COST_USD,
            "generations": [{"model": CHOSEN, "input_tokens": 812, "output_tokens": 245}],
            "owed_usd": "0",
            "baseline_cost_usd": "0.00448",
            "latency_ms": 1843,
            "session_id": "",
            "reason": "cheapest_near_best",
            "reason_detail": REASON,
            "candidates": candidates,
            "fallback": False,
            "error": "",
            "cache_hit": False,
            "escalated": False,
            "escalation_signal": "",
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


def main(url: str, n: int, full: bool) -> None:
    client = redis.Redis.from_url(url)
    keys = AccountKeys.of(ACCOUNT)

    def markers(pipe: redis.client.Pipeline, rid: str) -> None:
        pipe.set(keys.used(rid), keys.key_hex, ex=TTL_S)  # the admitting key's id, as ADMIT keeps it
        entry = charged_marker("", secrets.token_hex(8), secrets.token_hex(8))
        pipe.set(keys.charged(rid), marker_after_charge(None, entry, to_pico(Decimal(COST_USD))), ex=TTL_S)

    def ledger(pipe: redis.client.Pipeline, rid: str) -> None:
        pipe.xadd(keys.ledger, {"record": ledger_record(rid, full)})

    per_marker = grow(client, n, markers)
    per_entry = grow(client, n, ledger)
    client.flushdb()
    print(f"request-id markers: {per_marker:.0f} bytes per request (both keys, with their TTL)")
    print(f"ledger entry:       {per_entry:.0f} bytes per request")
    print(f"per served request: {per_marker + per_entry:.0f} bytes")


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--full"]
    main(args[0], int(args[1]) if len(args) > 1 else 50_000, "--full" in sys.argv[1:])
