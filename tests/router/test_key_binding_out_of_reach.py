"""A key's binding (services/router/key_tenants.py) asked while the money store is out of reach. Admissions are then
refused at once, sent but for a probe a second (services/router/undoing.py): an outage costs each request no wait
for the store's timeouts. A binding asked of the store first, each keyed request whose binding its router did not
remember waited out those timeouts (2 s to connect, 5 s a reply: a partition, a failover) before its
STORE_UNAVAILABLE, and, refused before its admission, opened nothing for the requests after it. The router's servicer
over a real Redis behind a proxy that drops every connection while down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis

from services.router.store import Account
from services.router.store.keys import key_tenant_key
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import router_servicer, store_on
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_of_two_tenants import ask, call, refusal, untouched
from tests.router.test_undone_admissions import proxied_store

FIRST, SECOND = "0" * 16, "1" * 16


async def test_while_the_store_is_out_of_reach_bindings_are_not_asked_for_but_by_a_probe(
    tmp_path: Path, redis_url: str
) -> None:
    async with proxied_store(redis_url) as proxied, router_servicer(tmp_path, proxied.store, Answering()) as servicer:
        await proxied.store.ping()
        proxied.proxy.go_down()
        refused = await refusal(servicer, "Complete", ask("acme", "r1", FIRST))  # asked: found out of reach
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        proxied.proxy.come_back()
        refused = await refusal(servicer, "Complete", ask("acme", "r2", SECOND))  # within the probe interval
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert await proxied.direct.get(key_tenant_key(SECOND)) is None  # not asked
        await asyncio.sleep(servicer.admission.undoing.probe_s)  # the store is tried again a probe later
        await call(servicer, "Complete", ask("acme", "r3", SECOND))  # the probe: bound and served
        await call(servicer, "Complete", ask("acme", "r4", FIRST))  # and requests flow again
    assert await proxied.direct.get(key_tenant_key(FIRST)) == b"acme"


@pytest.fixture
async def binding_read_only(tmp_path: Path) -> AsyncIterator[str]:
    """A money Redis whose router user may read a key's binding but not write it: a store that answers reads and
    refuses writes (full under noeviction, or a demoted primary), for the binding."""
    server: RedisServer = money_redis(tmp_path / "money").start()
    admin = redis.Redis(port=server.port)
    patterns = ["~{m*", "~{llmrouter}*", "%R~{k.*"]
    await admin.execute_command("ACL", "SETUSER", "router", "on", ">pw", "resetkeys", *patterns, "&*", "+@all")
    try:
        yield f"redis://router:pw@127.0.0.1:{server.port}/0"
    finally:
        await admin.aclose()
        server.stop()


async def test_a_binding_read_answered_reopens_no_admissions(tmp_path: Path, binding_read_only: str) -> None:
    """The read of a key's binding before routing (refuse_if_another) is answered by a store refusing writes. Taken as
    the store being back, it reopened admissions at every probe to every request until one write failed again; now the
    probe it took goes on to the request's own binding, a write, and the store is still out of reach after it."""
    async with store_on(binding_read_only) as store, router_servicer(tmp_path, store, Answering()) as servicer:
        undoing = servicer.admission.undoing
        refused = await refusal(servicer, "Complete", ask("acme", "r1", FIRST))  # its binding refused: out of reach
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        await asyncio.sleep(undoing.probe_s)
        await servicer.admission.key_tenants.refuse_if_another(Account("acme", SECOND))  # read, and answered
        assert [undoing.may_send(), undoing.may_send()] == [True, False]  # one probe, no more
        await asyncio.sleep(undoing.probe_s)
        refused = await refusal(servicer, "Complete", ask("acme", "r2", SECOND))  # the probe: its binding refused
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert not undoing.may_send()  # still out of reach
        await untouched(store, Account("acme", SECOND))
