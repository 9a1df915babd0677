"""llmrouter_grpc_requests_total{reason}: a refusal is counted under its ErrorInfo reason, so the on-call tells a
KEY_MOVING (keys moved between tenants, again and again) from a STORE_UNAVAILABLE (the money store out of reach),
both UNAVAILABLE; a call that succeeded, or failed without a reason of ours, has none. Counted, and out of
llmrouter_inflight_requests, before its caller has its status: read right after it, the metrics have the call. A real
gRPC server on loopback behind the shared interceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from llmrouter.auth import Authenticator
from llmrouter.errors import ServiceError
from llmrouter.interceptors import ServiceInterceptor
from tests.waiting import inflight

SERVICE = "reasons-test"


def counted(method: str, code: str, reason: str) -> float:
    labels = {"service": SERVICE, "method": method, "code": code, "reason": reason}
    return REGISTRY.get_sample_value("llmrouter_grpc_requests_total", labels) or 0.0


@pytest.fixture
async def addr() -> AsyncIterator[str]:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise ServiceError(grpc.StatusCode.UNAVAILABLE, request.decode(), "refused")

    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"done"

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("a bug")

    handlers = grpc.method_handlers_generic_handler(
        "test.Reasons",
        {
            name: grpc.unary_unary_rpc_method_handler(h)
            for name, h in (("Refuse", refuse), ("Answer", answer), ("Fail", fail))
        },
    )
    srv = grpc.aio.server(interceptors=[ServiceInterceptor(SERVICE, Authenticator("none", {}, {}))])
    srv.add_generic_rpc_handlers([handlers])
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield f"127.0.0.1:{port}"
    await srv.stop(0)


async def test_a_refusal_is_counted_under_its_reason(addr: str) -> None:
    before = {r: counted("Refuse", "UNAVAILABLE", r) for r in ("KEY_MOVING", "STORE_UNAVAILABLE", "")}
    async with grpc.aio.insecure_channel(addr) as channel:
        refuse: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Reasons/Refuse")
        for reason in ("KEY_MOVING", "KEY_MOVING", "STORE_UNAVAILABLE"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await refuse(reason.encode())
            assert ServiceError.from_rpc_error(refused.value).reason == reason
            assert inflight(SERVICE) == 0, "the caller had its status while its call was still in flight"
    after = {r: counted("Refuse", "UNAVAILABLE", r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {"KEY_MOVING": 2, "STORE_UNAVAILABLE": 1, "": 0}


async def test_a_call_without_a_reason_of_ours_has_none(addr: str) -> None:
    answered, failed = counted("Answer", "OK", ""), counted("Fail", "INTERNAL", "")
    async with grpc.aio.insecure_channel(addr) as channel:
        answer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Reasons/Answer")
        fail: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Reasons/Fail")
        assert await answer(b"") == b"done"
        with pytest.raises(grpc.aio.AioRpcError):
            await fail(b"")
        assert inflight(SERVICE) == 0
    assert (counted("Answer", "OK", ""), counted("Fail", "INTERNAL", "")) == (answered + 1, failed + 1)
