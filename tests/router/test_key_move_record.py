"""A key move (python -m services.router.key_move) left no record but the operator's terminal: an auditor asking why a
key's spend moved from one tenant to another had nothing to read. Each move is now recorded in the money store (the key
id, the tenants before and after, when, by whom; never the key) and an admin lists them through the Operator service's
KeyMoves. Real Redis (one server and a Redis Cluster), and a real router on loopback for the RPC."""

from __future__ import annotations

import getpass
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from llmrouter.redis_connect import connect
from llmrouter.v1 import operator_pb2
from services.router import key_move
from services.router.store import RedisStore
from services.router.store.keys import KEY_MOVES_RECORD, SHARDS, key_moves_key, key_tenant_key
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


async def test_a_move_without_by_is_recorded_as_by_the_user_running_it(operator_on: str) -> None:  # noqa: F811
    assert await key_move.main([KEY, "acme"]) == 0
    store = RedisStore(operator_on)
    try:
        assert [m.by for m in await store.key_moves(10)] == [getpass.getuser()]
    finally:
        await store.close()


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


async def test_a_move_whose_record_fails_is_made_met_by_the_routers_and_said_unrecorded(
    operator_on: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The record written last: its failure (here its key of another type, as a hand-edit leaves it) neither undoes
    the move nor keeps the routers from meeting it (every shard's key-moves token is new); key_move exits 1 saying
    what the move was, which no listing will show."""
    client = connect(operator_on)
    try:
        assert await key_move.main([KEY, "acme"]) == 0
        tokens = [await client.get(key_moves_key(shard)) for shard in range(SHARDS)]
        await client.set(KEY_MOVES_RECORD, "not a stream")
        capsys.readouterr()
        assert await key_move.main([KEY, "globex", "--by", "bob"]) == 1
        told = capsys.readouterr().err
        assert "moved from 'acme' to 'globex'" in told and "failed the move's record" in told, told
        assert await client.get(key_tenant_key(KEY)) == b"globex"
        after = [await client.get(key_moves_key(shard)) for shard in range(SHARDS)]
        assert all(new != old for new, old in zip(after, tokens, strict=True))
    finally:
        await client.delete(KEY_MOVES_RECORD)
        await client.aclose()
