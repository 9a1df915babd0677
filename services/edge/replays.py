"""The answers of requests sent with an Idempotency-Key, kept to be sent again (as Stripe's API does): a retry of a
finished request gets its first answer back (a stream, its events), marked `Idempotent-Replayed: true`, rather than
the router's 409; one whose body differs from the first's is a 422, never another request's answer.

Each is kept under the request id the key derives (idempotency.request_id: tenant, API key and value), with a digest
of the route and the body byte for byte (what an SDK's own retry sends again) and, kept beside it (`routing`: an edge
before them compares the first alone), of its x-router-* headers, for EDGE_IDEMPOTENCY_REPLAY_S. An answer
over EDGE_IDEMPOTENCY_MAX_ANSWER_BYTES, or a stream cut before its end, is kept as its digest alone: its retry is the
router's 409 as before, a different body the 422. Only answers are kept: a failure stores nothing, and its retry
reaches the router, which serves it when the first cost nothing (its id released) or refuses it. As the legacy and
Responses routes keep an unstreamed answer as the chat completion they told it from, they keep a stream as its chat
events, told as their own again when sent again (the telling is a function of the events and the request). A stream's
events are kept under `events`, not `body`, and a legacy or Responses stream's under `retold_events`: an edge before
them reads the entry as a digest alone (the 409), never sending events as a JSON answer nor a chat stream's on another
route.

While the first runs, its digest is kept too, as a marker naming it in flight (for the call's timeout and a minute,
EDGE_REQUEST_TIMEOUT_S): a request with the same key and another body, on this edge or another sharing its Redis, is
the same 422 at once, never served. A first that fails takes its marker back (the router decides its retry: served when
it cost nothing, the 409 when it did), unless the router refused it as the duplicate of one still in flight (the marker
names that first, whose own went unwritten); so does one that ends with nothing kept (past its tenant's bytes): a
marker lasts its request's life, uncounted (Replays.keep): a stream's until its end, replaced then by its events or
its digest alone. A retry the router refuses as ended while the marker stands, on another edge sharing the Redis,
knows the first's answer may still be being written: it waits for what replaces the marker (Replays.settled), at most
EDGE_IDEMPOTENCY_KEEPING_WAIT_S, its reads of the store included, and is sent the answer, rather than the 409; the
marker still there then gives way to its digest alone (its writer gone, or its write failed), so that retries are not
each held until it expires. A store that answered no read within the wait is Unread: the 409 says to retry.

Where: the edge's Redis (EDGE_BATCH_REDIS_URL), which its replicas share, when set; else this process's memory,
bounded by EDGE_IDEMPOTENCY_MEMORY_BYTES (oldest dropped first), so a retry reaching another replica, or one after
a restart, gets the 409. Each tenant's entries take at most EDGE_IDEMPOTENCY_TENANT_BYTES per replay window (so at
most twice that at once), counted as stored in the Redis (key and JSON text), as held in memory (there at most a
quarter of EDGE_IDEMPOTENCY_MEMORY_BYTES, so that the other tenants keep half of it): past it an answer is
kept as its digest, and past that nothing is (its retry is the router's 409, as one of another body). A response cache
hit costs nothing, so unbounded, one tenant resending a request under new keys filled the Redis, which has no bound of
its own (noeviction: it holds every tenant's batches), for free, until every tenant's batch creation failed; or, in
memory, dropped every other tenant's answers. A store that fails, or
is slower than EDGE_IDEMPOTENCY_LOOKUP_TIMEOUT_S as a request arrives, is passed over (logged, counted in
llmrouter_edge_idempotency_store_passed_total): the router still serves and charges the request id once, so a replay
or marker missed is a 409, never a second charge. The answer is kept after it is sent (app.Edge._keyed): a slow store
never holds a caller's answer up."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from pydantic import SecretStr
from redis.exceptions import RedisClusterException, RedisError

from llmrouter.json_depth import loads_stored
from llmrouter.redis_connect import connect
from services.edge.openai_api import ApiError

log = logging.getLogger("llmrouter.edge")

PREFIX = "llmrouter:edge:idempotency:"
KEPT_BYTES = "llmrouter:edge:idempotency-bytes:"  # + tenant and window: the bytes of entries the tenant kept in it
# + request id: the token of the marker another request of the id found as it arrived (Replays._found).
FOUND = "llmrouter:edge:idempotency-found:"
# Count ARGV[1] bytes on the counter KEYS[1] (kept ARGV[3] s) when its total stays within ARGV[2], in one step across
# edges: bytes refused are not counted.
COUNT = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if total > tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return 0
end
return 1
"""
REPLAYED = "idempotent-replayed"  # the header a replayed answer carries, as Stripe's
MISMATCH = "idempotency_key_mismatch"
# Started markers outlive the call they name by this much (its timeout bounds it): the first's answer being kept.
IN_FLIGHT_MARGIN_S = 60
# A retry waiting for an answer being kept on another edge reads the store again after FIRST_LOOK_S, then twice as long
# each time, at most LAST_LOOK_S: an answer kept within milliseconds is sent within them, one slower costs few reads.
FIRST_LOOK_S, LAST_LOOK_S = 0.01, 0.25
ROUTED = "+"  # in a digest (hex either side): the route and body's, then the routing headers' (kept as `routing`)
STORE_PASSED = Counter(
    "llmrouter_edge_idempotency_store_passed_total",
    "Idempotency-Key store reads and writes passed over (failed, or too slow as a request arrives): a replay or an "
    "in-flight marker missed, the router's 409 telling the retry instead",
    ["step"],
)
PASSED = {step: STORE_PASSED.labels(step) for step in ("arrival", "keep", "release")}
# Deletes the marker only if it is still the one this request wrote (not the answer kept since, nor another's marker).
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Replaces the marker ARGV[1] by the digest alone ARGV[2], its expiry kept, if it is still that marker.
STORE_ERRORS = (RedisError, RedisClusterException, OSError)  # a Redis or its connection failing


class Unread(Exception):
    """No read of the store answered within a retry's wait of waited_s (Replays.settled): what is kept for its key is
    unknown."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"no read of the edge's store answered within {waited_s:g} s")
        self.waited_s = waited_s


RETIRE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL') end
return 0
"""


def digest(route: str, body: bytes, routing: list[tuple[str, str]] | None = None) -> str:
    """What a request sent with an Idempotency-Key must repeat to be replayed: its route and body byte for byte, and
    after ROUTED the headers that change how it is routed and charged (`routing`, router_headers.routing). The two are
    kept apart (Kept.dumps): the route and body's digest alone is what edges before those headers counted wrote and
    compare, so a retry crossing a rolling upgrade (or an answer kept before it) is never another request's 422."""
    sent = hashlib.sha256(route.encode() + b"\n" + body).hexdigest()
    return sent + ROUTED + hashlib.sha256(json.dumps(routing or []).encode()).hexdigest()


def same_request(kept: str, sent: str) -> bool:
    """Whether the digest `kept` names the request of digest `sent`: an entry an edge before routing headers wrote has
    its route and body's alone, compared as that edge compares it."""
    return kept == sent or (ROUTED not in kept and kept == sent.partition(ROUTED)[0])


@dataclass(frozen=True, slots=True)  # slots: its fields are in the object getsizeof counts (Kept.size), no dict
class Kept:
    """A finished request's digest, and its answer (body and headers) when it is kept to be sent again; or, with a
    `started` token, the marker of a request in flight (its digest alone: an edge before markers reads it as a
    finished stream's, which it checks the digest of just the same)."""

    digest: str
    body: bytes | None = None  # a stream's: its chat events, as the chat route sent them (server-sent events)
    headers: dict[str, str] | None = None
    started: str | None = None
    stream: bool = False
    # A stream of the legacy or Responses route, its chat events told as that route's as they are sent again: kept
    # under `retold_events`, which an edge before them passes over (the 409). Under `events` it read them as a chat
    # stream's and, on those routes, took them for a JSON answer to retell (a 500).
    retold: bool = False

    def size(self) -> int:
        """What the process holds for it, its objects included (a stream's, a digest alone, is mostly those)."""
        held = sys.getsizeof(self) + sys.getsizeof(self.digest) + (sys.getsizeof(self.body) if self.body else 0)
        held += sys.getsizeof(self.started) if self.started is not None else 0
        if self.headers is not None:
            held += sys.getsizeof(self.headers)
            held += sum(sys.getsizeof(name) + sys.getsizeof(value) for name, value in self.headers.items())
        return held

    def dumps(self) -> str:
        body = None if self.body is None else self.body.decode()  # an answer is JSON: UTF-8 text
        digest, _, routing = self.digest.partition(ROUTED)
        kept: dict[str, Any] = {"digest": digest}
        if routing:
            kept["routing"] = routing
        kept.update(body=body, headers=self.headers)
        if self.stream:
            kept["body"], kept["retold_events" if self.retold else "events"] = None, body
        if self.started is not None:
            kept["started"] = self.started
        return json.dumps(kept)

    @classmethod
    def loads(cls, text: str | bytes) -> Kept | None:
        """The kept entry `dumps` wrote; None for a value no edge wrote (hand-edited, cut short, another program's)."""
        try:
            kept = loads_stored(text)
            digest, body, headers = kept["digest"], kept.get("body"), kept.get("headers")
            started, events, routing = kept.get("started"), kept.get("events"), kept.get("routing")
            retold = kept.get("retold_events")
            texts = (body, started, events, routing, retold)
            readable = isinstance(digest, str) and all(isinstance(text, str | None) for text in texts)
            answers = [answer for answer in (body, events, retold) if answer is not None]
            if not readable or not (headers is None or _text_pairs(headers)) or len(answers) > 1:
                return None
            answer = answers[0].encode() if answers else None
            digest = digest if routing is None else digest + ROUTED + routing
            stream = events is not None or retold is not None
            return cls(digest, answer, headers, started, stream, retold is not None)
        except (ValueError, TypeError, KeyError):  # TooDeep and UnicodeError (a lone surrogate) are ValueErrors
            return None


def check(kept: Kept, sent: str) -> None:
    """A 422 when the request kept for a key (answered, or in flight) had another digest than the one sent."""
    if not same_request(kept.digest, sent):
        raise ApiError(
            422,
            "this Idempotency-Key was used before by this API key with another request (its route, body or x-router-* "
            "headers differ), answered or still in flight: the request was not served; send a new Idempotency-Key for "
            "a new request",
            param="Idempotency-Key",
            code=MISMATCH,
        )


def replay_of(kept: Kept, sent: str) -> Kept | None:
    """The answer `kept` to send again to a request of digest `sent`: None when only a digest or marker is kept (the
    router's 409 tells it); a 422 when the request kept had another digest."""
    check(kept, sent)
    return kept if kept.body is not None else None


def _text_pairs(headers: Any) -> bool:
    return isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())


@dataclass(frozen=True)
class Arrival:
    """What the store says of a request sent with an Idempotency-Key as it arrives: a kept answer to send again, or
    the token of the marker it wrote, or may have (its to take back should it fail); neither when another request's
    marker or digest (the same body's) is there, or the store was passed over reading it.

    A marker whose write failed or timed out, its reply unheard, may have landed: its token is the request's all the
    same, taken back by compare-and-delete should it fail (never another's marker, nor an answer kept since); so is
    one found under its token where the write said none was written (a Redis Cluster client's resend of it). Passed
    over as unwritten, it tied the key to the body for the call's timeout and a minute: the retry of a failure that
    cost nothing, with another body, was a false 422 rather than served."""

    replay: Kept | None = None
    started: Kept | None = None


class Replays:
    """Where the answers are kept: in memory (bounded) or in a Redis (by its URL)."""

    def __init__(
        self,
        ttl_s: int,
        max_answer_bytes: int,
        memory_bytes: int,
        tenant_bytes: int,
        url: str | SecretStr | None,
        in_flight_s: float = 300,
        arrival_timeout_s: float = 0.5,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_answer_bytes = max_answer_bytes
        self.memory_bytes = memory_bytes
        self.marker_ttl_s = max(1, min(ttl_s, int(in_flight_s) + IN_FLIGHT_MARGIN_S))
        self.arrival_timeout_s = arrival_timeout_s
        # In memory a tenant's entries share memory_bytes with every other's: a tenant keeps at most a quarter of it
        # per window, so at most half at once (its entries live two windows), however large tenant_bytes is (its
        # default is four times memory_bytes': held against it alone, one tenant still dropped all the others').
        self.tenant_bytes = tenant_bytes if url else min(tenant_bytes, memory_bytes // 4)
        self._redis: Any = connect(url, socket_connect_timeout=2, socket_timeout=5) if url else None
        # request id -> (expiry, kept, what the entry holds: kept_size)
        self._memory: OrderedDict[str, tuple[float, Kept, int]] = OrderedDict()
        self._memory_used = 0
        self._tenant_bytes_kept: dict[str, tuple[int, int]] = {}  # tenant -> (replay window, bytes kept in it)
        self._giving_way: set[asyncio.Task[None]] = set()  # markers retired or taken back after a retry's wait

    async def arrive(self, request_id: str, sent: str) -> Arrival:
        """A request of id `request_id` with digest `sent` arriving: marked in flight when nothing is kept for its id
        (atomically: of two arriving at once, on any edges sharing the store, one marks it and the other reads that
        marker); else the answer kept to send again. A 422 when what is kept (answer, digest or marker) has another
        digest. Bounded by arrival_timeout_s: a store slower is passed over, the router's id rules telling the retry."""
        if self.ttl_s == 0:
            return Arrival()
        marker = Kept(sent, started=uuid.uuid4().hex)
        marked: bool | None = None
        try:
            async with asyncio.timeout(self.arrival_timeout_s):
                marked = await self._mark(request_id, marker)
                if marked is not False:
                    return Arrival(started=marker)
                kept = await self._get(request_id)
                if kept is not None and kept.started not in (None, marker.started):
                    await self._tell_found(request_id, kept)
        except TimeoutError:
            PASSED["arrival"].inc()
            log.warning("idempotency store too slow, passed over", extra={"request_id": request_id})
            return Arrival(started=marker if marked is None else None)
        if kept is None:
            return Arrival()
        if kept.started == marker.started:  # its own: a Redis Cluster client resends a write whose reply was lost
            return Arrival(started=marker)
        return Arrival(replay=replay_of(kept, sent))

    async def settled(self, request_id: str, sent: str, wait_s: float, own: Kept | None = None) -> Kept | None:
        """What is kept for request id `request_id` sent with digest `sent` once no marker names it in flight: a
        request that ended on another edge sharing the store (the router refusing its retry as ended) may still be
        keeping its answer there, after its call's end and its last event. The store is read again, backing off, while
        a marker is there; one still there at the end is returned as it is, and gives way to its digest alone
        (_retire, beside: the retry's answer never waits on it). None when nothing is kept; a 422 when the request kept
        had another digest. `own`: the marker the waiting retry wrote itself as it arrived, which the first's answer
        replaces as it is kept (the first reached the router before it, with no marker of its own): still there at
        the end, it names no request, and is its writer's to take back (None returned, nothing retired).

        The whole wait, its reads included, ends within wait_s (0: one read, within arrival_timeout_s, as on arrival):
        a read failing is tried again within it, one too slow is cut at its end. Left to the client's socket timeouts,
        a store slow or out of reach held the retry for several of them. Unread when no read answered within it: what
        is kept is unknown (the retry's 409 says to retry, never served or charged again)."""
        if self.ttl_s == 0:
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline, pause = started + wait_s, FIRST_LOOK_S
        bound_s = wait_s or self.arrival_timeout_s
        read, kept, found = False, None, False
        try:
            async with asyncio.timeout_at(started + bound_s):
                while True:
                    answered, now_kept = await self._tried(request_id)
                    if answered:  # a read that failed leaves the last one that answered standing
                        read, kept = True, now_kept
                    if read and (kept is None or kept.started is None):
                        break
                    # Its own marker, no other request of the id found as it arrived: none keeps an answer over it.
                    mine = own is not None and kept is not None and kept.started == own.started
                    if mine and not found and not (found := await self._found(request_id, own)):
                        break
                    # A write on another edge: no event of this process tells it. The last read begins with room left.
                    if (left := deadline - loop.time() - FIRST_LOOK_S) <= 0:
                        break
                    await asyncio.sleep(min(pause, left))
                    pause = min(2 * pause, LAST_LOOK_S)
        except TimeoutError:  # the last read cut: the one before it stands
            log.warning("idempotency answer read too slowly, wait ended", extra={"request_id": request_id})
        if not read:
            raise Unread(bound_s)
        if kept is not None:
            check(kept, sent)
            if own is not None and kept.started == own.started:
                return None
            if kept.started is not None:
                self._beside(self._retire(request_id, kept))
        return kept

    async def _tell_found(self, request_id: str, marker: Kept) -> None:
        """Tell the writer of `marker`, found by a request of its id arriving, that one did (_found): this request
        may reach the router first and keep its answer over the marker. Within the arrival's bound; a store failing
        is logged (its writer, refused as the duplicate of this one, then takes it back at once: the 409)."""
        assert marker.started is not None
        if self._redis is None:
            self._keep_in_memory(FOUND + request_id, Kept("", started=marker.started), self.marker_ttl_s)
            return
        try:
            await self._redis.set(FOUND + request_id, marker.started, ex=self.marker_ttl_s)
        except STORE_ERRORS as err:
            log.warning("idempotency marker not told found", extra={"request_id": request_id, "error": repr(err)[:200]})

    async def _found(self, request_id: str, own: Kept | None) -> bool:
        """Whether another request of the id found the marker `own` (this request's) as it arrived (_tell_found): only
        one did can have reached the router first with no marker of its own, to keep its answer over `own`. Never
        found, the request the router refused this one for ended before it arrived, and will keep nothing over it: its
        retry's 409 comes at once, not after the whole wait. A store failing counts as found (the wait, bounded)."""
        assert own is not None
        if self._redis is None:
            told = self._get_in_memory(FOUND + request_id)
            return told is not None and told.started == own.started
        try:
            told = await self._redis.get(FOUND + request_id)
        except STORE_ERRORS as err:
            log.warning(
                "idempotency marker's finding not read", extra={"request_id": request_id, "error": repr(err)[:99]}
            )
            return True
        return told is not None and (told.decode() if isinstance(told, bytes) else told) == own.started

    def release_beside(self, request_id: str, marker: Kept) -> None:
        """release, run beside the retry's answer (close awaits it)."""
        self._beside(self.release(request_id, marker))

    def _beside(self, giving_way: Coroutine[Any, Any, None]) -> None:
        """A marker's giving way after a retry's wait, run beside its answer (close awaits it, each bounded by
        arrival_timeout_s): a slow store adds nothing to the wait's bound."""
        task = asyncio.ensure_future(giving_way)
        self._giving_way.add(task)
        task.add_done_callback(self._giving_way.discard)

    async def _retire(self, request_id: str, marker: Kept) -> None:
        """Replace the `marker` a retry waited on past its wait by its digest alone, its expiry kept, if it is still
        there: its edge is gone or its write failed (a write times out within the default wait), so the next retry is
        the router's 409 at once. Left, each retry until it expired (the call's timeout and a minute) waited, then was
        told to retry. An answer written late still replaces the digest (Replays.keep), a release leaves it."""
        digest_alone = Kept(marker.digest)
        if self._redis is None:
            entry = self._memory.get(request_id)
            if entry is not None and entry[1] == marker:
                self._keep_in_memory(request_id, digest_alone, max(0.0, entry[0] - time.monotonic()))
            return
        try:
            async with asyncio.timeout(self.arrival_timeout_s):
                await self._redis.eval(RETIRE, 1, PREFIX + request_id, marker.dumps(), digest_alone.dumps())
        except (*STORE_ERRORS, TimeoutError) as err:
            log.warning("idempotency marker not retired", extra={"request_id": request_id, "error": repr(err)[:200]})

    async def release(self, request_id: str, marker: Kept) -> None:
        """Take back the `marker` a request that failed wrote, if it is still there (not an answer kept since, nor
        another's marker): its retry, whatever its body, is the router's to serve or refuse."""
        if self._redis is None:
            entry = self._memory.get(request_id)
            if entry is not None and entry[1] == marker:
                self._memory_used -= self._memory.pop(request_id)[2]
            return
        try:
            async with asyncio.timeout(self.arrival_timeout_s):  # the failure's caller waits on it
                await self._redis.eval(RELEASE, 1, PREFIX + request_id, marker.dumps())
        except (*STORE_ERRORS, TimeoutError) as err:
            PASSED["release"].inc()
            log.warning("idempotency marker not taken back", extra={"request_id": request_id, "error": repr(err)[:200]})

    async def keep(
        self,
        request_id: str,
        sent: str,
        body: bytes | None,
        headers: dict[str, str] | None,
        *,
        tenant: str,
        stream: bool = False,
        retold: bool = False,
        started: Kept | None = None,
    ) -> None:
        """Keep a finished request's digest, and its answer when within max_answer_bytes and the tenant's
        tenant_bytes (None: its digest alone; `stream`: the answer is a chat stream's events, `retold` as another
        route's). Nothing of it kept (past the tenant's bytes), its in-flight marker (`started`) is taken back: left,
        uncounted, it outlived the request by the call's timeout and a minute, in the Redis (so that a tenant past its
        bytes filled it with markers, one per request, for free) as in memory (where they dropped the other tenants'
        answers). Markers are not counted against tenant_bytes: each lasts its request's life alone, replaced by what
        is kept (counted) or taken back, while counting each for the window would spend the bytes of answers on
        markers gone within minutes."""
        if self.ttl_s == 0:
            return
        if body is not None and len(body) > self.max_answer_bytes:
            body, headers = None, None
        # Its answer, else its digest alone, each if within its tenant's bytes.
        entries = [Kept(sent, body, headers, stream=stream, retold=retold)] if body is not None else []
        entries.append(Kept(sent))
        try:
            for entry in entries:
                if await self._kept_within_tenant_bytes(request_id, entry, tenant):
                    return
                log.warning(
                    "idempotency entry not kept: its tenant's bytes kept are spent",
                    extra={"request_id": request_id, "tenant": tenant, "digest_alone": entry == entries[-1]},
                )
        except STORE_ERRORS as err:
            PASSED["keep"].inc()
            log.warning("idempotency answer not kept", extra={"request_id": request_id, "error": repr(err)[:200]})
            return
        if started is not None:
            await self.release(request_id, started)

    async def _kept_within_tenant_bytes(self, request_id: str, kept: Kept, tenant: str) -> bool:
        """Keep `kept` if it is within what `tenant` may keep in this replay window: whether it was. Counted as held:
        in the Redis its key and JSON text (an emoji's 4 bytes are 12 there), in memory what the process holds."""
        if self._redis is None:
            if not self._within_tenant_bytes_in_memory(tenant, kept_size(request_id, kept)):
                return False
            self._keep_in_memory(request_id, kept, self.ttl_s)
            return True
        key, entry = PREFIX + request_id, kept.dumps()
        if not await self._within_tenant_bytes(tenant, len(key) + len(entry.encode())):
            return False
        await self._redis.set(key, entry, ex=self.ttl_s)
        return True

    async def _mark(self, request_id: str, marker: Kept) -> bool | None:
        """Write `marker` unless something is kept for the id: whether it was written; None when the store failed,
        its reply unheard (the marker may have landed all the same)."""
        if self._redis is None:
            if self._get_in_memory(request_id) is not None:
                return False
            self._keep_in_memory(request_id, marker, self.marker_ttl_s)
            return True
        try:
            return bool(await self._redis.set(PREFIX + request_id, marker.dumps(), ex=self.marker_ttl_s, nx=True))
        except STORE_ERRORS as err:
            PASSED["arrival"].inc()
            log.warning("idempotency marker not written", extra={"request_id": request_id, "error": repr(err)[:200]})
            return None

    async def _within_tenant_bytes(self, tenant: str, size: int) -> bool:
        """Whether an entry of `size` bytes is within what `tenant` may keep in this replay window: counted then, else
        not (the room it would take is left for its digest). Entries live ttl_s, so those kept at once are of this
        window and the last: at most twice tenant_bytes."""
        counter = f"{KEPT_BYTES}{tenant}:{int(time.time()) // self.ttl_s}"
        return bool(await self._redis.eval(COUNT, 1, counter, size, self.tenant_bytes, 2 * self.ttl_s))

    def _within_tenant_bytes_in_memory(self, tenant: str, size: int) -> bool:
        """As _within_tenant_bytes, in this process: one tenant's answers never drop every other's, oldest first,
        from the memory they share (memory_bytes)."""
        window = int(time.time()) // self.ttl_s
        counted_in, counted = self._tenant_bytes_kept.get(tenant, (window, 0))
        counted = counted if counted_in == window else 0
        if counted + size > self.tenant_bytes:
            return False
        self._tenant_bytes_kept[tenant] = (window, counted + size)
        return True

    async def close(self) -> None:
        await asyncio.gather(*self._giving_way, return_exceptions=True)  # each within arrival_timeout_s
        if self._redis is not None:
            await self._redis.aclose()

    async def _get(self, request_id: str) -> Kept | None:
        """What is kept for the id; None for nothing, or a store that failed (logged)."""
        return (await self._tried(request_id))[1]

    async def _tried(self, request_id: str) -> tuple[bool, Kept | None]:
        """Whether the store answered a read of what is kept for the id (a failure logged), and what it holds."""
        try:
            return True, await self._read(request_id)
        except STORE_ERRORS as err:
            log.warning("idempotency answer not read", extra={"request_id": request_id, "error": repr(err)[:200]})
            return False, None

    async def _read(self, request_id: str) -> Kept | None:
        """What is kept for the id (None: nothing readable); a store that fails raises."""
        if self._redis is None:
            return self._get_in_memory(request_id)
        text = await self._redis.get(PREFIX + request_id)
        kept = None if text is None else Kept.loads(text)
        if text is not None and kept is None:
            log.warning("idempotency answer unreadable, passed over", extra={"request_id": request_id})
        return kept

    def _get_in_memory(self, request_id: str) -> Kept | None:
        entry = self._memory.get(request_id)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def _keep_in_memory(self, request_id: str, kept: Kept, ttl_s: float) -> None:
        now = time.monotonic()
        old = self._memory.pop(request_id, None)
        if old is not None:
            self._memory_used -= old[2]
        size = kept_size(request_id, kept)
        self._memory[request_id] = (now + ttl_s, kept, size)
        self._memory_used += size
        # Oldest first: those expired, then any past the bound. A marker's TTL is shorter than an answer's, so one
        # expired behind the first is dropped when it comes first or is read (_get_in_memory passes it over).
        while self._memory and (self._memory_used > self.memory_bytes or next(iter(self._memory.values()))[0] <= now):
            _, (_, _, dropped) = self._memory.popitem(last=False)
            self._memory_used -= dropped


# An entry's own objects beside its Kept: its (expiry, kept, size) tuple, the float and int, and its node and slot in
# the OrderedDict (measured with tracemalloc: tests/edge/test_idempotency_replays.py).
ENTRY_OVERHEAD = 256


def kept_size(request_id: str, kept: Kept) -> int:
    """What one kept entry holds in memory, counted against EDGE_IDEMPOTENCY_MEMORY_BYTES."""
    return sys.getsizeof(request_id) + kept.size() + ENTRY_OVERHEAD
