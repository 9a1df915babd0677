"""The response cache: an identical request from the same tenant is answered again for free."""

from __future__ import annotations

import hashlib
import logging
import time

from llmrouter.v1 import router_pb2
from services.router import metrics
from services.router.routed import Routed
from services.router.store import Store

log = logging.getLogger("llmrouter.router")


class ResponseCache:
    def __init__(self, store: Store, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s  # 0 disables

    async def lookup(self, routed: Routed) -> router_pb2.CompleteResponse | None:
        """The cached answer, as this request's free response; None on a miss."""
        if not self.ttl_s:
            return None
        raw = await self.store.cache_get(_key(routed))
        metrics.CACHE.labels("hit" if raw else "miss").inc()
        if raw is None:
            return None
        response = router_pb2.CompleteResponse.FromString(raw)
        response.id, response.cache_hit, response.cost_usd = routed.request_id, True, "0"
        response.latency_ms = int((time.perf_counter() - routed.started) * 1000)
        response.decision.CopyFrom(routed.decision)
        response.decision.reason = "served from the response cache"
        return response

    async def put(self, routed: Routed, response: router_pb2.CompleteResponse) -> None:
        """Best effort: the answer is served and charged already; failing the call now would bill a retry."""
        if not (self.ttl_s and (response.content or response.tool_calls_json)):
            return
        try:
            await self.store.cache_set(_key(routed), response.SerializeToString(), self.ttl_s)
        except Exception:
            log.warning("response cache unavailable; answer served uncached", exc_info=True)


def _key(routed: Routed) -> str:
    request = router_pb2.CompleteRequest()
    request.CopyFrom(routed.request)
    request.api_key, request.request_id, request.session_id = "", "", ""
    request.tenant = routed.account.tenant  # tenants never see each other's answers
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
