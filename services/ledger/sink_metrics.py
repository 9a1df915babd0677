"""The metrics a SQL sink reports (services/ledger/sink.py) and its backlog's reporter (backlog.py) sets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from services.router.metrics import (
    LEDGER_SINK_BACKLOG_AGE,
    LEDGER_SINK_BACKLOG_ENTRIES,
    LEDGER_SINK_FAILURES,
    LEDGER_SINK_LAST_SUCCESS,
    LEDGER_SINK_ROWS,
)


@dataclass(frozen=True)
class SinkMetrics:
    """What a sink and its backlog's reporter (backlog.report_backlog) report: the process's metrics
    (services.router.metrics), or a test's own registry's, which no other sink of the process (a router's, in the same
    event loop) stamps or sets meanwhile."""

    last_success: Gauge = LEDGER_SINK_LAST_SUCCESS
    rows: Counter = LEDGER_SINK_ROWS
    failures: Counter = LEDGER_SINK_FAILURES
    backlog_age: Gauge = LEDGER_SINK_BACKLOG_AGE
    backlog_entries: Gauge = LEDGER_SINK_BACKLOG_ENTRIES  # by state: pending, unread

    @contextlib.contextmanager
    def failing(self, stage: str) -> Iterator[None]:
        """Count an exception of `stage` (never a cancellation) and let it through."""
        try:
            yield
        except Exception:
            self.failures.labels(stage).inc()
            raise


PROCESS_SINK_METRICS = SinkMetrics()  # the process's, served on its metrics port
