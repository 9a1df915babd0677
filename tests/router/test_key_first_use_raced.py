"""Two tenants racing a key's first use. A key is checked before it is routed by a read that binds nothing
(KeyTenants.refuse_if_another), and bound as its request is admitted or counted: so two requests naming one unbound
key with two tenants both pass the read, and the binding at admission alone must keep one of them out. On one Redis and
on a Redis Cluster (the binding in the key id's own slot, the admission in the tenant's shard), on two routers: one
tenant is served, the other refused KEY_OF_ANOTHER_TENANT with nothing held or charged for it, and the key is bound to
the one served. The routers' servicers over a real store and a providers gRPC server on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import router_pb2
from services.router.servicer import RouterServicer
from services.router.store import Account, period_id
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_collect_model import LINE, BatchProvider
from tests.router.test_collect_model import REGISTRY as BATCH_REGISTRY
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_of_two_tenants import ask, call, tenants

KEYS = [f"{n:016x}" for n in range(1, 9)]


async def outcome(servicer: RouterServicer, method: str, tenant: str, key: str, request_id: str) -> str:
    """'served', or the refusal's reason."""
    try:
        await call(servicer, method, ask(tenant, request_id, key))
    except ServiceError as refused:
        assert refused.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE), refused
        return refused.reason
    return "served"


@pytest.mark.parametrize("methods", [("Complete", "Complete"), ("Complete", "CompleteStream"), ("Decide", "Complete")])
async def test_two_tenants_racing_a_keys_first_use_on_two_routers(
    tmp_path: Path, any_redis_url: str, methods: tuple[str, str]
) -> None:
    first, second = tenants(same_shard=False)
    for each in ("one", "other"):
        (tmp_path / each).mkdir()
    async with store_on(any_redis_url) as one_store, store_on(any_redis_url) as other_store:
        async with (
            router_servicer(tmp_path / "one", one_store, Answering()) as one,
            router_servicer(tmp_path / "other", other_store, Answering()) as other,
        ):
            raced = await asyncio.gather(
                *(
                    asyncio.gather(
                        outcome(one, methods[0], first, key, f"a-{key}"),
                        outcome(other, methods[1], second, key, f"b-{key}"),
                    )
                    for key in KEYS
                )
            )
        for key, (by_first, by_second) in zip(KEYS, raced, strict=True):
            assert sorted((by_first, by_second)) == ["KEY_OF_ANOTHER_TENANT", "served"], (key, raced)
            winner, loser = (first, second) if by_first == "served" else (second, first)
            assert (await one_store.key_tenant(key)) == winner
            # The loser's shard keeps no spend or hold of the key (its tenant's own budget has its other keys').
            assert (await one_store.spent(Account(loser, key), period_id("day")))[1] == 0
            assert (await one_store.held_pico(Account(loser, key)))[1] == 0
            if methods[0] == "Complete" or winner == second:  # a Decide takes no money
                spent = await one_store.spent(Account(winner, key), period_id("day"))
                assert spent[1] > 0


def batch_line(tenant: str, key: str, request_id: str) -> router_pb2.CompleteRequest:
    request = router_pb2.CompleteRequest()
    request.CopyFrom(LINE)
    request.tenant, request.api_key_id, request.request_id = tenant, key, request_id
    return request


async def test_two_tenants_racing_a_keys_first_use_in_batch_lines(tmp_path: Path, any_redis_url: str) -> None:
    """Two SubmitBatch calls on two routers, each line naming one of the keys with its own tenant: each key's line is
    deferred for one tenant alone, the one the key is bound to, and nothing of the key is held in the other's shard."""
    first, second = tenants(same_shard=False)
    for each in ("one", "other"):
        (tmp_path / each).mkdir()
    async with store_on(any_redis_url) as one_store, store_on(any_redis_url) as other_store:
        async with (
            router_servicer(tmp_path / "one", one_store, BatchProvider(), BATCH_REGISTRY) as one,
            router_servicer(tmp_path / "other", other_store, BatchProvider(), BATCH_REGISTRY) as other,
        ):
            with acting_as(ANONYMOUS):
                by_first, by_second = await asyncio.gather(
                    one.SubmitBatch(
                        router_pb2.SubmitLinesRequest(lines=[batch_line(first, key, f"a-{key}") for key in KEYS]),
                        NoDeadline(),
                    ),
                    other.SubmitBatch(
                        router_pb2.SubmitLinesRequest(lines=[batch_line(second, key, f"b-{key}") for key in KEYS]),
                        NoDeadline(),
                    ),
                )
        for key, a, b in zip(KEYS, by_first.lines, by_second.lines, strict=True):
            assert [a.deferred, b.deferred].count(True) == 1, (key, a, b)
            winner, loser = (first, second) if a.deferred else (second, first)
            assert (await one_store.key_tenant(key)) == winner
            assert (await one_store.held_pico(Account(winner, key)))[1] > 0
            assert (await one_store.held_pico(Account(loser, key)))[1] == 0
