"""The response cache: an identical request from the same API key (or, where its tenant's cache scope is `tenant`,
any key of the tenant) is answered again for free. It lives apart from the money: on its own Redis
(ROUTER_CACHE_REDIS_URL, which may evict freely) or in process. Best effort: a cache that fails is bypassed, never
failing a request."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from google.protobuf.message import DecodeError
from pydantic import SecretStr

from llmrouter.redis_connect import connect
from llmrouter.v1 import router_pb2
from services.router import metrics
from services.router.admission import output_caps
from services.router.routed import Routed, Served
from services.router.settings import CacheScope, tenant_wide
from services.router.verifying import ClassifierVerifier

log = logging.getLogger("llmrouter.router")


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The cached value, or None when absent or the cache cannot be reached."""

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store a value; a cache that cannot be reached drops it."""

    async def close(self) -> None: ...


class RedisCache:
    def __init__(self, url: str | SecretStr) -> None:
        self.redis = connect(url, max_connections=32, pool_timeout=1, socket_connect_timeout=1, socket_timeout=1)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.redis.get(f"llmrouter:cache:{key}")
        except Exception:
            _down("read")
            return None
        metrics.STORE_UP.labels("cache").set(1)
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self.redis.set(f"llmrouter:cache:{key}", value, ex=ttl_s)
        except Exception:
            _down("write")
            return
        metrics.STORE_UP.labels("cache").set(1)

    async def close(self) -> None:
        await self.redis.aclose()


def _down(what: str) -> None:
    metrics.STORE_UP.labels("cache").set(0)
    log.warning(f"response cache {what} failed; bypassed", exc_info=True)


class MemoryCache:
    """Bounded in entries and in bytes: an answer may be megabytes (a long one with its log-probabilities), so
    10,000 of them could take the router's memory; past either bound the expired go, then the oldest insertions."""

    MAX_ENTRIES = 10_000
    MAX_BYTES = 128 * 1024 * 1024

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, bytes]] = {}
        self.bytes = 0  # of the values held
        metrics.STORE_UP.labels("cache").set(1)

    async def get(self, key: str) -> bytes | None:
        expires, value = self.entries.get(key, (0.0, b""))
        return value if expires > time.monotonic() else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if len(value) > self.MAX_BYTES:
            return
        self._drop(key)
        now = time.monotonic()
        if len(self.entries) >= self.MAX_ENTRIES or self.bytes + len(value) > self.MAX_BYTES:
            for expired in [k for k, (expires, _) in self.entries.items() if expires <= now]:
                self._drop(expired)
        while self.entries and (len(self.entries) >= self.MAX_ENTRIES or self.bytes + len(value) > self.MAX_BYTES):
            self._drop(next(iter(self.entries)))  # the oldest insertion
        self.entries[key] = (now + ttl_s, value)
        self.bytes += len(value)

    def _drop(self, key: str) -> None:
        if (entry := self.entries.pop(key, None)) is not None:
            self.bytes -= len(entry[1])

    async def close(self) -> None:
        self.entries.clear()
        self.bytes = 0


def open_cache(redis_url: str | SecretStr | None) -> Cache:
    return RedisCache(redis_url) if redis_url else MemoryCache()


class ResponseCache:
    def __init__(
        self,
        backend: Cache,
        ttl_s: int,
        scope: CacheScope,
        tenant_scope: Mapping[str, CacheScope],
        verifier: ClassifierVerifier | None = None,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s  # 0 disables
        self.scope, self.tenant_scope = scope, tenant_scope  # RouterSettings.cache_scope, .tenant_cache_scope
        self.verifier = verifier  # the router's, whose settings judge the answers it keeps (None: asks none)

    async def lookup(self, routed: Routed, streamed: bool = False) -> router_pb2.CompleteResponse | None:
        """The cached answer, as this request's free response; None on a miss. A plain stream (`streamed`) may be
        served what a unary call or a buffered stream kept, or else what another plain stream kept apart; they may not
        be served what a plain stream kept apart (put's `streamed`: one that could have escalated, which a plain
        stream never does, nor asks for what escalation reads, log-probabilities and the verifier)."""
        if not self.ttl_s:
            return None
        raw = await self.backend.get(self._key(routed))
        if raw is None and streamed:
            raw = await self.backend.get(self._key(routed, streamed=True))
        try:
            response = None if raw is None else router_pb2.CompleteResponse.FromString(raw)
        except DecodeError:  # not an answer this router wrote (a corrupted or foreign entry): a miss, not a failure
            log.warning("unreadable response cache entry ignored", extra={"request_id": routed.request_id})
            response = None
        metrics.CACHE.labels("miss" if response is None else "hit").inc()
        if response is None:
            return None
        response.id, response.cache_hit, response.cost_usd = routed.request_id, True, "0"
        response.cost_pending = False  # the kept answer's own charge was unread; this request's, nothing, is known
        response.latency_ms = int((time.perf_counter() - routed.started) * 1000)
        response.decision.CopyFrom(routed.decision)
        response.decision.reason = "served from the response cache"
        return response

    async def put(
        self, routed: Routed, served: Served, response: router_pb2.CompleteResponse, streamed: bool = False
    ) -> None:
        """Best effort (the backend never fails a request): the answer is served and charged already. One the money
        left cut short is not kept: the budget's remainder, or what an escalated answer had left after the weak one was
        paid, is no part of the key, so an identical request would be served the cut answer whatever its own budget,
        its decision saying nothing of the cap. Nor one owed to the request's circumstances (Served.circumstance: a weak
        answer whose escalation was not made but for the request's own max_cost_usd, a weaker fallback's): an
        identical request would be served it as it was.
        With `streamed`, kept apart for plain streams (lookup)."""
        answered = response.content or response.refusal or response.tool_calls_json  # a refusal replays as one
        kept = answered and not served.circumstance and not _cut_by_money_left(routed, served, response)
        if self.ttl_s and kept:
            await self.backend.set(self._key(routed, streamed), _as_kept(response).SerializeToString(), self.ttl_s)

    def _key(self, routed: Routed, streamed: bool = False) -> str:
        request = router_pb2.CompleteRequest()
        request.CopyFrom(routed.request)
        request.api_key, request.request_id, request.session_id = "", "", ""
        request.buffer_stream = False  # a buffered stream is served as a unary call is
        # The mode it is served in, the router's default when it names none: routers of other defaults sharing the
        # store served each other's answers (a weak one kept with escalation off, to a request its router escalates).
        request.escalation = routed.escalation
        # And, where the mode asks the verifier, the settings of this router's that decide whether it keeps a weak
        # answer: routers of other ones sharing the store served each other's answers (one kept under a lax threshold,
        # to a router whose stricter one escalates it). Not for a plain stream's own entries: it asks no verifier.
        if not streamed and (judged := self._judged_by(routed)):
            request.escalation += f" verifier:{judged}"
        request.tenant = routed.account.tenant  # tenants never see each other's answers
        # Nor, scoped by key, one key its colleagues': the key id as admission derived it (never empty: `anonymous`
        # for a request without a key), so a key's chat requests and its batch lines (sent by id) share entries.
        shared = tenant_wide(self.scope, self.tenant_scope, routed.account.tenant)
        request.api_key_id = "" if shared else routed.account.key
        key = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        return f"{key}:stream" if streamed else key

    def _judged_by(self, routed: Routed) -> str:
        """The fingerprint of the verifier settings judging the request's answer ('' when none does)."""
        return "" if self.verifier is None else self.verifier.fingerprint(routed.escalation, routed.verifier_threshold)


def _as_kept(response: router_pb2.CompleteResponse) -> router_pb2.CompleteResponse:
    """The answer as kept for identical requests, without this request's unread charge (cost_pending): a router of the
    version before serving it from the shared cache keeps the field it does not know, and its hit, costing nothing,
    was told pending."""
    if not response.cost_pending:
        return response
    kept = router_pb2.CompleteResponse()
    kept.CopyFrom(response)
    kept.cost_pending = False
    return kept


def _cut_by_money_left(routed: Routed, served: Served, response: router_pb2.CompleteResponse) -> bool:
    """Whether the answer ran into a max_tokens lowered below the request's own caps to fit the money left: by
    admission, to fit a budget's remainder, or by escalation, to fit what the hold (the budgets, max_cost_usd) had
    left after the weak answer. max_cost_usd's cap on one generation is the request's own (part of the key)."""
    if response.finish_reason != "length":
        return False
    if served.room_capped:
        return True
    own = output_caps(routed.plan, routed.limits, router_pb2.Decision())  # what the request alone allows
    return any(routed.max_tokens[name] < cap for name, cap in own.items())
