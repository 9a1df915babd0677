"""A batch line's result, written once to the store (however often the line is run or collected again), and
counted in the batch's request_counts and the edge's metrics. A line never sent before its batch expired is
written as OpenAI writes it (batch_expired, no response) and counts as failed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from prometheus_client import Counter

from services.batches import wire
from services.batches.store import Store, batch_key, results_key

# outcome: completed, failed (an outcome_unknown line too: it may have run), expired (never sent; in request_counts,
# failed)
LINES = Counter("llmrouter_edge_batch_lines_total", "Batch lines finished", ["outcome"])
COST = Counter("llmrouter_edge_batch_cost_usd_total", "What finished batch lines cost")
# Lines whose charge the router could not tell (cost_pending): in the ledger, at most their hold, not in COST.
COST_PENDING = Counter(
    "llmrouter_edge_batch_cost_pending_lines_total", "Finished batch lines whose cost is pending, not in the cost"
)


async def record(
    store: Store,
    batch_id: str,
    index: int,
    custom_id: str | None,
    status: int,
    body: Any,
    cost: str = "0",
    cost_pending: bool = False,
) -> None:
    """`cost_pending`: the router could not tell what the line was charged (its body says so): counted as pending,
    not as `cost`."""
    line = wire.output_line(custom_id, wire.request_id(batch_id, index, custom_id), status, body)
    outcome = "completed" if status == 200 else "failed"
    await _write(store, batch_id, index, status == 200, line, cost, outcome, cost_pending)


async def record_expired(store: Store, batch_id: str, index: int, custom_id: str | None) -> None:
    """A line never sent before its batch expired."""
    line = wire.expired_line(custom_id, wire.request_id(batch_id, index, custom_id))
    await _write(store, batch_id, index, False, line, "0", "expired")


async def record_unknown(
    store: Store, batch_id: str, index: int, custom_id: str | None, ending: str, why: str = wire.KEY_NOT_SERVED
) -> None:
    """A line sent before, its result lost, not sent again (`why`): of an unknown outcome, not never sent (and so not
    counted expired, which says its caller should send it again: it may have run); `ending`, as wire.unknown_line.
    Counted as a line whose cost is pending, not at 0: it may have been charged, by an amount not known here."""
    line = wire.unknown_line(custom_id, wire.request_id(batch_id, index, custom_id), ending, why)
    await _write(store, batch_id, index, False, line, "0", "failed", cost_pending=True)


async def _write(
    store: Store, batch_id: str, index: int, ok: bool, line: str, cost: str, outcome: str, cost_pending: bool = False
) -> None:
    result = {"ok": ok, "line": line, "cost": "" if cost_pending else cost, "cost_pending": cost_pending}
    if await store.put_once(results_key(batch_id), str(index), json.dumps(result).encode()):
        await store.add(batch_key(batch_id), "completed" if ok else "failed", 1)
        LINES.labels(outcome).inc()
        if cost_pending:
            await store.add(batch_key(batch_id), wire.COST_PENDING_FIELD, 1)
            COST_PENDING.inc()
        else:
            COST.inc(float(Decimal(cost)))
