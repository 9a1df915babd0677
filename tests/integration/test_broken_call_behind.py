"""A router whose providers service went away after it had their model list answers Complete and CompleteStream
UNAVAILABLE, as before, but without gRPC's text for the broken call, which named the providers' address
("connections to all backends failing ... ipv4:127.0.0.1:PORT"): the router relayed that error as its own. The edge
hid it from HTTP callers; a direct gRPC caller saw it. Nothing is charged (never connected: nothing was sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
import yaml

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import ledger_records
from tests.fakes import FakeOpenAI
from tests.integration.conftest import served_stack
from tests.integration.test_provider_batches import REALTIME, registry


def request(request_id: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        tenant="acme",
        request_id=request_id,
        model=REALTIME,
        messages=[common_pb2.ChatMessage(role="user", content=f"hello, {request_id}")],  # none answered from the cache
        max_tokens=16,
    )


async def refusal(stub: router_pb2_grpc.RouterStub, request_id: str, stream: bool) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        if stream:
            async for _ in stub.CompleteStream(request(request_id), timeout=20):
                pass
        else:
            await stub.Complete(request(request_id), timeout=20)
    return ServiceError.from_rpc_error(refused.value)


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    monkeypatch.setenv("OPENAI_KEY", "sk-fake")
    with FakeOpenAI() as fake:
        yield fake


async def test_providers_gone_are_told_without_their_address(
    upstream: FakeOpenAI, tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(upstream.base_url)))
    async with (
        served_stack(path, redis_url, None, verifier=False) as servers,
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        served = await stub.Complete(request("r-served"), timeout=20)  # the router now has the model list
        assert served.model == REALTIME
        providers = servers["providers"].port
        await servers.pop("providers").stop(0)
        for request_id, stream in (("r-unary", False), ("r-stream", True)):
            error = await refusal(stub, request_id, stream)
            assert error.code == grpc.StatusCode.UNAVAILABLE, error.message
            for revealing in ("127.0.0.1", str(providers), "ipv4", "backends", "addresses"):
                assert revealing not in error.message, error.message
            # What broke is the operator's to read, in the router's log, with the request it failed.
            (logged,) = [r for r in caplog.records if getattr(r, "request_id", "") == request_id]
            assert str(providers) in getattr(logged, "error", "")
    client = redis.from_url(redis_url)
    try:
        charged = {r["request_id"]: Decimal(r["cost_usd"]) for r in await ledger_records(client)}
    finally:
        await client.aclose()
    assert charged.get("r-unary", Decimal(0)) == charged.get("r-stream", Decimal(0)) == 0, charged
