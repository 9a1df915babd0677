"""Stats over ledger rows: requests, success, latency percentiles, escalation and cache-hit rates, tokens,
cost, baseline cost, savings and each model's share of calls, in total and per model, tenant or day.

Sums are integer pico-dollars over the same rows the table holds, so they equal the ledger exactly."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.ledger.db import Row
from services.router.store.model import GIVEN_BACK

GROUPINGS = ("", "model", "tenant", "day")
SUCCESS = {"ok", "cache_hit"}


@dataclass
class Group:
    key: str
    requests: int = 0
    succeeded: int = 0
    escalated: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_pico: int = 0
    baseline_pico: int = 0
    latencies: list[int] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)

    def add(self, row: Row) -> None:
        self.cost_pico += row.get("cost_pico")
        self.baseline_pico += row.get("baseline_pico")
        if row.get("outcome") == GIVEN_BACK:  # money given back of a reconciled charge: no request of its own
            return
        self.requests += 1
        self.succeeded += row.get("outcome") in SUCCESS
        self.escalated += bool(row.get("escalated"))
        self.cache_hits += bool(row.get("cache_hit"))
        self.fallbacks += bool(row.get("fallback"))
        self.input_tokens += row.get("input_tokens")
        self.output_tokens += row.get("output_tokens")
        self.latencies.append(row.get("latency_ms"))
        if row.get("model"):
            self.models[row.get("model")] += 1

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile of latency, in ms (0 with no requests)."""
        if not self.latencies:
            return 0
        ordered = sorted(self.latencies)
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]

    def rate(self, count: int) -> float:
        return count / self.requests if self.requests else 0.0

    @property
    def saved_pico(self) -> int:
        return self.baseline_pico - self.cost_pico

    def model_share(self) -> dict[str, float]:
        return {model: n / self.requests for model, n in sorted(self.models.items())}


def group_key(row: Row, group_by: str) -> str:
    if group_by == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(row.get("ts")))
    return str(row.get(group_by)) if group_by else "all"


def summarize(rows: Iterable[Row], group_by: str = "") -> tuple[Group, list[Group]]:
    """(the total, the groups in key order); no groups when group_by is empty."""
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of model, tenant, day (got {group_by!r})")
    total, groups = Group("all"), dict[str, Group]()
    for row in rows:
        total.add(row)
        if group_by:
            key = group_key(row, group_by)
            groups.setdefault(key, Group(key)).add(row)
    return total, [groups[key] for key in sorted(groups)]
