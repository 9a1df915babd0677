"""A key's binding (services/router/key_tenants.py) asked while the money store is out of reach. Admissions are then
refused at once, sent but for a probe a second (services/router/undoing.py): an outage costs each request no wait
for the store's timeouts. A binding asked of the store first, each keyed request whose binding its router did not
remember waited out those timeouts (2 s to connect, 5 s a reply: a partition, a failover) before its
STORE_UNAVAILABLE, and, refused before its admission, opened nothing for the requests after it. The router's servicer
over a real Redis behind a proxy that drops every connection while down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from services.router.store.keys import key_tenant_key
from tests.router.servicer_kit import router_servicer
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_of_two_tenants import ask, call, refusal
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
