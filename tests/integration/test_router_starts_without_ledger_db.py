"""A router (re)started while its PostgreSQL ledger is out of reach (a restart after a SIGKILL, during a database
outage) starts all the same: it serves and charges in the money store, and its sink copies those charges into the
table once the database is back. It refused to start before: no router killed (or scaled up) during the outage could
come back until the database did, a killed router's outbox left unreplayed meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.v1 import router_pb2_grpc
from services.ledger.db import LedgerDB
from services.router.store import Account, AccountKeys
from tests.conftest import ledger_records
from tests.integration.conftest import Chain, free_port
from tests.integration.test_money_faults import Spawn, ask, money, spawn, wait_for
from tests.ledger.conftest import fresh_postgres
from tests.redis_servers import RedisServer

__all__ = ["money", "spawn"]  # fixtures


class Proxy:
    """The real PostgreSQL server behind a loopback port that is closed (the database out of reach) until opened."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target_port = free_port(), target_port
        self.server: asyncio.Server | None = None

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@pytest.fixture
async def ledger_behind_proxy() -> AsyncIterator[tuple[str, str, Proxy]]:
    """(the DSN through the proxy, the DSN itself, the proxy)."""
    with fresh_postgres() as dsn:
        base, _, name = dsn.rpartition("/")
        host_port = base.rpartition("@")[2]
        proxy = Proxy(int(host_port.rpartition(":")[2]))
        try:
            yield f"{base.replace(host_port, f'127.0.0.1:{proxy.port}')}/{name}", dsn, proxy
        finally:
            await proxy.close()


async def test_a_router_started_while_its_ledger_database_is_away_serves_and_copies_its_charges_later(
    chain: Chain, money: RedisServer, spawn: Spawn, ledger_behind_proxy: tuple[str, str, Proxy]
) -> None:
    proxied, direct, proxy = ledger_behind_proxy
    router = await spawn(ROUTER_REDIS_URL=money.url, ROUTER_LEDGER_SQL_DSN=proxied)  # the database: out of reach
    db: Any = redis.from_url(money.url)
    try:
        request = ask("strong-model")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            answer = await router_pb2_grpc.RouterStub(channel).Complete(request, timeout=30)
        (record,) = [r for r in await ledger_records(db) if r["tenant"] == request.tenant]
        keys = AccountKeys.of(Account(record["tenant"], record["key"]))
        spent = int(await db.get(keys.spend(record["period"])[0]))
        assert spent > 0  # charged in the money store, the ledger database away

        await proxy.open()  # the database is back: the router's sink copies the charge
        ledger = await asyncio.to_thread(LedgerDB, direct)

        async def copied() -> list[Any]:
            return await ledger.rows(tenant=request.tenant)

        try:
            (row,) = await wait_for(copied, timeout=30)
        finally:
            ledger.close()
        assert row.get("request_id") == answer.id and row.get("cost_pico") == spent
    finally:
        await db.aclose()
