"""The sink a router runs (open_ledger_sink, the router's closer) stopped as the router stops, in the middle of a round
into a real PostgreSQL: as the standalone sink on SIGTERM (test_sink_stop.py), it reads no more and the round in flight
is committed and acknowledged, so no entry waits in its pending list for another sink to claim it a minute later, and
every entry is one row. A sink stopped while it waits for new entries stops at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from llmrouter.redis_connect import connect
from llmrouter.redis_url import RedisUrl
from services.ledger import service
from services.ledger.db import LedgerDB
from services.ledger.service import open_ledger_sink
from services.ledger.sink import LedgerSink, RedisSource, RunningSink
from services.router.settings import RouterSettings
from services.router.store import RedisStore
from tests.ledger.conftest import own_sink_metrics
from tests.ledger.test_sink_stop import STREAMS, charge_backlog, delivered, rows

PER_STREAM = 1000  # two rounds of 500 entries a stream: it is stopped in the first


def router_settings(redis_url: str, dsn: str) -> RouterSettings:
    return RouterSettings(redis_url=RedisUrl(redis_url), ledger_sql_dsn=SecretStr(dsn))


async def reading(client: Any) -> bool:
    """Whether the sinks' group was delivered entries it has not acknowledged yet (False before it is made)."""
    try:
        return bool((await delivered(client))[1])
    except ValueError:  # no group on a stream yet
        return False


async def test_a_routers_sink_stopped_mid_round_commits_and_acknowledges_it(
    redis_url: str, postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round's 1,000 inserts, let go after the stop began, take more than the 5 s grace on a machine whose cores
    # are busy (the round is then cancelled, as it should be past its grace): what is checked is that a round ending
    # within its grace is committed and acknowledged, not how long the grace is.
    monkeypatch.setattr(service, "SINK_STOP_GRACE_S", 60.0)
    client = connect(redis_url)
    store = RedisStore(redis_url)
    holder = psycopg.connect(postgres)
    try:
        await charge_backlog(client, PER_STREAM)
        # Held until the stop has begun: the sink's first round has read its entries and waits to insert them.
        holder.execute("LOCK TABLE requests IN EXCLUSIVE MODE")
        _, stop = await open_ledger_sink(router_settings(redis_url, postgres), store, own_sink_metrics()[1])
        deadline = time.monotonic() + 30
        while not await reading(client):
            assert time.monotonic() < deadline, "the sink read nothing"
            await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(stop())
        await asyncio.sleep(0.3)
        holder.rollback()
        await asyncio.wait_for(stopping, 30)

        read, pending = await delivered(client)
        assert pending == 0  # the round in flight was acknowledged
        copied = rows(postgres)
        assert copied and sorted(copied) == sorted(read)  # every entry it read is one row, once

        db = LedgerDB(dsn=postgres)
        try:
            await LedgerSink(RedisSource(client, "after-the-stop"), db).drain()
        finally:
            db.close()
        copied = rows(postgres)
        assert len(copied) == len(set(copied)) == len(STREAMS) * PER_STREAM
    finally:
        holder.close()
        await store.close()
        await client.aclose()


async def test_a_sink_waiting_for_entries_stops_at_once(redis_url: str, postgres: str) -> None:
    """The wait for new entries (block_s: a router's sink waits 1 s at a time, this one 10 minutes) is cut short by the
    stop: nothing is in flight, and a router's shutdown waits for no idle sink."""
    client = connect(redis_url)
    db = LedgerDB(dsn=postgres)
    try:
        idle = LedgerSink(RedisSource(client, "idle"), db, block_s=600, metrics=own_sink_metrics()[1])
        running = RunningSink(idle)
        await asyncio.sleep(0.3)  # its first round found nothing: it waits for entries
        await asyncio.wait_for(running.stop(grace_s=600), 60)  # at once, but on a loaded machine
    finally:
        db.close()
        await client.aclose()
