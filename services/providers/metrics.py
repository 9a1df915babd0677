"""Provider metrics; names and labels are fixed by docs/conventions.md (dashboards and alerts use them)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Metric

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

REQUESTS = Counter("llmrouter_provider_requests_total", "Upstream calls by outcome", ["provider", "model", "outcome"])
DURATION = Histogram(
    "llmrouter_provider_request_duration_seconds",
    "Upstream call duration, retries included",
    ["provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "llmrouter_provider_time_to_first_token_seconds",
    "Time to the first streamed token",
    ["provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
RETRIES = Counter("llmrouter_provider_retries_total", "Upstream retries", ["provider", "model"])
CIRCUIT = Gauge(
    "llmrouter_provider_circuit_state", "Circuit state: 0 closed, 1 half-open, 2 open", ["provider", "model"]
)
# A key file rewritten to hold no key (empty, cut short, not ASCII) keeps its provider on the last good key, which may
# be the very key a rotation meant to stop: said by a gauge and an alert, not only by a log line every check.
KeyValidity = Callable[[], dict[str, bool]]


class _KeyValid(Gauge):
    """llmrouter_provider_key_valid, set at scrape time from the services running (their catalogs in force then): set
    as keys were read, it kept the series of a service stopped since, which a test sharing the process then read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sources: list[KeyValidity] = []
        self._scraping = threading.Lock()  # scraped from the metrics server's threads

    def collect(self) -> Iterable[Metric]:
        valid: dict[str, bool] = {}
        for source in list(self.sources):  # one service in a process but in tests: any stale key tells
            for provider, ok in source().items():
                valid[provider] = valid.get(provider, True) and ok
        with self._scraping:
            self.clear()
            for provider, ok in valid.items():
                self.labels(provider).set(1 if ok else 0)
            return list(super().collect())


KEY_VALID = _KeyValid(
    "llmrouter_provider_key_valid",
    "0 while the provider's key file holds no key and its last good key is still sent; 1 otherwise",
    ["provider"],
)
TOKENS = Counter("llmrouter_provider_tokens_total", "Tokens billed", ["provider", "model", "direction"])
USAGE_IMPLAUSIBLE = Counter(
    "llmrouter_provider_usage_implausible_total",
    "Answers whose reported usage the answer belies (no input or far too little for the prompt, no output or far too "
    "little for the text delivered, output past max_tokens): counted here instead, flagged estimated",
    ["provider", "model", "direction"],
)
