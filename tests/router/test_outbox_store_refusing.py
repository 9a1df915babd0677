"""A store that refuses the router for a reason of its own, not of the charge, holds the outbox's charges: they wait,
however many replays that takes, and land once the store takes them again. An ACL that no longer lets the router's
user run its scripts (NOPERM) reached the outbox as a bare ResponseError, counted as the charge's own fault: after
`poison_replays` replays every good charge was dead-lettered, off the budgets until an operator moved it back (and the
charge of a request served meanwhile failed the request instead of waiting in the outbox). A read-only store (a
primary demoted late) was held already. An ACL revoking one command the charge's script runs after its first writes
failed it half-way, its charged marker set: the replay took that marker for its landing, and the charge was lost. Real
Redis: an ACL user of the test server, and a redis-server made a replica.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as redis

from services.router import charging
from services.router.store import Allowance, Hold, RedisStore, StoreUnavailable, period_id, to_pico
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import served

DAY = period_id("day")
# Turns the store's refusal on (True) or off (False).
Refusal = Callable[[bool], Awaitable[None]]


@pytest.fixture(params=["acl", "acl on one command", "read-only"])
async def refusing(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Refusal]]:
    """A store URL, and how to make that store refuse the router: "acl", the test server reached as an ACL user of its
    own whose commands are revoked (the user deleted after the test), all of them or only INCRBY, which the charge's
    script runs after its first writes; "read-only", a money redis-server a late failover demotes to a replica (of a
    primary that never answers: no sync wipes its data)."""
    if request.param.startswith("acl"):
        revoked = "-@all" if request.param == "acl" else "-incrby"
        admin = redis.from_url(redis_url)
        name, password = f"router-test-{secrets.token_hex(4)}", secrets.token_hex(16)
        await admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])

        async def revoke(on: bool) -> None:
            await admin.execute_command("ACL", "SETUSER", name, revoked if on else "+@all")

        parts = urlsplit(redis_url)
        url = urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port or 6379}"))
        try:
            yield url, revoke
        finally:
            await admin.acl_deluser(name)
            await admin.aclose()
        return
    server = money_redis(tmp_path / "money").start()
    unused = RedisServer(tmp_path / "unused").port
    admin = redis.from_url(server.url)

    async def demote(on: bool) -> None:
        await (admin.replicaof("127.0.0.1", unused) if on else admin.replicaof("no", "one"))

    try:
        yield server.url, demote
    finally:
        await admin.aclose()
        server.stop()


async def test_a_store_refusing_the_router_holds_the_outbox_and_dead_letters_nothing(
    refusing: tuple[str, Refusal], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url, refuse = refusing
    charger: charging.Charger
    async with charger_on(url, tmp_path / "data") as charger:
        charger.outbox.poison_replays = 3
        r, answer = await served(charger)
        await refuse(True)
        await charger.settle(r, answer)  # kept in the outbox, the answer released
        assert len(charger.outbox) == 1
        if request.node.callspec.params["refusing"] != "acl on one command":  # admission runs no INCRBY
            with pytest.raises(StoreUnavailable):  # admission fails closed
                await charger.store.admit(ACCOUNT, Allowance("day"), Hold("next", 1, DAY, "router-1", nonce="0b"))
        for _ in range(charger.outbox.poison_replays + 1):
            assert await charger.outbox.replay(charger.store) == 0
        assert len(charger.outbox) == 1 and charger.outbox.dead_letters() == []
        await refuse(False)
        assert await charger.outbox.replay(charger.store) == 1
        pico = to_pico(Decimal(answer.cost_usd))
        direct = RedisStore(url)
        try:
            assert await direct.spent(ACCOUNT, DAY) == (pico, pico)
        finally:
            await direct.close()
