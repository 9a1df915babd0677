"""A call is counted (llmrouter_grpc_requests_total), out of llmrouter_inflight_requests, and out of its place under
the limit of calls in flight, before its error status goes out: a caller that reads the metrics, or sends the limit's
worth of calls, as soon as it has its error finds its call ended. Deterministic: the server's event loop is held from
just after the call's status is handed to gRPC until the caller, in a thread of its own, has read what it needs, so
whatever the server would do after the status went has not happened then. A real server on loopback behind the
service's interceptors (llmrouter.server's order: the overload check, then ServiceInterceptor)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from llmrouter.auth import Authenticator
from llmrouter.errors import ServiceError
from llmrouter.interceptors import ServiceInterceptor
from llmrouter.overload import OverloadInterceptor
from tests.waiting import inflight, rpcs_ended

SERVICE = "counted-before-status-test"
HOLD_S = 10  # the longest the server's loop is held for a caller that never reads


@dataclass
class Server:
    addr: str
    overload: OverloadInterceptor
    caller_has_read: threading.Event


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    caller_has_read = threading.Event()

    def hold_the_loop() -> None:
        # Runs on the server's loop once the failing call's task has handed its status to gRPC and awaits its
        # sending: gRPC's own threads send it meanwhile.
        caller_has_read.wait(HOLD_S)

    def failure(request: bytes) -> Exception:
        caller_has_read.clear()
        asyncio.get_running_loop().call_soon(hold_the_loop)
        if request == b"bug":
            return RuntimeError("a bug")
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", "refused")

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise failure(request)

    async def fail_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        raise failure(request)

    methods: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "FailStream": grpc.unary_stream_rpc_method_handler(fail_stream),
    }
    handlers = grpc.method_handlers_generic_handler("test.Counted", methods)
    overload = OverloadInterceptor(SERVICE, limit=1)
    srv = grpc.aio.server(interceptors=[overload, ServiceInterceptor(SERVICE, Authenticator("none", {}, {}))])
    srv.add_generic_rpc_handlers([handlers])
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield Server(f"127.0.0.1:{port}", overload, caller_has_read)
    finally:
        caller_has_read.set()
        await srv.stop(0)


@dataclass
class Seen:
    """What the caller found as soon as it had its status."""

    code: grpc.StatusCode
    calls: float  # the method's calls counted with the expected code
    in_flight: float  # llmrouter_inflight_requests
    places: int  # places taken under the limit of calls in flight


def call_then_read(server: Server, method: str, request: bytes, code: str) -> Seen:
    """In a thread of its own (the server's loop held meanwhile): the call, and what the caller found then."""
    try:
        with grpc.insecure_channel(server.addr) as channel:
            try:
                if method == "Fail":
                    fail: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Counted/Fail")
                    fail(request, timeout=HOLD_S)
                else:
                    stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                        "/test.Counted/FailStream"
                    )
                    assert list(stream(request, timeout=HOLD_S)) == [b"first"]
            except grpc.RpcError as error:
                return Seen(
                    error.code(), rpcs_ended(SERVICE, method, code), inflight(SERVICE), server.overload.inflight
                )
            raise AssertionError("the call was answered")
    finally:
        server.caller_has_read.set()


@pytest.mark.parametrize("method", ["Fail", "FailStream"])
@pytest.mark.parametrize("request_", [b"refusal", b"bug"], ids=["service-error", "bug"])
async def test_a_failed_call_is_counted_and_out_of_flight_before_its_caller_has_its_status(
    server: Server, method: str, request_: bytes
) -> None:
    code = "UNAVAILABLE" if request_ == b"refusal" else "INTERNAL"
    before, serving = rpcs_ended(SERVICE, method, code), inflight(SERVICE)
    seen = await asyncio.to_thread(call_then_read, server, method, request_, code)
    assert seen.code.name == code
    assert seen.calls == before + 1, "the caller had its status before its call was counted"
    assert seen.in_flight == serving, "the caller had its status while its call was still in flight"
    assert seen.places == 0, "the caller had its status while its call still held its place under the limit"
