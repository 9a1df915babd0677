"""Admission by load, a server interceptor kept apart from business logic: past its limit of calls in flight (streams
counted until they end), a service refuses a new call at once with RESOURCE_EXHAUSTED, ErrorInfo OVERLOADED and
RetryInfo (llmrouter.errors.overloaded), before it is authenticated or parsed: it sets off nothing and costs nothing,
and its caller backs off or falls back (ServiceError.shed). The limit sits below gRPC's own queue of calls waiting for
a handler (GRPC_PENDING_CALLS), past which gRPC cancels calls with no word of why. Health checks, reflection and the
operator surface are never refused: a full server must still say it is alive, and its operator must reach it.

Its own metrics, for operators: the refusals apart from any other RESOURCE_EXHAUSTED (a rate limit, a budget), and the
limit itself, against which llmrouter_inflight_requests shows the headroom left."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, cast

import grpc
from prometheus_client import Counter, Gauge

from llmrouter.errors import OVERLOADED, overloaded
from llmrouter.interceptors import CALL_ENDING, RPCS, WrappingInterceptor
from llmrouter.v1 import operator_pb2

# gRPC's queue of calls received but given to no handler yet (its default, set explicitly in llmrouter.server).
GRPC_PENDING_CALLS = 1000
# What a refused caller is told to wait: calls end and free places within about that on a service at its limit.
RETRY_DELAY_S = 1
OPERATOR = operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name
NEVER_REFUSED = ("/grpc.health.", "/grpc.reflection.", f"/{OPERATOR}/")

REFUSED = Counter(
    "llmrouter_grpc_overloaded_calls_total",
    "gRPC calls refused OVERLOADED at the service's limit of calls in flight, before any work",
    ["service", "method"],
)
LIMIT = Gauge(
    "llmrouter_grpc_max_inflight_calls",
    "The service's limit of calls in flight (<PREFIX>_MAX_INFLIGHT_CALLS): past it a call is refused OVERLOADED",
    ["service"],
)


class OverloadInterceptor(WrappingInterceptor):
    exempt = NEVER_REFUSED

    def __init__(self, service: str, limit: int) -> None:
        super().__init__()
        self.service = service
        self.limit = limit
        self.inflight = 0  # one event loop serves every call: counted without a lock
        LIMIT.labels(service).set(limit)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # Each method's refusals counted from 0 once it is first called, so that rate() sees the first of them.
        REFUSED.labels(self.service, method)
        kinds = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **kinds)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream), **kinds)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream), **kinds)
        return handler  # client-streaming with a single reply: none is served (ServiceInterceptor: UNIMPLEMENTED)

    def _unary(self, method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._enter(method, context)
            leave = self._place()
            try:
                return await behaviour(request, context)
            finally:
                leave()

        return admitted

    def _stream(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        """A server stream or a stream both ways (its request an iterator): in flight to its last message."""

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._enter(method, context)
            leave = self._place()
            try:
                async with aclosing(cast(AsyncGenerator[Any], behaviour(request, context))) as items:
                    async for item in items:
                        yield item
            finally:
                leave()

        return admitted

    def _place(self) -> Callable[[], None]:
        """Gives back the place the call took, once: as ServiceInterceptor counts the call (CALL_ENDING), before an
        abort sends its status (given back after it, the caller's next call could be refused at the limit), or at the
        latest as the call's handler returns."""
        held = True

        def leave() -> None:
            nonlocal held
            if held:
                held = False
                self.inflight -= 1

        CALL_ENDING.set(leave)
        return leave

    async def _enter(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Take a place, or refuse the call (the check and the count with no await between them)."""
        if self.inflight >= self.limit:
            RPCS.labels(self.service, method, grpc.StatusCode.RESOURCE_EXHAUSTED.name, OVERLOADED).inc()
            REFUSED.labels(self.service, method).inc()
            refusal = overloaded(self.service, RETRY_DELAY_S)
            await context.abort(refusal.code, refusal.message, refusal.trailing_metadata())
        self.inflight += 1
