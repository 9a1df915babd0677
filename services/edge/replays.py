"""The answers of requests sent with an Idempotency-Key, kept to be sent again (as Stripe's API does): a retry of a
finished unstreamed request gets its first answer back, marked `Idempotent-Replayed: true`, rather than the router's
409; one whose body differs from the first's is a 422, never another request's answer.

Each is kept under the request id the key derives (idempotency.request_id: tenant, API key and value), with a digest
of the route and the body byte for byte (what an SDK's own retry sends again), for EDGE_IDEMPOTENCY_REPLAY_S. An answer
over EDGE_IDEMPOTENCY_MAX_ANSWER_BYTES, and a stream's (its events are not kept), is kept as its digest alone: its
retry is the router's 409 as before, a different body the 422. Only answers are kept: a failure stores nothing, and
its retry reaches the router, which serves it when the first cost nothing (its id released) or refuses it.

Where: the edge's Redis (EDGE_BATCH_REDIS_URL), which its replicas share, when set; else this process's memory,
bounded by EDGE_IDEMPOTENCY_MEMORY_BYTES (oldest dropped first), so a retry reaching another replica, or one after
a restart, gets the 409. In the Redis, which has no bound of its own (noeviction: it holds every tenant's batches),
each tenant keeps at most EDGE_IDEMPOTENCY_TENANT_BYTES of answers per replay window (so at most twice that at once):
past it an answer is kept as its digest. A response cache hit costs nothing, so unbounded, one tenant resending a
long answer's request under new keys filled the store, for free, until every tenant's batch creation failed. A store
that fails is passed over (logged): the router still serves and charges the request id once, so a replay missed is a
409, never a second charge."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from redis.exceptions import RedisClusterException, RedisError

from llmrouter.json_depth import loads_stored
from llmrouter.redis_connect import connect
from services.edge.openai_api import ApiError

log = logging.getLogger("llmrouter.edge")

PREFIX = "llmrouter:edge:idempotency:"
KEPT_BYTES = "llmrouter:edge:idempotency-bytes:"  # + tenant and window: the bytes of answers the tenant kept in it
REPLAYED = "idempotent-replayed"  # the header a replayed answer carries, as Stripe's
MISMATCH = "idempotency_key_mismatch"


def digest(route: str, body: bytes) -> str:
    """What a request sent with an Idempotency-Key must repeat to be replayed: its route and its body, byte for byte."""
    return hashlib.sha256(route.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class Kept:
    """A finished request's digest, and its answer (body and headers) when it is kept to be sent again."""

    digest: str
    body: bytes | None = None
    headers: dict[str, str] | None = None

    def size(self) -> int:
        """What the process holds for it, its objects included (a stream's, a digest alone, is mostly those)."""
        held = sys.getsizeof(self) + sys.getsizeof(self.digest) + (sys.getsizeof(self.body) if self.body else 0)
        if self.headers is not None:
            held += sys.getsizeof(self.headers)
            held += sum(sys.getsizeof(name) + sys.getsizeof(value) for name, value in self.headers.items())
        return held

    def dumps(self) -> str:
        body = None if self.body is None else self.body.decode()  # an answer is JSON: UTF-8 text
        return json.dumps({"digest": self.digest, "body": body, "headers": self.headers})

    @classmethod
    def loads(cls, text: str | bytes) -> Kept | None:
        """The kept entry `dumps` wrote; None for a value no edge wrote (hand-edited, cut short, another program's)."""
        try:
            kept = loads_stored(text)
            digest, body, headers = kept["digest"], kept.get("body"), kept.get("headers")
            readable = isinstance(digest, str) and isinstance(body, str | None)
            if not readable or not (headers is None or _text_pairs(headers)):
                return None
            return cls(digest, None if body is None else body.encode(), headers)
        except (ValueError, TypeError, KeyError):  # TooDeep and UnicodeError (a lone surrogate) are ValueErrors
            return None


def _text_pairs(headers: Any) -> bool:
    return isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())


class Replays:
    """Where the answers are kept: in memory (bounded) or in a Redis (by its URL)."""

    def __init__(
        self, ttl_s: int, max_answer_bytes: int, memory_bytes: int, tenant_bytes: int, url: str | SecretStr | None
    ) -> None:
        self.ttl_s = ttl_s
        self.max_answer_bytes = max_answer_bytes
        self.memory_bytes = memory_bytes
        self.tenant_bytes = tenant_bytes
        self._redis: Any = connect(url, socket_connect_timeout=2, socket_timeout=5) if url else None
        # request id -> (expiry, kept, what the entry holds: kept_size)
        self._memory: OrderedDict[str, tuple[float, Kept, int]] = OrderedDict()
        self._memory_used = 0

    async def lookup(self, request_id: str, sent: str) -> Kept | None:
        """The kept answer to send again for request id `request_id` sent with digest `sent`: None when none is kept
        (or only a digest: the router's 409 tells it); a 422 when the request kept had another digest."""
        if self.ttl_s == 0:
            return None
        kept = await self._get(request_id)
        if kept is None:
            return None
        if kept.digest != sent:
            raise ApiError(
                422,
                "this Idempotency-Key was used before by this API key with another request (its route or body "
                "differs): the request was not served; send a new Idempotency-Key for a new request",
                param="Idempotency-Key",
                code=MISMATCH,
            )
        return kept if kept.body is not None else None

    async def keep(
        self, request_id: str, sent: str, body: bytes | None, headers: dict[str, str] | None, *, tenant: str
    ) -> None:
        """Keep a finished request's digest, and its answer when within max_answer_bytes and, in the Redis, the
        tenant's tenant_bytes (None: a stream's, kept as its digest alone)."""
        if self.ttl_s == 0:
            return
        if body is not None and len(body) > self.max_answer_bytes:
            body, headers = None, None
        if self._redis is None:
            self._keep_in_memory(request_id, Kept(sent, body, headers))
            return
        try:
            if body is not None and not await self._within_tenant_bytes(tenant, len(body)):
                body, headers = None, None
            await self._redis.set(PREFIX + request_id, Kept(sent, body, headers).dumps(), ex=self.ttl_s)
        except (RedisError, RedisClusterException, OSError) as err:
            log.warning("idempotency answer not kept", extra={"request_id": request_id, "error": repr(err)[:200]})

    async def _within_tenant_bytes(self, tenant: str, size: int) -> bool:
        """Whether an answer of `size` bytes is within what `tenant` may keep in this replay window, counted with it.
        Answers live ttl_s, so those kept at once are of this window and the last: at most twice tenant_bytes."""
        counter = f"{KEPT_BYTES}{tenant}:{int(time.time()) // self.ttl_s}"
        async with self._redis.pipeline(transaction=False) as pipe:  # one key: its cluster node alone
            pipe.incrby(counter, size)
            pipe.expire(counter, 2 * self.ttl_s)
            total, _ = await pipe.execute()
        if total > self.tenant_bytes:
            log.warning(
                "idempotency answer kept as its digest: its tenant's bytes kept are spent", extra={"tenant": tenant}
            )
            return False
        return True

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _get(self, request_id: str) -> Kept | None:
        if self._redis is None:
            entry = self._memory.get(request_id)
            return entry[1] if entry is not None and entry[0] > time.monotonic() else None
        try:
            text = await self._redis.get(PREFIX + request_id)
        except (RedisError, RedisClusterException, OSError) as err:
            log.warning("idempotency answer not read", extra={"request_id": request_id, "error": repr(err)[:200]})
            return None
        kept = None if text is None else Kept.loads(text)
        if text is not None and kept is None:
            log.warning("idempotency answer unreadable, passed over", extra={"request_id": request_id})
        return kept

    def _keep_in_memory(self, request_id: str, kept: Kept) -> None:
        now = time.monotonic()
        old = self._memory.pop(request_id, None)
        if old is not None:
            self._memory_used -= old[2]
        size = kept_size(request_id, kept)
        self._memory[request_id] = (now + self.ttl_s, kept, size)
        self._memory_used += size
        # Oldest first (all share one TTL, so also the first to expire): those expired, then any past the bound.
        while self._memory and (self._memory_used > self.memory_bytes or next(iter(self._memory.values()))[0] <= now):
            _, (_, _, dropped) = self._memory.popitem(last=False)
            self._memory_used -= dropped


# An entry's own objects beside its Kept: its (expiry, kept, size) tuple, the float and int, and its node and slot in
# the OrderedDict (measured with tracemalloc: tests/edge/test_idempotency_replays.py).
ENTRY_OVERHEAD = 256


def kept_size(request_id: str, kept: Kept) -> int:
    """What one kept entry holds in memory, counted against EDGE_IDEMPOTENCY_MEMORY_BYTES."""
    return sys.getsizeof(request_id) + kept.size() + ENTRY_OVERHEAD
