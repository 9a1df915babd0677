"""A batch line of an unknown outcome (sent before, its result lost, not sent again) is counted `failed` in the edge's
metrics, as in its batch's request_counts. It was counted `expired`, which says a line was never sent, so that its
caller sends it again (deploy/runbooks.md), and which a cancelled batch's line, or one of a batch still running, is
not either: sent again, it may run twice."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.batches import results
from services.batches.store import MemoryStore


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("llmrouter_edge_batch_lines_total", {"outcome": outcome}) or 0.0


@pytest.mark.parametrize("ending", ["cancelled", "expired", ""])
async def test_a_line_of_an_unknown_outcome_is_counted_failed_not_expired(ending: str) -> None:
    store = MemoryStore()
    expired, failed = counted("expired"), counted("failed")
    await results.record_unknown(store, "batch_outcomes", 0, "a", ending)
    assert (counted("expired"), counted("failed")) == (expired, failed + 1)
    await store.close()
