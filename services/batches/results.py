"""A batch line's result, written once to the store (however often the line is run or collected again), and
counted in the batch's request_counts and the edge's metrics."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from prometheus_client import Counter

from services.batches import wire
from services.batches.store import Store, batch_key, results_key

LINES = Counter("llmrouter_edge_batch_lines_total", "Batch lines finished", ["outcome"])  # completed, failed
COST = Counter("llmrouter_edge_batch_cost_usd_total", "What finished batch lines cost")


async def record(
    store: Store, batch_id: str, index: int, custom_id: str, status: int, body: Any, cost: str = "0"
) -> None:
    request_id = f"{batch_id}:{custom_id}"
    result = {"ok": status == 200, "line": wire.output_line(custom_id, request_id, status, body), "cost": cost}
    if await store.put_once(results_key(batch_id), str(index), json.dumps(result).encode()):
        outcome = "completed" if status == 200 else "failed"
        await store.add(batch_key(batch_id), outcome, 1)
        LINES.labels(outcome).inc()
        COST.inc(float(Decimal(cost)))
