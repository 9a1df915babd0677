"""Server interceptor kept apart from business logic: the caller authenticated before its request is even
parsed (llmrouter.auth), metrics for every call, ServiceError to a rich status, and any other exception to
a plain INTERNAL status (logged with its traceback, never sent)."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge, Histogram

from llmrouter.auth import Authenticator, acting_as
from llmrouter.errors import ServiceError, invalid

log = logging.getLogger("llmrouter.grpc")

# `reason`: a failed call's ErrorInfo reason (docs/conventions.md's table: KEY_MOVING and STORE_UNAVAILABLE share
# UNAVAILABLE), "" for a call that succeeded or failed without one. Reasons are our services' constants: bounded.
RPCS = Counter(
    "llmrouter_grpc_requests_total",
    "gRPC calls handled, by status code and, for a refusal of ours, its reason (docs/conventions.md, Errors)",
    ["service", "method", "code", "reason"],
)
RPC_SECONDS = Histogram(
    "llmrouter_grpc_request_duration_seconds",
    "gRPC call duration (to the last message for streams)",
    ["service", "method"],
    # Up to the router's limit on a request (ROUTER_REQUEST_TIMEOUT_S, 300 s): a quantile never passes the highest.
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

# Calls being served, the autoscaling signal (the services wait on I/O, so CPU understates how full they are).
INFLIGHT = Gauge("llmrouter_inflight_requests", "Requests being served (to the last message for streams)", ["service"])

_UNMEASURED = ("/grpc.health.", "/grpc.reflection.")

# What an interceptor outside ServiceInterceptor gives back as a call ends (llmrouter.overload: the call's place), set
# per call: run as the call is counted, before an abort sends its status, so that a caller's next call finds it free.
CALL_ENDING: ContextVar[Callable[[], None] | None] = ContextVar("call_ending", default=None)


@dataclass
class Call:
    """The call being served: its request once parsed (None before), for what is logged of it."""

    request: Any = None


# What a caller is told of a call to a service behind this one that broke on the way (unreachable, dropped mid-call):
# its code and reason, not gRPC's text, which names the other service's address ("ipv4:10.0.3.7:50052"). Logged.
BROKE_BEHIND = "a service this call depends on failed it ({}): try again"
Parser = Callable[[bytes], Any] | None


def _parse(parse: Parser, raw: bytes) -> Any:
    if parse is None:
        return raw
    try:
        return parse(raw)
    except DecodeError as exc:
        raise invalid(f"malformed request message: {exc}") from None


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once, but those of the `exempt` method path prefixes: grpc asks for a handler on
    every call, and building one (closures, metric children) cost more than the lookup. A server's methods are fixed
    once it serves."""

    exempt: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if details.method in self._handlers:
            return self._handlers[details.method]
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.exempt):
            return handler
        wrapped = self._wrap(details.method.rsplit("/", 1)[-1], handler)
        self._handlers[details.method] = wrapped
        return wrapped

    @abstractmethod
    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        """The handler to serve `method` (its name, not its path) with in place of `handler`."""


class ServiceInterceptor(WrappingInterceptor):
    exempt = _UNMEASURED

    def __init__(self, service: str, authenticator: Authenticator) -> None:
        super().__init__()
        self.service = service
        self.authenticator = authenticator
        self._inflight = INFLIGHT.labels(service)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        # Requests arrive as bytes and are parsed inside the guard, so a malformed message (invalid UTF-8 in
        # a string field, say) becomes INVALID_ARGUMENT instead of grpc's opaque deserialization failure.
        parse = handler.request_deserializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, parse, handler.unary_unary), response_serializer=handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, parse, cast(Callable[..., AsyncGenerator[Any]], handler.unary_stream)),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._bidi(method, parse, cast(Callable[..., AsyncGenerator[Any]], handler.stream_stream)),
                response_serializer=handler.response_serializer,
            )
        return None  # client-streaming RPCs with a single reply: none is served here (UNIMPLEMENTED)

    def _unary(
        self, method: str, parse: Parser, behaviour: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        seconds = RPC_SECONDS.labels(self.service, method)

        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            async with self._guard(method, seconds, context) as call:
                with acting_as(self.authenticator.identify(context)):
                    call.request = _parse(parse, raw)
                    return await behaviour(call.request, context)

        return wrapped

    def _stream(
        self, method: str, parse: Parser, behaviour: Callable[..., AsyncGenerator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        seconds = RPC_SECONDS.labels(self.service, method)

        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # aclosing: a cancelled call closes the handler at once, running its cleanup now.
            async with self._guard(method, seconds, context) as call:
                with acting_as(self.authenticator.identify(context)):
                    call.request = _parse(parse, raw)
                    async with aclosing(behaviour(call.request, context)) as items:
                        async for item in items:
                            yield item

        return wrapped

    def _bidi(
        self, method: str, parse: Parser, behaviour: Callable[..., AsyncGenerator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        """A call streaming both ways: authenticated before its first message is parsed, as any other; each message
        parsed as it is read, inside the guard (a malformed one fails the call with INVALID_ARGUMENT)."""
        seconds = RPC_SECONDS.labels(self.service, method)

        async def wrapped(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._guard(method, seconds, context):
                with acting_as(self.authenticator.identify(context)):
                    requests = (_parse(parse, raw) async for raw in raws)
                    async with aclosing(behaviour(requests, context)) as items:
                        async for item in items:
                            yield item

        return wrapped

    @asynccontextmanager
    async def _guard(self, method: str, seconds: Histogram, context: grpc.aio.ServicerContext) -> AsyncIterator[Call]:
        # The hook read as the call starts, in its own context: a stream closed later (by gRPC, in a task of its
        # own) could otherwise run another call's.
        start, counted, ending = time.perf_counter(), False, CALL_ENDING.get()

        def count(code: grpc.StatusCode, reason: str = "") -> None:
            # Counted (and out of flight) before an abort sends the status, so whoever reads the metrics after the
            # answer sees this call ended.
            nonlocal counted
            if not counted:
                counted = True
                inflight.dec()
                RPCS.labels(self.service, method, code.name, reason).inc()
                seconds.observe(time.perf_counter() - start)
                if ending is not None:
                    ending()

        inflight = self._inflight
        inflight.inc()
        call = Call()
        try:
            yield call
        except ServiceError as exc:
            if not exc.explained:  # a call to a service behind this one that broke: gRPC's text names its address
                told = {"error": exc.message, "request_id": getattr(call.request, "request_id", "")}
                log.warning("%s failed: a call it made broke", method, extra=told)
                exc = ServiceError(exc.code, exc.reason, BROKE_BEHIND.format(exc.code.name), exc.metadata)
            count(exc.code, exc.reason)
            await context.abort(exc.code, exc.message, exc.trailing_metadata())
        except grpc.aio.AbortError:
            count(context.code() if isinstance(context.code(), grpc.StatusCode) else grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:
            count(grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            count(grpc.StatusCode.INTERNAL)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
        finally:
            count(grpc.StatusCode.OK)  # ended well, or closed by gRPC (GeneratorExit): counted OK as before
