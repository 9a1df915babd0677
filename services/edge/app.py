"""The REST edge: OpenAI-compatible HTTP in front of the Router's gRPC API, so the official `openai` SDK works
unchanged. It authenticates, validates and translates; every decision is the router's."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisClusterException, RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llmrouter import later_decisions
from llmrouter.errors import ServiceError
from llmrouter.interceptors import INFLIGHT
from llmrouter.redis_errors import StoreFailure, store_failure
from llmrouter.v1 import common_pb2, operator_pb2_grpc, router_pb2, router_pb2_grpc
from llmrouter.validation import MAX_MESSAGES, MAX_ROUTED_MESSAGES, parse_decimal
from services.batches.api import BatchApi
from services.batches.runner import Runner
from services.batches.store import open_store
from services.edge import idempotency, legacy, replays, responses, router_headers
from services.edge.access_log import AccessLog
from services.edge.content_coding import ContentCoding
from services.edge.key_reload import LiveKeys
from services.edge.keys import KeyRing
from services.edge.off_loop import parse_off_loop
from services.edge.openai_api import (
    ApiError,
    check_encoded_size,
    chunk_body,
    completion_body,
    cost_headers,
    logprobs,
    models_body,
    parse_request,
    read_limited,
    router_extension,
    tool_calls_delta,
    usage_body,
)
from services.edge.operator_routes import OperatorRoutes
from services.edge.protocol import CALLER_STATUS
from services.edge.replays import Replays
from services.edge.responses_errors import named_as_sent
from services.edge.responses_stream import ResponseStream
from services.edge.settings import EdgeSettings
from services.edge.shutdown_cut import SENT_REQUEST_ID, STREAM_ENDING, ShutdownCut
from services.router.store import KEYLESS

log = logging.getLogger("llmrouter.edge")
T = TypeVar("T")
BODY_DIGEST = "llmrouter.body_digest"  # the scope's: the request's route and body as sent (replays.digest)
REPLAY = {replays.REPLAYED: "true"}
ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name

HTTP_REQUESTS = Counter("llmrouter_edge_http_requests_total", "HTTP requests", ["route", "status"])
HTTP_SECONDS = Histogram(
    "llmrouter_edge_http_request_duration_seconds",
    "HTTP request duration (to the response start for streams)",
    ["route"],
    # Up to the router's limit on a completion (ROUTER_REQUEST_TIMEOUT_S, 300 s): a quantile never passes the highest.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300),
)
# The 503s among those that say `overloaded`, by the service at its limit of calls in flight that refused (its
# ErrorInfo's `service`): the router, or the providers, whose refusal the router passes on once it has admitted the
# request. Any other name is `other`, so the label stays bounded; each counted from 0, so that rate() sees the first.
OVERLOADED_ANSWERS = Counter(
    "llmrouter_edge_overloaded_answers_total",
    "Requests answered overloaded (503): a service behind the edge at its limit of calls in flight",
    ["service"],
)
OVERLOADED_BY = {service: OVERLOADED_ANSWERS.labels(service) for service in ("router", "providers", "other")}

# gRPC status of the router -> HTTP status of the edge. Upstream trouble is 502/503/504, and so is the router
# refusing the edge's own credentials (UNAUTHENTICATED, PERMISSION_DENIED): the deployment's fault, not the caller's.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}
# OpenAI's codes where one exists, the router's reason otherwise. The router's INVALID_REQUEST is a field's value it
# refuses (its metadata names the field), as the edge's own refusals of a value are: invalid_value, OpenAI's code.
OPENAI_CODES = {
    "INVALID_REQUEST": "invalid_value",
    "BUDGET_EXCEEDED": "insufficient_quota",
    "RATE_LIMITED": "rate_limit_exceeded",
    "UPSTREAM_RATE_LIMITED": "rate_limit_exceeded",
    "MODEL_NOT_FOUND": "model_not_found",
    "CONTEXT_LENGTH_EXCEEDED": "context_length_exceeded",
    "SHUTTING_DOWN": "server_shutting_down",  # the router's drain cut it, as the edge's own shutdown names its cut
}


# Reasons whose message the router wrote itself, about the caller's request: safe to show. Every other message
# may quote a provider (whose error bodies can carry the operator's organisation id) or name an internal
# address, so the caller gets a generic one and the request id that finds the full error in the logs.
CALLER_REASONS = {
    "INVALID_REQUEST",
    "MODEL_NOT_FOUND",
    "NO_ELIGIBLE_MODEL",
    "DUPLICATE_REQUEST",
    "BUDGET_EXCEEDED",
    "RATE_LIMITED",
    "UNSUPPORTED_PARAMETER",  # the providers service's own refusal (services/providers/honoured.py)
    "BUDGET_LIMIT_UNCONFIRMED",  # an admin's limit change: the routers finish it, setting it again confirms it
    "KEY_OF_ANOTHER_TENANT",  # names no tenant; the generic 502 blamed a provider for the deployment's key file
}
# Fields of the router's request that the edge fills itself, never from the caller's body: a router's refusal naming
# one (KEY_OF_ANOTHER_TENANT's `tenant`, the key's) names no `param` an OpenAI caller could change.
EDGE_FIELDS = {"tenant"}
GENERIC_MESSAGES = {
    400: "the provider refused the request",
    429: "the provider is rate limiting requests",
    502: "the provider failed to answer",
    503: "the service is temporarily unavailable",
    504: "the provider did not answer in time",
}


def whole_seconds(text: str) -> str:
    """Retry-After as HTTP has it, whole seconds (rounded up, at most a day), or '' for no usable value: a router or
    providers service of a version before may still say '1.5' or '30.4371', which strict clients refuse."""
    try:
        seconds = float(text)
    except ValueError:
        return ""
    return str(min(math.ceil(seconds), 86_400)) if math.isfinite(seconds) and seconds >= 0 else ""


def api_error(err: grpc.RpcError, request_id: str, charging: bool = False) -> ApiError:
    """charging: the call admits and charges (a completion). The router dropping one mid-call (it died) may have
    admitted it, and its hold is then charged by the reconciler; one that has not answered by the edge's deadline
    (EDGE_REQUEST_TIMEOUT_S) serves an admitted completion to its end all the same, and charges it; one it cut as its
    drain's grace ended says its charge is pending (cost_pending: services/router/shutdown_cut.py). Each way a retry
    would be charged again."""
    error = ServiceError.from_rpc_error(err)
    told_pending = error.metadata.get("cost_pending") == "true"
    in_doubt = charging and (error.cut_mid_call or error.past_deadline or told_pending)
    status = HTTP_STATUS.get(error.code, 502)
    if error.reason == "UPSTREAM_ERROR" and error.metadata.get("upstream_status") not in ("400", "422"):
        status = 502  # a provider refusing our key or payload is the gateway's failure, not the caller's
    if error.code == grpc.StatusCode.UNAVAILABLE or error.unanswered or error.overloaded:
        # The router unreachable or restarting (no ErrorInfo), a provider out of service, or a service at its limit of
        # calls in flight (OVERLOADED): the service's load, not the caller's rate (429), is why.
        status = 503
        if error.overloaded:
            OVERLOADED_BY.get(error.metadata.get("service", ""), OVERLOADED_BY["other"]).inc()
    elif error.past_deadline:
        status = 504  # the router did not answer by the edge's own deadline: a timeout, not a provider's failure
    code = OPENAI_CODES.get(error.reason, error.reason.lower())
    retry_after = whole_seconds(error.metadata.get("retry_after_s", "")) or ("1" if status == 503 else "")
    message = error.message
    if not _callers_own(error):
        log.warning(
            "request failed",
            extra={"request_id": request_id, "reason": error.reason, "grpc_code": error.code.name, "detail": message},
        )
        generic = GENERIC_MESSAGES.get(status, "the request failed")
        if error.reason == "CONTEXT_LENGTH_EXCEEDED":
            generic = "the prompt is longer than the model's context window"
        elif error.reason == "INTERNAL_ERROR":  # the router's own fault (services/router/faults.py), not a provider's
            generic = "the router failed unexpectedly"
        message = f"{generic} (request id {request_id})"
    param = error.metadata.get("field") or None
    if param in EDGE_FIELDS:  # the router's request's, filled by the edge: no field the caller sent
        param = None
    charged = error.metadata.get("charged_usd", "")
    return ApiError(
        status,
        message,
        param=param,
        code=code,
        retry_after=retry_after,
        charged_usd=charged,
        held_usd=error.metadata.get("held_usd", ""),
        request_id=request_id,
        # A failure that was charged is not retried by the SDK on its own: a retry is a new request, charged again.
        retryable=error.metadata.get("retryable") != "false" and not _costs_something(charged) and not in_doubt,
        cost_pending=in_doubt and not charged,
    )


def _callers_own(error: ServiceError) -> bool:
    """An error whose message is about the caller's request and holds no provider's text: returned as it is. The
    router's own context-window refusal (from the registry, no provider named) is one; a provider's is not."""
    if "upstream_status" in error.metadata:
        return False
    return error.reason in CALLER_REASONS or (
        error.reason == "CONTEXT_LENGTH_EXCEEDED" and "provider" not in error.metadata
    )


def _costs_something(charged_usd: str) -> bool:
    amount = parse_decimal(charged_usd) if charged_usd else None
    return amount is not None and amount > 0


def error_response(error: ApiError) -> JSONResponse:
    headers = {"retry-after": error.retry_after} if error.retry_after else {}
    if error.charged_usd:  # a failure that cost something (its attempts): as an answer's cost is told
        headers["x-router-cost-usd"] = error.charged_usd
    if error.request_id:  # as an answer's: the access log names the request by it, and so does the ledger once admitted
        headers["x-request-id"] = error.request_id
    if not error.retryable:  # OpenAI's SDKs read it before their own rules (which retry every 429)
        headers["x-should-retry"] = "false"
    return JSONResponse(error.body(), status_code=error.status, headers=headers or None)


async def first_chunks(call: Any, request: Request, request_id: str) -> tuple[router_pb2.Decision, Any]:
    """A stream's decision, then its first delta (or its final chunk), read before the response starts: routing
    errors and provider failures before any token become HTTP errors with their proper status, not a 200 with an
    error event. Read while watching the client (unless_left): unwatched, the router's stream and its upstream ran on
    for nobody until the first token (a tool-call answer's first chunk is its last: generated whole) or the request's
    timeout. A client that leaves is charged by the router as a stream left before its first token (nothing if not
    yet admitted)."""

    async def both() -> tuple[router_pb2.Decision, Any]:
        decision, chunk = (await call.read()).decision, await call.read()
        # Another model taking over before the first delta (a fallback, an escalated buffered stream) is told by a
        # decision naming it: the stream is that model's answer, and named so.
        while chunk is not grpc.aio.EOF and chunk.WhichOneof("kind") == "decision":
            decision, chunk = chunk.decision, await call.read()
        return decision, chunk

    return await unless_left(both(), call, request, request_id)


async def unless_left(
    reading: Awaitable[T],
    call: Any | None,
    request: Request,
    request_id: str,
    taken_on: Callable[[asyncio.Future[T]], None] | None = None,
) -> T:
    """What a router call's `reading` reads, read while watching the client: one that leaves meanwhile has the call
    cancelled at once (a 499 naming the request id, which the access log keeps: the router may have admitted it and
    charges it under that id). A unary call's router finishes the generation under way and charges it, but starts no
    escalation or fallback for a caller gone. Only the server's word that the client left counts: a watch that ends
    otherwise (its receive failing, or another message) says nothing of the client, and the request is served on
    unwatched rather than cancelled and lost. Any failure here cancels the call too. `taken_on`: given, it takes the
    reading of a call whose client left on, uncancelled (an Idempotency-Key's answer, kept for the retry). No `call`:
    a wait after the call ended (a refused retry's, for the first's answer), cancelled alone."""
    read, leaving = asyncio.ensure_future(reading), asyncio.create_task(client_left(request))
    taken = False
    try:
        await asyncio.wait((read, leaving), return_when=asyncio.FIRST_COMPLETED)
        if not read.done():
            if has_left(leaving):
                if taken_on is not None:
                    taken_on(read)
                    taken = True
                raise ApiError(
                    499, "the client closed the request", code="client_closed_request", request_id=request_id
                )
            await read
        return read.result()
    except BaseException:
        if not taken:
            if call is not None:
                call.cancel()
            read.cancel()
        raise
    finally:
        leaving.cancel()


async def client_left(request: Request) -> bool:
    """Whether the client has gone, on the next message from the server: its body already read, the only one due
    is http.disconnect. Another is no news of the client (and waiting on for a disconnect would spin on a server
    that sends it at once): the watch ends there."""
    return (await request.receive()).get("type") == "http.disconnect"


def has_left(watch: asyncio.Task[bool]) -> bool:
    """A watch that ended (client_left) ended on the client's leaving, not on its receive failing or another message."""
    if watch.cancelled():
        log.warning("the client's watch was cancelled: the router's answer is read on unwatched")
        return False
    if (error := watch.exception()) is not None:
        log.warning("the client's watch failed: the router's answer is read on unwatched", exc_info=error)
        return False
    if not watch.result():
        log.warning("the server sent a message other than http.disconnect: the router's answer is read on unwatched")
    return watch.result()


def answered(response: router_pb2.CompleteResponse, request_id: str) -> JSONResponse:
    """The router's answer as an unstreamed chat completion, with its headers."""
    headers = {
        "x-router-model": response.model,
        **cost_headers(response),
        "x-router-reason": header_safe(response.decision.reason),
        "x-request-id": request_id,
    }
    return JSONResponse(completion_body(response), headers=headers)


def replayed(kept: replays.Kept) -> Response:
    """A kept answer sent again, marked so: a stream's chat events as a stream, one by one, which the legacy and
    Responses routes tell as their own as they told the first's."""
    headers = {**(kept.headers or {}), **REPLAY}
    if kept.stream and kept.body is not None:
        return StreamingResponse(events_of(kept.body), media_type="text/event-stream", headers=headers)
    return Response(kept.body, media_type="application/json", headers=headers)


async def events_of(stream: bytes) -> AsyncIterator[bytes]:
    """A kept chat stream's events: each `data: ...` and its blank line (compact JSON holds no line break)."""
    for event in stream.split(b"\n\n")[:-1]:
        yield event + b"\n\n"


async def kept_whole(
    events: AsyncGenerator[bytes, None], kept_as: Callable[[bytes | None], None], cap: int
) -> AsyncIterator[bytes]:
    """A chat stream's events as sent, handed to `kept_as` once it has ended whole, as its [DONE] goes out (the
    Responses route's stream ends there, closing this one); None, as it ends, for one cut before (its caller gone, an
    error event, the edge's shutdown) or over `cap` bytes (only so many are held)."""
    held: list[bytes] = []
    size = 0
    told = False
    try:
        async with contextlib.aclosing(events):  # closed with this one: its call cancelled at once
            async for event in events:
                size += len(event)
                if size <= cap:
                    held.append(event)
                    if event == DONE:  # the last: the router's answer ended whole, and was charged so
                        kept_as(b"".join(held))
                        told = True
                yield event
    finally:
        if not told:
            kept_as(None)


def duplicate(err: BaseException) -> bool:
    """Whether the router refused the request as a duplicate of its id (DUPLICATE_REQUEST), in flight or ended."""
    return isinstance(err, grpc.RpcError) and ServiceError.from_rpc_error(err).reason == "DUPLICATE_REQUEST"


def duplicate_in_flight(err: BaseException) -> bool:
    """Whether the router refused the request as a duplicate of its id still in flight (DUPLICATE_REQUEST telling a
    hold): another request's, running."""
    if not isinstance(err, grpc.RpcError):
        return False
    refused = ServiceError.from_rpc_error(err)
    return refused.reason == "DUPLICATE_REQUEST" and bool(refused.metadata.get("held_usd"))


def router_told(answer: Response) -> dict[str, str]:
    """An answer's headers of the router's telling (cost, model, request id), as kept to be sent again."""
    return {k: v for k, v in answer.headers.items() if k.startswith("x-")}


def retold(chat: Response, body: dict[str, Any]) -> JSONResponse:
    """An unstreamed chat completion's answer told in another route's body, with its headers (cost, request id)."""
    headers = {k: v for k, v in chat.headers.items() if k.startswith("x-") or k == replays.REPLAYED}
    return JSONResponse(body, headers=headers)


def header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")[:512]


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


ANONYMOUS_TENANT = "default"  # the router's own name for a request without a tenant


class Edge:
    def __init__(self, settings: EdgeSettings, channel: grpc.aio.Channel) -> None:
        self.settings = settings
        self.router = router_pb2_grpc.RouterStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.live_keys = LiveKeys(settings.api_keys, settings.api_keys_file, settings.api_keys_reload_s)
        self.replays = Replays(
            settings.idempotency_replay_s,
            settings.idempotency_max_answer_bytes,
            settings.idempotency_memory_bytes,
            settings.idempotency_tenant_bytes,
            settings.batch_redis_url,
            in_flight_s=settings.request_timeout_s,
            arrival_timeout_s=settings.idempotency_lookup_timeout_s,
        )
        self._answering: dict[str, set[asyncio.Task[JSONResponse]]] = {}  # _keyed's, by request id
        self._keeping: dict[str, set[asyncio.Task[None]]] = {}  # streams' events (or digests) being kept, by request id

    @property
    def keys(self) -> KeyRing:
        """The key ring in force now (EDGE_API_KEYS_FILE is reloaded as it changes): read once per use."""
        return self.live_keys.ring

    @property
    def keyed(self) -> bool:
        """Whether the edge has API keys, as it started: one whose key file lost every key refuses every caller."""
        return self.live_keys.keyed

    def caller(self, request: Request) -> tuple[str, str]:
        """(tenant, api key) from the Authorization header alone; no header chooses the tenant. With no keys
        configured every caller is the one anonymous tenant, sent without a key: a made-up bearer string must
        not open a fresh per-key budget or rate limit. With keys, a missing or unknown key is a 401.
        Two Authorization headers are a 400: which one counts is ambiguous, and a proxy in front that checks or
        logs the other would let one tenant's request be charged to (or seen by) another's key."""
        credentials = request.headers.getlist("authorization")
        if len(credentials) > 1:
            raise ApiError(
                400, "more than one Authorization header", param="authorization", code="ambiguous_credentials"
            )
        if not self.keyed:
            return ANONYMOUS_TENANT, ""
        # The header's bytes read as UTF-8, as the key tool digested the key: read as Starlette reads headers (latin-1),
        # a key past ASCII was another string, and refused for ever. Read before the key is stripped: in latin-1 the
        # bytes \x85 and \xa0 (the last of Cyrillic kha, of 'à') are spaces to str.strip. Bytes no UTF-8 are no key.
        try:
            auth = (credentials[0] if credentials else "").encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(401, "invalid API key", code="invalid_api_key") from None
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key:  # said apart, as OpenAI does: a client that never sent its key is told so, not that it is wrong
            raise ApiError(401, "no API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
        tenant = self.keys.tenant_for(key)
        if tenant is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return tenant, key

    def serves(self, tenant: str, key_id: str) -> bool:
        """Whether this edge would serve the caller a batch was created by (its tenant and key id): a batch of a key
        taken out of the key file (revoked) sends no more lines from here, even one running as the key is."""
        if not self.keyed:
            return tenant == ANONYMOUS_TENANT and key_id == KEYLESS
        return self.keys.serves(tenant, key_id)

    async def chat_completions(self, request: Request) -> Response:
        tenant, key = self.caller(request)
        return await self._chat(request, tenant, key, await self.read_body(request))

    async def completions(self, request: Request) -> Response:
        """OpenAI's legacy completions, served as a chat completion of one user turn."""
        tenant, key = self.caller(request)
        chat = await parse_off_loop(await self.read_body(request), legacy.to_chat)
        try:
            response = await self._chat(request, tenant, key, chat, retold=True)
        except ApiError as error:
            raise legacy.named_as_sent(error) from None
        if isinstance(response, StreamingResponse):
            response.body_iterator = legacy.text_events(response.body_iterator)
            return response
        return retold(response, legacy.text_completion(json.loads(bytes(response.body))))

    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API, stateless: served as the chat completion of its instructions and input."""
        tenant, key = self.caller(request)
        chat, sent = await parse_off_loop(await self.read_body(request), responses.to_chat)
        try:
            # Its instructions come first as one more message than its input items.
            response = await self._chat(request, tenant, key, chat, max_messages=MAX_ROUTED_MESSAGES, retold=True)
        except ApiError as error:
            raise named_as_sent(error, sent.origins) from None
        if isinstance(response, StreamingResponse):
            stream = ResponseStream(sent.echoed)
            response.body_iterator = stream.events(response.body_iterator)
            # Cut by the shutdown, it ends as a failed chat stream does; a replay, no router call, is just cut.
            if replays.REPLAYED not in response.headers:
                request.scope[STREAM_ENDING] = stream.failed
            return response
        return retold(response, responses.response_body(json.loads(bytes(response.body)), sent.echoed))

    async def stored_response(self, request: Request) -> Response:
        """No response is ever stored: every id is unknown (once the caller is known, as on every route)."""
        self.caller(request)
        shown = request.path_params["response_id"][:64]
        raise ApiError(404, f"Response with id {shown!r} not found: the router stores no responses", code="not_found")

    async def _chat(
        self,
        request: Request,
        tenant: str,
        key: str,
        body: bytes,
        max_messages: int = MAX_MESSAGES,
        retold: bool = False,
    ) -> Response:
        """retold: the route tells the chat answer as its own (legacy, Responses), its kept stream too (replays.Kept).
        A keyed stream's chat events are kept for its retry, which its route tells again as it told the first's."""
        sent_key = idempotency.sent_key(request.headers)
        request_id = uuid.uuid4().hex if sent_key is None else idempotency.request_id(tenant, key, sent_key)
        sent = request.scope[BODY_DIGEST]
        parsed, raw = await parse_off_loop(body, functools.partial(parse_request, max_messages=max_messages))
        message = parsed.to_router(raw, tenant, key, request_id)
        self.apply_headers(request, message)
        check_encoded_size(message)
        started = None  # the in-flight marker this request wrote (replays.py), taken back should it fail
        if sent_key is not None:
            arrival = await self.replays.arrive(request_id, sent)
            if arrival.replay is not None:
                return replayed(arrival.replay)
            started = arrival.started
        request.scope[SENT_REQUEST_ID] = request_id  # a shutdown cutting it from here tells its id (shutdown_cut.py)
        timeout = self.settings.request_timeout_s
        if not parsed.stream:
            call = self.router.Complete(message, timeout=timeout)
            if sent_key is not None:
                return await self._keyed(call, request, tenant, request_id, sent, sent_key, started)
            try:
                response = await unless_left(call, call, request, request_id)
            except grpc.RpcError as err:
                raise self.refusal(err, request, request_id, sent_key) from None
            return answered(response, request_id)
        # Said to read a later decision: another model taking over before the first delta is told (first_chunks).
        call = self.router.CompleteStream(message, timeout=timeout, metadata=later_decisions.ANNOUNCED)
        try:
            try:
                decision, pending = await first_chunks(call, request, request_id)
            except BaseException as err:
                await self._failed(request_id, started, err)
                raise
        except grpc.RpcError as err:
            error = self.refusal(err, request, request_id, sent_key)
            # A retry of a stream that ended whole, its events still being kept (on any edge), waits for them.
            keeping = list(self._keeping.get(request_id, ()))
            return await self._kept_meanwhile(error, request, request_id, sent, keeping, started)
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        headers = {
            "x-router-model": decision.model,
            "x-router-reason": header_safe(decision.reason),
            "x-request-id": request_id,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # proxies (nginx ingress) pass each event on at once
        }
        # Cut by the shutdown, it ends with an error event, as _stream's failure does (legacy's passes it on as it is).
        request.scope[STREAM_ENDING] = sse
        stream = self._stream(call, pending, request_id, decision.model, include_usage)
        events: AsyncIterator[bytes] = stream
        if sent_key is not None:  # its marker, there already, tells a retry meanwhile: it runs (another body: a 422)
            kept_as = functools.partial(self._keep_stream, tenant, request_id, sent, started, headers, retold)
            events = kept_whole(stream, kept_as, self.replays.max_answer_bytes)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _keyed(
        self,
        call: Any,
        request: Request,
        tenant: str,
        request_id: str,
        sent: str,
        sent_key: str,
        started: replays.Kept | None,
    ) -> Response:
        """A request sent with an Idempotency-Key, served to its end whatever its caller does: its answer is kept for
        the retry (the SDK's, after its own timeout), which gets it once it is there. The caller has its answer as it
        comes, the keeping after it: a slow store holds no caller up. A retry the router refuses as ended while this
        edge is still keeping the first's answer (charged, not kept yet) waits for it."""
        answer: asyncio.Future[JSONResponse] = asyncio.get_running_loop().create_future()
        serving = asyncio.ensure_future(self._serve_and_keep(call, tenant, request_id, sent, started, answer))
        others = list(self._answering.get(request_id, ()))
        self._answering.setdefault(request_id, set()).add(serving)
        serving.add_done_callback(functools.partial(self._answered, request_id))
        try:
            left_running = functools.partial(self._left_running, request_id, started)
            return await unless_left(answer, call, request, request_id, taken_on=left_running)
        except grpc.RpcError as err:
            error = self.refusal(err, request, request_id, sent_key)
        return await self._kept_meanwhile(error, request, request_id, sent, others, started)

    def _left_running(self, request_id: str, started: replays.Kept | None, answer: asyncio.Future[Any]) -> None:
        """A request sent with an Idempotency-Key whose caller left runs on (_keyed tracks it): its answer, or its
        failure, is no one's to read now. Refused as the duplicate of one ended, no one waits on the marker it wrote
        (_kept_meanwhile): taken back at once."""

        def ended(done: asyncio.Future[Any]) -> None:
            failure = None if done.cancelled() else done.exception()
            ended_first = failure is not None and duplicate(failure) and not duplicate_in_flight(failure)
            if started is not None and ended_first:
                self.replays.release_beside(request_id, started)

        answer.add_done_callback(ended)

    async def _kept_meanwhile(
        self,
        error: ApiError,
        request: Request,
        request_id: str,
        sent: str,
        others: list[asyncio.Task[Any]],
        started: replays.Kept | None,
    ) -> Response:
        """A keyed request the router refused. One refused as ended (no hold told) while the first's answer or stream
        (charged) is still being kept is sent that answer once kept, as a retry after it is; else the refusal. Kept on
        this edge (`others`), the wait is bounded as they are: by the first's call timeout and the store's write
        timeouts. On another edge sharing the store, its marker still there, at most EDGE_IDEMPOTENCY_KEEPING_WAIT_S,
        its reads included: past it the refusal says so, to be retried; so does one whose store answered no read.
        A marker this request wrote as it arrived (`started`) is waited on too: the first, reaching the router before
        it with none of its own, replaces it with its answer as it keeps it (taken back before the wait, the retry
        read nothing kept and was told never to retry). Still there after the wait, it names no request: taken back.
        The wait is watched: a caller that leaves ends it (a 499), nothing served or charged for it, and leaves the
        marker of another edge's first as it is for the next retry (never retired early: the answer may yet land)."""
        if error.code != "idempotency_key_reused" or error.held_usd:
            raise error from None  # its gRPC cause is told in it
        waiting_s = self.settings.idempotency_keeping_wait_s
        kept_by = self._kept_by(request_id, sent, others, waiting_s, started)
        try:
            kept = await unless_left(kept_by, None, request, request_id)
        except replays.Unread as unread:
            raise idempotency.unread(error, unread.waited_s) from None
        finally:
            if started is not None:  # compare-and-delete: an answer kept over it stays
                self.replays.release_beside(request_id, started)
        if kept is not None and kept.body is not None:
            return replayed(kept)
        if kept is not None and kept.started is not None:
            raise idempotency.still_being_kept(error, waiting_s) from None
        raise error from None

    async def _kept_by(
        self,
        request_id: str,
        sent: str,
        others: list[asyncio.Task[Any]],
        waiting_s: float,
        started: replays.Kept | None,
    ) -> replays.Kept | None:
        """What is kept for the request once `others` (this edge's requests of its id) are done and no marker names it
        in flight (at most waiting_s more), its own (`started`) counting as none once waited on. Those others may be
        refused retries alike, and the first served on another edge, still keeping its answer over a marker: read
        once they were done, nothing kept was taken for final, and the retry told never to retry."""
        if others:
            await asyncio.wait(others)  # never cancels them: the answer is kept for the next retry all the same
        return await self.replays.settled(request_id, sent, waiting_s, own=started)

    async def _serve_and_keep(
        self,
        call: Any,
        tenant: str,
        request_id: str,
        sent: str,
        started: replays.Kept | None,
        answer: asyncio.Future[JSONResponse],
    ) -> JSONResponse:
        """The call's answer, set on `answer` as soon as it comes and kept for the retry after; a failure, set on
        `answer` once its marker is taken back (so its retry finds the id free)."""
        try:
            try:
                response = answered(await call, request_id)
            except BaseException as err:
                await self._failed(request_id, started, err)
                raise
        except asyncio.CancelledError:
            call.cancel()  # the edge stopping (close): the router charges what it did
            answer.cancel()
            raise
        except BaseException as err:
            if not answer.done():
                answer.set_exception(err)
            raise
        if not answer.done():
            answer.set_result(response)
        told = router_told(response)
        await self.replays.keep(request_id, sent, bytes(response.body), told, tenant=tenant, started=started)
        return response

    async def _failed(self, request_id: str, started: replays.Kept | None, err: BaseException) -> None:
        """A request that failed takes back the in-flight marker it wrote: the router decides its retry (served when
        the first cost nothing). Not when the router refused it as the duplicate of a request still in flight: the
        marker names that first truly (whose own went unwritten). Nor yet when it refused it as the duplicate of one
        ended: that first may be keeping its answer over the marker, on another edge, which the refused request waits
        for (_kept_meanwhile) before taking the marker back (left, uncounted, it outlived its request by the call's
        timeout and a minute)."""
        if started is not None and not duplicate(err):
            await self.replays.release(request_id, started)

    def _beside(self, request_id: str, keeping: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Keep a stream's digest or events beside it (its failures are the store's, logged and counted there),
        known by its request id until kept: a retry refused meanwhile waits for them (_kept_meanwhile)."""
        task = asyncio.ensure_future(keeping)
        self._keeping.setdefault(request_id, set()).add(task)
        task.add_done_callback(functools.partial(self._kept, request_id))
        return task

    def _kept(self, request_id: str, task: asyncio.Task[None]) -> None:
        keeping = self._keeping.get(request_id, set())
        keeping.discard(task)
        if not keeping:
            self._keeping.pop(request_id, None)

    def _keep_stream(
        self,
        tenant: str,
        request_id: str,
        sent: str,
        started: replays.Kept | None,
        headers: dict[str, str],
        retold: bool,
        events: bytes | None,
    ) -> None:
        """A stream's events kept as it ends whole, else its digest alone, in place of its marker: kept beside the
        stream, never before its first event or its end (a slow store holds neither up). The marker stands until then,
        so a retry refused as ended, on any edge, knows its answer may yet be kept (_kept_meanwhile)."""
        keeping = self.replays.keep(
            request_id, sent, events, headers, tenant=tenant, stream=True, retold=retold, started=started
        )
        self._beside(request_id, keeping)

    def _answered(self, request_id: str, task: asyncio.Task[JSONResponse]) -> None:
        serving = self._answering.get(request_id, set())
        serving.discard(task)
        if not serving:
            self._answering.pop(request_id, None)
        if not task.cancelled():
            task.exception()  # its caller may be gone: a failure is the router's, logged there

    async def close(self) -> None:
        """Answers still being kept for Idempotency-Key retries (sent first, kept after: a stream's digest and events,
        an answer whose caller left, its call awaited) are given EDGE_IDEMPOTENCY_DRAIN_S to land, so that a retry after
        a rolling restart is sent them rather than the router's 409; those left then are cancelled (the router charges
        what their calls did)."""
        pending = self._pending()
        if pending:
            log.info("waiting for Idempotency-Key answers being kept", extra={"pending": len(pending)})
            await asyncio.wait(pending, timeout=self.settings.idempotency_drain_s)
        pending = self._pending()  # some may have begun another (a stream's events, after its digest)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.replays.close()

    def _pending(self) -> list[asyncio.Future[Any]]:
        serving: list[asyncio.Future[Any]] = [task for tasks in self._answering.values() for task in tasks]
        keeping = [task for tasks in self._keeping.values() for task in tasks]
        return [task for task in [*serving, *keeping] if not task.done()]

    def refusal(self, err: grpc.RpcError, request: Request, request_id: str, sent_key: str | None) -> ApiError:
        """The router's refusal of a completion, as the caller sent it: its headers named, a duplicate of a request
        sent with an Idempotency-Key told as the key's reuse."""
        error = router_headers.named_as_sent(api_error(err, request_id, charging=True), request.headers)
        return error if sent_key is None else idempotency.reused(error)

    async def _stream(
        self, call: Any, pending: Any, request_id: str, model: str, include_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        created = int(time.time())
        # An answer that is only tool calls has null content, as unstreamed: OpenAI's first chunk says so. So does
        # one that opens with a refusal, whose first chunk has an empty refusal instead, as OpenAI's.
        kind = None if pending is grpc.aio.EOF else pending.WhichOneof("kind")
        only_tools = kind == "final" and pending.final.tool_calls_json
        refusing = kind == "refusal_delta"
        try:
            first = {"role": "assistant", "content": None if only_tools or refusing else "", "refusal": None}
            if refusing:
                first["refusal"] = ""
            yield sse(chunk_body(request_id, created, model, first))
            while True:
                chunk = pending if pending is not None else await call.read()
                pending = None
                if chunk is grpc.aio.EOF:
                    break
                if chunk.WhichOneof("kind") == "delta":
                    yield sse(chunk_body(request_id, created, model, {"content": chunk.delta}))
                elif chunk.WhichOneof("kind") == "refusal_delta":
                    yield sse(chunk_body(request_id, created, model, {"refusal": chunk.refusal_delta}))
                elif chunk.WhichOneof("kind") == "final":
                    final = chunk.final
                    if final.tool_calls_json:
                        yield sse(chunk_body(request_id, created, final.model, tool_calls_delta(final)))
                    finish = chunk_body(request_id, created, final.model, {}, final.finish_reason or "stop")
                    if final.logprobs_json:  # the whole answer's, in its last chunk: SDKs join them across chunks
                        finish["choices"][0]["logprobs"] = logprobs(final)
                    yield sse(finish)
                    if include_usage:
                        tail = chunk_body(request_id, created, final.model, {})
                        tail.update(choices=[], usage=usage_body(final), x_router=router_extension(final))
                        yield sse(tail)
            yield DONE
        except grpc.RpcError as err:
            # Headers are gone: report the failure in the stream, as OpenAI does, and end it; with what it was
            # charged (what reached the caller), as x-router-cost-usd would have said, or that its charge is pending.
            yield sse(api_error(err, request_id, charging=True).body())
        finally:
            call.cancel()  # ended, failed or the caller left: stop the work downstream

    def apply_headers(self, request: Request, message: router_pb2.CompleteRequest) -> None:
        """x-router-* headers set the routing limits where a client cannot add body fields."""
        router_headers.apply(request.headers, message)

    async def read_body(self, request: Request) -> bytes:
        body = await read_limited(request, self.settings.max_body_bytes)
        # As sent, with the x-router-* headers that change its routing: an Idempotency-Key's retry must repeat them.
        request.scope[BODY_DIGEST] = replays.digest(request.url.path, body, router_headers.routing(request.headers))
        return body

    async def models(self, request: Request) -> Response:
        self.caller(request)
        try:
            reply = await self.router.ListModels(common_pb2.ListModelsRequest(), timeout=10)
        except grpc.RpcError as err:
            raise api_error(err, uuid.uuid4().hex) from None
        body = models_body(list(reply.models))
        if "model" in request.path_params:
            entry = next((m for m in body["data"] if m["id"] == request.path_params["model"]), None)
            if entry is None:
                shown = request.path_params["model"][:MAX_QUOTED_MODEL]  # the caller's: tens of KB in a URL
                raise ApiError(404, f"model {shown!r} does not exist", code="model_not_found")
            return JSONResponse(entry)
        return JSONResponse(body)

    async def healthz(self, request: Request) -> Response:
        """Liveness: the process answers. Whether it can serve is /readyz."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Readiness: the router answers its gRPC health check as serving (not while it drains)."""
        check = health_pb2.HealthCheckRequest(service=ROUTER_SERVICE)
        try:
            reply = await self.health.Check(check, timeout=self.settings.readiness_timeout_s)  # type: ignore[attr-defined]  # stubs list no methods
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            serving = False
        if serving:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "router": "unavailable"}, status_code=503)


class Observe:
    """ASGI middleware: metrics per route and status, one access-log line per request."""

    def __init__(self, app: ASGIApp, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, ended = time.perf_counter(), 500, False
        route = scope["path"] if scope["path"] in ROUTES else "other"
        request_id = model = ""
        inflight = INFLIGHT.labels("edge")

        def end() -> None:
            """The request counted and logged, once: as its answer's last part goes out, before it is sent (a caller
            reading the metrics after its answer finds its request there), or as the app returns without one."""
            nonlocal ended
            if ended:
                return
            ended = True
            inflight.dec()
            # What the caller got, when the app's answer never went out: the protocol's refusal of a body too slow
            # (408), or nothing, its caller gone first (499).
            told = scope.get(CALLER_STATUS, status)
            HTTP_REQUESTS.labels(route, str(told)).inc()
            if self.access_log is not None:
                path = scope["path"][:MAX_LOGGED_PATH]
                elapsed = time.perf_counter() - start
                self.access_log.record((time.time(), scope["method"], path, told, elapsed, request_id, model))

        async def observed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, request_id, model
            if message["type"] == "http.response.start":
                status = message["status"]
                HTTP_SECONDS.labels(route).observe(time.perf_counter() - start)
                if self.access_log is not None:
                    for name, value in message.get("headers", ()):
                        if name == b"x-request-id":
                            request_id = value.decode("latin-1")
                        elif name == b"x-router-model":
                            model = value.decode("latin-1")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                end()
            await send(message)

        inflight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            end()


class EncodedSlashes:
    """ASGI middleware: a path with a slash sent encoded (%2F) where its route has a separator
    (`/v1%2Fchat%2Fcompletions`) is a 404, as any path no route has. uvicorn decodes the path before routing, so it was
    served as the route it spells; an encoded slash is data, not a separator (RFC 3986, 2.2): only a parameter that
    takes slashes (a model id, which OpenAI's SDKs send encoded) may hold one."""

    def __init__(self, app: ASGIApp, open_prefixes: list[str]) -> None:
        self.app = app
        # The segments before each parameter that takes slashes: "/v1/models/{model:path}" has "", "v1" and "models".
        self.open = [tuple(prefix.rstrip("/").split("/")) for prefix in open_prefixes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = (scope.get("raw_path") or b"") if scope["type"] == "http" else b""
        if b"%2f" in raw.lower() and not self.within_a_parameter(raw):
            sent = raw.decode("latin-1")[:MAX_LOGGED_PATH]
            refusal = error_response(ApiError(404, f"no route {scope['method']} {sent}", code="not_found"))
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def within_a_parameter(self, raw_path: bytes) -> bool:
        """Whether the path's first encoded slash, and so every one after it, is within a parameter that takes them."""
        segments = [unquote(segment.decode("latin-1")) for segment in raw_path.split(b"/")]
        first = next((i for i, segment in enumerate(segments) if "/" in segment), len(segments))
        return any(len(prefix) <= first and tuple(segments[: len(prefix)]) == prefix for prefix in self.open)


MAX_LOGGED_PATH = 256  # a caller chooses the path: its length in the log and in a 404 is bounded
MAX_QUOTED_MODEL = 128  # as the router quotes an unknown model (services/router/routing.py)
ROUTES = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/v1/router/stats",
    "/v1/router/budgets",
    "/v1/router/key-moves",
    "/v1/router/decide",
    "/v1/files",
    "/v1/batches",
}


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


# Routes whose request the router admits and charges: a failure of the edge's own may come after the answer was
# generated and charged.
CHARGING_ROUTES = {"/v1/chat/completions", "/v1/completions", "/v1/responses"}


async def _unexpected(request: Request, exc: Exception) -> Response:
    """An error of the edge's own (a bug): a 500 in OpenAI's body, its detail only in the log. On a completion route it
    says x-should-retry: false: the request may have been admitted, generated and charged before the edge failed, and
    OpenAI's SDKs retry a 500 twice on their own, each retry a new request generated and charged again."""
    log.exception("unhandled error", exc_info=exc)
    retryable = request.url.path not in CHARGING_ROUTES
    return error_response(ApiError(500, "internal error", code="internal_error", retryable=retryable))


async def _batch_store_failed(request: Request, exc: Exception) -> Response:
    """The edge's only Redis is the batch store: one out of reach or refusing the edge (a cluster no node of which
    answers, an ACL change, a failover) is a 503 to retry, as the router out of reach is; never a crash's 500. Full
    (it never evicts: noeviction), it refuses writes, and so the upload or batch, rather than drop a batch or file kept
    there: a 507. Neither is the caller's fault."""
    failure = store_failure(exc)
    if failure is None:
        return await _unexpected(request, exc)
    path = request.url.path[:MAX_LOGGED_PATH]
    log.warning("batch store %s: %s refused", failure.value, path, extra={"error": str(exc)[:200]})
    if failure is StoreFailure.FULL:
        message = "batch storage is full: delete files no longer needed, or retry once older files expire"
        return error_response(ApiError(507, message, code="storage_full"))
    message = "batch storage is temporarily unavailable: retry shortly"
    return error_response(ApiError(503, message, code="storage_unavailable", retry_after="1"))


async def _not_found(request: Request, exc: Exception) -> Response:
    path = request.url.path[:MAX_LOGGED_PATH]  # the caller's: tens of KB, echoed whole
    message = f"no route {request.method} {path}"
    if _a_route_under_v1(request):  # an SDK's base URL without its /v1, the commonest first mistake
        message += ": the API is under /v1 (an SDK's base URL ends in /v1)"
    return error_response(ApiError(404, message, code="not_found"))


def _a_route_under_v1(request: Request) -> bool:
    if request.url.path.startswith("/v1/"):
        return False
    under = {**request.scope, "path": "/v1" + request.url.path}
    return any(route.matches(under)[0] is not Match.NONE for route in request.app.routes)


async def _method(request: Request, exc: Exception) -> Response:
    """With Allow, which a 405 must have (RFC 9110, 15.5.6): the methods of every route of the path (Starlette's
    names only the first route's, and a path's methods may be served by several)."""
    response = error_response(ApiError(405, f"method {request.method} not allowed", code="method_not_allowed"))
    routes = [route for route in request.app.router.routes if isinstance(route, Route)]
    taken = {
        method for route in routes if route.matches(request.scope)[0] != Match.NONE for method in route.methods or ()
    }
    response.headers["allow"] = ", ".join(sorted(taken))
    return response


def create_app(settings: EdgeSettings, channel: grpc.aio.Channel) -> Starlette:
    """The app over a channel to the router (its Router service and its gRPC health). Batches left unfinished
    by a previous edge resume at start; at shutdown the lines in flight finish first."""
    edge = Edge(settings, channel)
    operator = OperatorRoutes(edge, operator_pb2_grpc.OperatorStub(channel), edge.router, api_error)
    store = open_store(settings.batch_redis_url)
    runner = Runner(
        store,
        edge.router,
        functools.partial(api_error, charging=True),  # a line is a completion: one past its deadline is charged
        edge.serves,
        settings.batch_concurrency,
        settings.request_timeout_s,
        settings.batch_retention_s,
        settings.batch_poll_s,
        settings.batch_max_running,
        settings.batch_max_file_bytes,
        settings.files_tenant_bytes,
        # With tenants, one runs at most half the batches (at least one), as it holds at most half the upload places.
        max(1, settings.batch_max_running // 2) if edge.keyed else settings.batch_max_running,
    )
    batches = BatchApi(
        store,
        runner,
        edge.caller,
        settings.batch_max_file_bytes,
        settings.batch_retention_s,
        settings.batch_window_s,
        settings.batch_max_concurrent_uploads,
        # With tenants, one holds at most half the places (at least one): its stalled or slow transfers leave the
        # others room. Without keys there is one tenant, which may have them all.
        max(1, settings.batch_max_concurrent_uploads // 2) if edge.keyed else settings.batch_max_concurrent_uploads,
        settings.max_body_bytes,
        settings.files_tenant_bytes,
    )
    access_log = AccessLog.open(settings.access_log)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        edge.live_keys.start()
        await runner.resume()
        try:
            yield
        finally:
            await batches.close()  # a batch created meanwhile is left to the runner, which stops next
            await runner.close()
            await store.close()
            await edge.close()
            await edge.live_keys.close()
            if access_log is not None:
                access_log.close()

    routes = [
        *operator.routes(),
        Route("/v1/chat/completions", edge.chat_completions, methods=["POST"]),
        Route("/v1/completions", edge.completions, methods=["POST"]),
        Route("/v1/responses", edge.responses, methods=["POST"]),
        Route("/v1/responses/{response_id:path}", edge.stored_response, methods=["GET", "DELETE", "POST"]),
        Route("/v1/models", edge.models, methods=["GET"]),
        Route("/v1/models/{model:path}", edge.models, methods=["GET"]),
        Route("/healthz", edge.healthz, methods=["GET"]),
        Route("/readyz", edge.readyz, methods=["GET"]),
        *batches.routes(),
    ]
    handlers = {
        ApiError: _api_error,
        RedisError: _batch_store_failed,
        RedisClusterException: _batch_store_failed,
        404: _not_found,
        405: _method,
        Exception: _unexpected,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.stopping = runner.stop  # as the server's shutdown begins (__main__.EdgeServer), before requests drain
    # A path with a trailing slash is no route (a 404 in OpenAI's body): Starlette redirected it (307, no body) to a URL
    # built from the Host header, which behind a proxy names the edge's internal address, and clients that follow a
    # 307 send the body again there.
    app.router.redirect_slashes = False
    open_prefixes = [
        route.path.split("{")[0] for route in routes if isinstance(route, Route) and ":path}" in route.path
    ]
    app.add_middleware(EncodedSlashes, open_prefixes=open_prefixes)
    app.add_middleware(ContentCoding)
    app.add_middleware(ShutdownCut, respond=error_response)  # within Observe: the access log has its 503
    app.add_middleware(Observe, access_log=access_log)  # added last: outermost, it also sees the others' refusals
    return app
