"""The sink's life in the router process: open the table, copy the ledger into it in the background, apply
the retention hourly, and stop cleanly (the round in flight committed and acknowledged, as the standalone sink's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmrouter.private_paths import UnsafePath
from llmrouter.redis_connect import connect
from llmrouter.tasks import stop as stop_task
from services.ledger.backlog import report_backlog
from services.ledger.db import BadDsn, LedgerDB, open_ledger
from services.ledger.settings import LedgerSettings
from services.ledger.sink import LedgerSink, MemorySource, RedisSource, RunningSink, Source, consumer_name
from services.ledger.sink_metrics import PROCESS_SINK_METRICS, SinkMetrics
from services.router.settings import RouterSettings
from services.router.store import MemoryStore, Store

log = logging.getLogger("llmrouter.ledger")
RETENTION_EVERY_S = 3600
# How long a stopping router waits for its sink's round in flight: far more than a round takes, and well within what
# the pod has left after its drain (the chart's terminationGracePeriodSeconds leaves 15 s past drainSeconds).
SINK_STOP_GRACE_S = 5.0


def ledger_for(settings: LedgerSettings) -> LedgerDB:
    """The SQL ledger the settings name; a SQLite file another user could have made or could change, or one that cannot
    be made or opened, ends the process with why (the router's start-up and the ledger's commands alike)."""
    dsn = settings.ledger_sql_dsn.get_secret_value()
    try:
        return open_ledger(dsn, settings.ledger_sql_path, settings.ledger_sql_max_mib * 2**20)
    except UnsafePath as exc:
        raise SystemExit(f"ROUTER_LEDGER_SQL_PATH={settings.ledger_sql_path} refused for the ledger: {exc}") from None
    except BadDsn as exc:  # its text never repeated: it may hold a password
        raise SystemExit(f"ROUTER_LEDGER_SQL_DSN is {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        if dsn:  # PostgreSQL's errors are its own, reported where it is reached
            raise
        raise SystemExit(f"ROUTER_LEDGER_SQL_PATH={settings.ledger_sql_path}: cannot open the ledger: {exc}") from None


def source_for(settings: LedgerSettings, store: Store) -> tuple[Source, Any]:
    """The ledger the store writes, and a client to close with the sink (None for the in-process store)."""
    if isinstance(store, MemoryStore):
        return MemorySource(store), None
    assert settings.redis_url, "a Redis store has a URL"
    client = connect(settings.redis_url)  # its own client: the store's keeps serving requests meanwhile
    return RedisSource(client, consumer_name(), settings.ledger_sql_claim_idle_s), client


async def keep_retention(db: LedgerDB, days: float) -> None:
    while True:
        try:
            deleted = await db.trim(time.time() - days * 86400)
            if deleted:
                log.info("ledger rows past retention deleted", extra={"deleted": deleted})
        except Exception as exc:
            log.warning("ledger retention failed; retried later", extra={"error": str(exc)})
        await asyncio.sleep(RETENTION_EVERY_S)


async def build_indexes(db: LedgerDB) -> None:
    try:
        await db.build_indexes()
    except Exception as exc:  # retention and the restore repair work without them, more slowly; retried at start-up
        log.warning("ledger indexes not built", extra={"error": str(exc)})


async def open_ledger_sink(
    settings: RouterSettings, store: Store, metrics: SinkMetrics = PROCESS_SINK_METRICS
) -> tuple[LedgerDB, Callable[[], Awaitable[None]]]:
    """The router's SQL ledger, and its sink (with its backlog's reporter, both reporting to `metrics`) and retention
    running in the background; with the coroutine that stops them."""
    db = await asyncio.to_thread(ledger_for, settings)
    tasks = [asyncio.create_task(build_indexes(db))]  # beside the start-up: minutes on a large PostgreSQL ledger
    client, sink, running = None, None, None
    if settings.ledger_sql_sink:
        source, client = source_for(settings, store)
        sink = LedgerSink(source, db, metrics=metrics)
        running = RunningSink(sink)
        tasks.append(asyncio.create_task(report_backlog(source, metrics=metrics)))
    if settings.ledger_sql_retention_days:
        tasks.append(asyncio.create_task(keep_retention(db, settings.ledger_sql_retention_days)))

    async def stop() -> None:
        # The index build runs in a worker thread, which the process's exit waits for: cancelled on the server first.
        await asyncio.to_thread(db.stop_index_build)
        if running is not None:
            await running.stop(SINK_STOP_GRACE_S)
        for task in tasks:
            await stop_task(task)
        if sink is not None and client is None:
            # The in-process ledger dies with this process: copy what is left before it does.
            with contextlib.suppress(Exception):
                await sink.drain()
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(db.close)

    return db, stop
