"""A key move (python -m services.router.key_move) left no record but the operator's terminal: an auditor asking why a
key's spend moved from one tenant to another had nothing to read. Each move is now recorded in the money store (the key
id, the tenants before and after, when, by whom; never the key) and an admin lists them through the Operator service's
KeyMoves. Real Redis (one server and a Redis Cluster), and a real router on loopback for the RPC."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmrouter.v1 import operator_pb2
from services.router import key_move
from services.router.store import RedisStore
from tests.router.test_duplicate_across_keys import Answering
from tests.router.test_key_move_now import operator_on  # noqa: F401 (a fixture)
from tests.router.test_operator_tenancy import Served, as_, serving

KEY = "0123456789abcdef"


async def test_each_move_is_recorded_with_its_tenants_when_and_by_whom(operator_on: str) -> None:  # noqa: F811
    before = time.time()
    assert await key_move.main([KEY, "acme", "--by", "alice"]) == 0
    assert await key_move.main([KEY, "globex", "--by", "bob"]) == 0
    store = RedisStore(operator_on)
    try:
        moves = await store.key_moves(10)
    finally:
        await store.close()
    assert [(m.key_id, m.before, m.tenant, m.by) for m in moves] == [
        (KEY, "acme", "globex", "bob"),  # the latest first
        (KEY, None, "acme", "alice"),  # bound to none before
    ]
    assert all(before - 5 < m.at < time.time() + 5 for m in moves)  # by the money's clock, near this one's


@pytest.fixture
async def served(tmp_path: Path, redis_url: str) -> AsyncIterator[Served]:
    async with serving(tmp_path, redis_url, Answering()) as made:
        yield made


async def test_an_admin_lists_the_moves_and_no_one_else_does(
    served: Served, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_REDIS_URL", redis_url)
    assert await key_move.main([KEY, "acme", "--by", "alice"]) == 0
    assert await key_move.main([KEY, "globex", "--by", "bob"]) == 0
    listed = await served.operator.KeyMoves(operator_pb2.KeyMovesRequest(admin=True), metadata=as_("edge"))
    assert [(m.key_id, m.from_tenant, m.from_none, m.to_tenant, m.by) for m in listed.moves] == [
        (KEY, "acme", False, "globex", "bob"),
        (KEY, "", True, "acme", "alice"),
    ]
    one = await served.operator.KeyMoves(operator_pb2.KeyMovesRequest(admin=True, limit=1), metadata=as_("edge"))
    assert [m.by for m in one.moves] == ["bob"]
    for caller, admin in (("edge", False), ("svc", True)):  # the edge for a tenant's key; a caller bound to acme
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.operator.KeyMoves(operator_pb2.KeyMovesRequest(admin=admin), metadata=as_(caller))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.operator.KeyMoves(operator_pb2.KeyMovesRequest(admin=True, limit=1001), metadata=as_("edge"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
