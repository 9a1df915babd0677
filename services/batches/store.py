"""Where batches and their files live: Redis (EDGE_BATCH_REDIS_URL: shared by edge replicas, and what a
restarted edge resumes from), or in process without it (a restart loses them). Per tenant: a file or batch
of another tenant is not found.

Keys (prefix llmrouter:batch:): `file:<id>` a hash (tenant, filename, purpose, created_at, bytes, content);
`batch:<id>` a hash (the batch's fields, counters included, `parked_until`: the epoch time before which no edge runs
it again, `failures`: its runs that failed in a row, and `unreached`: its runs in a row that found the router out of
reach, runner.py); `batch:<id>:results` a hash from line index to
its result line, written once (the line counts once however often it is retried); `batch:<id>:deferred` a hash from
line index to the provider batch it was sent in (deferral.py); `active` the set of batches still to run;
`lease:<id>` which edge runs a batch now (one at a time, or two would send each line twice); `file:<id>:readers` a
hash of the batches created on an input file (a deleted file's content stays while one of them runs).

A tenant's files and batches are listed from its index, never a scan of the keyspace: `index:{<tenant>}:<kind>`
(kind `file` or `batch`) a sorted set of ids by creation time (ms), and `index:{<tenant>}:<kind>:until` the
same ids by when their hash expires (+inf while it does not: a running batch). Entries past that time leave the
index whenever it is written, and the index itself expires with its last entry. A deleted or vanished entry
stays a TOMBSTONE_S more, hidden, so that a listing that deletes as it pages (the SDK's next page starts `after`
the last id it saw) goes on from there. Both keys of a tenant share a Redis Cluster hash slot (the braces), so
one script updates them together."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

from pydantic import SecretStr

from llmrouter.redis_connect import connect
from services.batches import wire

PREFIX = "llmrouter:batch:"
ACTIVE = PREFIX + "active"


def file_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def results_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:results"


def deferred_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:deferred"


def readers_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}:readers"


def index_keys(tenant: str, kind: str) -> tuple[str, str]:
    base = f"{PREFIX}index:{{{tenant}}}:{kind}"
    return base, base + ":until"


TOMBSTONE_S = 3600
ENDED = (b"completed", b"failed", b"expired", b"cancelled")  # a batch in no other status still reads its input
CANCELLABLE = ("validating", "in_progress")  # a batch that may be cancelled


def sent_key(batch_id: str) -> str:
    """Per line sent to the router, 'sent'; 'refused' once the router did not admit it (runner.py)."""
    return f"{PREFIX}batch:{batch_id}:sent"


class Store(Protocol):
    async def put(self, key: str, fields: dict[str, str | bytes]) -> None: ...

    async def get(self, key: str) -> dict[str, bytes]: ...

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        """Set a field unless it is set already; True when this call set it."""

    async def add(self, key: str, field: str, amount: int) -> int: ...

    async def activate(self, batch_id: str, active: bool) -> None: ...

    async def active(self) -> set[str]: ...

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        """Take or renew the right to run a batch for ttl_s; False while another owner holds it."""

    async def release(self, batch_id: str, owner: str) -> None:
        """Give up the lease, if this owner holds it: any edge may run the batch from now."""

    async def back_off(self, batch_id: str, first_s: float, most_s: float, counter: str = "failures") -> float | None:
        """A run of the batch failed: one more failure in a row (counted in the hash's `counter` field: `failures`, or
        `unreached` for a run that found the router out of reach), and the batch parked for first_s, doubled with each
        failure in a row, at most most_s, and never past its expires_at while that is to come: its run then expires
        it on time, not up to most_s late, `in_progress` meanwhile. Its first failure past expires_at (its last park,
        if any, ended by then) parks it until now: run again at once, it ends `expired` (sending no new line) unless
        it fails again, backed off then. When it is parked until; None when the batch is gone (nothing written)."""

    async def advance(self, batch_id: str, statuses: tuple[str, ...], status: str, at: str) -> bool:
        """The batch in `status` since `at` (its `<status>_at`), if it is in one of `statuses`, in one step: a cancel
        and a run ending the batch meanwhile (on this edge or another) do not undo each other. True when it moved."""

    async def expire(self, keys: list[str], ttl_s: int) -> None: ...

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        """These fields (all with None) of each hash: a file's metadata read without its content."""

    async def content(self, key: str) -> bytes | None:
        """A file's content (None when the file is gone), read one at a time: reading a reply, redis-py holds it
        in its stream's buffer too, so a file read takes twice its size for a moment."""

    async def drop(self, key: str, field: str) -> None: ...

    async def delete(self, keys: list[str]) -> None: ...

    async def index(self, tenant: str, kind: str, item_id: str, ttl_s: float | None) -> None:
        """List the item in its tenant's index, placed at its first listing, until ttl_s from now (None: for
        as long as it has no expiry), as its hash's expiry is set."""

    async def unindex(self, tenant: str, kind: str, item_id: str) -> None:
        """The item is deleted or gone: its entry stays a TOMBSTONE_S more, if it had longer."""

    async def page(self, tenant: str, kind: str, after: str | None, count: int, newest_first: bool) -> list[str] | None:
        """Up to count ids of the tenant's index past `after`, in order of creation; None when `after` is not in it."""

    async def close(self) -> None: ...


# Take the lease when free, renew it when ours: one step, so two edges never both hold it.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# Only its holder's: a lease since lapsed and taken by another edge stays that edge's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: a batch's hash. ARGV: now, first_s, most_s, a day (its window when it has no expires_at, as
# wire.expires_at), the field counting its failures in a row. Never recreates a hash that is gone (evicted, or
# expired). Store.back_off says when it parks.
BACK_OFF = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local failures = redis.call('HINCRBY', KEYS[1], ARGV[5], 1)
local now = tonumber(ARGV[1])
local wait = math.min(tonumber(ARGV[2]) * 2 ^ (failures - 1), tonumber(ARGV[3]))
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '')
if not expires then
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '')
  if created then expires = created + tonumber(ARGV[4]) end
end
local parked = now + wait
if expires and now < expires and parked > expires then parked = expires end
if expires and now >= expires and tonumber(redis.call('HGET', KEYS[1], 'parked_until') or '0') <= expires then
  parked = now
end
parked = string.format('%.6f', parked)
redis.call('HSET', KEYS[1], 'parked_until', parked)
return parked
"""

# KEYS: a batch's hash. ARGV: its new status, when, then the statuses it may move from. Store.advance.
ADVANCE = """
local status = redis.call('HGET', KEYS[1], 'status')
for i = 3, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
    return 1
  end
end
return 0
"""

# KEYS: a tenant's index (ids by creation) and its deadlines. ARGV: id, created (ms; only where not yet listed),
# deadline ('+inf' for none), now, and 'drop' to only shorten the deadline (a tombstone). Then the entries past
# their deadline leave (a thousand at a time), and the index expires with its last entry.
INDEX = """
if ARGV[5] == 'drop' then
  redis.call('ZADD', KEYS[2], 'XX', 'LT', ARGV[3], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
elseif last[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
else
  local at = math.ceil(tonumber(last[2]))
  redis.call('EXPIREAT', KEYS[1], at)
  redis.call('EXPIREAT', KEYS[2], at)
end
return 1
"""

# KEYS: a tenant's index. ARGV: after ('' for the start), count, 'desc' for newest first. False: no such `after`.
PAGE = """
local start = 0
if ARGV[1] ~= '' then
  local rank
  if ARGV[3] == 'desc' then
    rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  else
    rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  end
  if not rank then return false end
  start = rank + 1
end
local stop = start + tonumber(ARGV[2]) - 1
if ARGV[3] == 'desc' then return redis.call('ZREVRANGE', KEYS[1], start, stop) end
return redis.call('ZRANGE', KEYS[1], start, stop)
"""


class RedisStore:
    def __init__(self, url: str | SecretStr) -> None:
        self.redis = connect(url, socket_connect_timeout=2, socket_timeout=10)
        self._reading = asyncio.Lock()

    async def put(self, key: str, fields: dict[str, str | bytes]) -> None:
        await self.redis.hset(key, mapping=fields)

    async def get(self, key: str) -> dict[str, bytes]:
        raw = await self.redis.hgetall(key)
        return {_text(k): _bytes(v) for k, v in raw.items()}

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        return bool(await self.redis.hsetnx(key, field, value))

    async def add(self, key: str, field: str, amount: int) -> int:
        return int(await self.redis.hincrby(key, field, amount))

    async def activate(self, batch_id: str, active: bool) -> None:
        if active:
            await self.redis.sadd(ACTIVE, batch_id)
        else:
            await self.redis.srem(ACTIVE, batch_id)

    async def active(self) -> set[str]:
        return {_text(m) for m in await self.redis.smembers(ACTIVE)}

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        return bool(await self.redis.eval(LEASE, 1, f"{PREFIX}lease:{batch_id}", owner, ttl_s))

    async def release(self, batch_id: str, owner: str) -> None:
        await self.redis.eval(RELEASE, 1, f"{PREFIX}lease:{batch_id}", owner)

    async def back_off(self, batch_id: str, first_s: float, most_s: float, counter: str = "failures") -> float | None:
        args = (repr(time.time()), first_s, most_s, wire.DAY_S, counter)
        until = await self.redis.eval(BACK_OFF, 1, batch_key(batch_id), *args)
        return None if until is None else float(until)

    async def advance(self, batch_id: str, statuses: tuple[str, ...], status: str, at: str) -> bool:
        return bool(await self.redis.eval(ADVANCE, 1, batch_key(batch_id), status, at, *statuses))

    async def expire(self, keys: list[str], ttl_s: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.expire(key, ttl_s)
            await pipe.execute()

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key) if names is None else pipe.hmget(key, names)
            replies = await pipe.execute()
        if names is None:
            return [{_text(k): _bytes(v) for k, v in reply.items()} for reply in replies]
        return [{n: _bytes(v) for n, v in zip(names, reply, strict=True) if v is not None} for reply in replies]

    async def content(self, key: str) -> bytes | None:
        async with self._reading:
            value = await self.redis.hget(key, "content")
        return None if value is None else _bytes(value)

    async def drop(self, key: str, field: str) -> None:
        await self.redis.hdel(key, field)

    async def delete(self, keys: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:  # one key at a time: a cluster's slots differ
            for key in keys:
                pipe.delete(key)
            await pipe.execute()

    async def index(self, tenant: str, kind: str, item_id: str, ttl_s: float | None) -> None:
        at = time.time()
        until = "+inf" if ttl_s is None else str(at + ttl_s)
        await self._index(tenant, kind, item_id, str(int(at * 1000)), until, "keep")

    async def unindex(self, tenant: str, kind: str, item_id: str) -> None:
        await self._index(tenant, kind, item_id, "0", str(time.time() + TOMBSTONE_S), "drop")

    async def _index(self, tenant: str, kind: str, item_id: str, created: str, until: str, mode: str) -> None:
        keys = index_keys(tenant, kind)
        await self.redis.eval(INDEX, 2, *keys, item_id, created, until, str(time.time()), mode)

    async def page(self, tenant: str, kind: str, after: str | None, count: int, newest_first: bool) -> list[str] | None:
        order = "desc" if newest_first else "asc"
        ids = await self.redis.eval(PAGE, 1, index_keys(tenant, kind)[0], after or "", count, order)
        return None if ids is None else [_text(i) for i in ids]

    async def close(self) -> None:
        await self.redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class MemoryStore:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.running: set[str] = set()
        self.expiry: dict[str, float] = {}
        # (tenant, kind) -> id -> (created, deadline), the deadline on the monotonic clock as `expiry`
        self.indexes: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}

    async def put(self, key: str, fields: dict[str, str | bytes]) -> None:
        entry = self.hashes.setdefault(key, {})
        entry.update({k: v.encode() if isinstance(v, str) else v for k, v in fields.items()})

    async def get(self, key: str) -> dict[str, bytes]:
        if self.expiry.get(key, math.inf) <= time.monotonic():
            self.hashes.pop(key, None)
            self.expiry.pop(key, None)
        return dict(self.hashes.get(key, {}))

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        entry = self.hashes.setdefault(key, {})
        if field in entry:
            return False
        entry[field] = value
        return True

    async def add(self, key: str, field: str, amount: int) -> int:
        entry = self.hashes.setdefault(key, {})
        entry[field] = str(int(entry.get(field, b"0")) + amount).encode()
        return int(entry[field])

    async def activate(self, batch_id: str, active: bool) -> None:
        (self.running.add if active else self.running.discard)(batch_id)

    async def active(self) -> set[str]:
        return set(self.running)

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        return True  # one process: the runner itself never runs a batch twice

    async def release(self, batch_id: str, owner: str) -> None:
        pass

    async def back_off(self, batch_id: str, first_s: float, most_s: float, counter: str = "failures") -> float | None:
        batch = await self.get(batch_key(batch_id))
        if not batch:
            return None
        failures = await self.add(batch_key(batch_id), counter, 1)
        at = time.time()
        until = at + min(first_s * 2 ** min(failures - 1, 64), most_s)
        if "expires_at" in batch or "created_at" in batch:
            expires = wire.expires_at(batch)
            if at < expires:
                until = min(until, expires)
            elif float(batch.get("parked_until", b"0")) <= expires:
                until = at
        await self.put(batch_key(batch_id), {"parked_until": repr(until)})
        return until

    async def advance(self, batch_id: str, statuses: tuple[str, ...], status: str, at: str) -> bool:
        if (await self.get(batch_key(batch_id))).get("status", b"").decode() not in statuses:
            return False
        await self.put(batch_key(batch_id), {"status": status, f"{status}_at": at})
        return True

    async def expire(self, keys: list[str], ttl_s: int) -> None:
        now = time.monotonic()
        for key, deadline in list(self.expiry.items()):  # what expired unread goes now
            if deadline <= now:
                self.hashes.pop(key, None)
                del self.expiry[key]
        self.expiry.update({key: now + ttl_s for key in keys})

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        found = [await self.get(key) for key in keys]
        return found if names is None else [{n: f[n] for n in names if n in f} for f in found]

    async def content(self, key: str) -> bytes | None:
        return (await self.get(key)).get("content")

    async def drop(self, key: str, field: str) -> None:
        self.hashes.get(key, {}).pop(field, None)

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.hashes.pop(key, None)
            self.expiry.pop(key, None)

    async def index(self, tenant: str, kind: str, item_id: str, ttl_s: float | None) -> None:
        entries = self._entries(tenant, kind)
        created = entries[item_id][0] if item_id in entries else time.time()
        entries[item_id] = (created, math.inf if ttl_s is None else time.monotonic() + ttl_s)

    async def unindex(self, tenant: str, kind: str, item_id: str) -> None:
        entries = self._entries(tenant, kind)
        if item_id in entries:
            created, until = entries[item_id]
            entries[item_id] = (created, min(until, time.monotonic() + TOMBSTONE_S))

    def _entries(self, tenant: str, kind: str) -> dict[str, tuple[float, float]]:
        """The tenant's index, without the entries past their deadline."""
        entries = self.indexes.setdefault((tenant, kind), {})
        clock = time.monotonic()
        for gone in [i for i, (_, until) in entries.items() if until <= clock]:
            del entries[gone]
        return entries

    async def page(self, tenant: str, kind: str, after: str | None, count: int, newest_first: bool) -> list[str] | None:
        entries = self._entries(tenant, kind)
        ordered = sorted(entries, key=lambda i: (entries[i][0], i), reverse=newest_first)
        if after is None:
            return ordered[:count]
        if after not in entries:
            return None
        start = ordered.index(after) + 1
        return ordered[start : start + count]

    async def close(self) -> None:
        self.hashes.clear()


async def unread(store: Store, file_id: str) -> bool:
    """True when no running batch reads the file."""
    readers = list(await store.get(readers_key(file_id)))
    statuses = await store.fields([batch_key(b) for b in readers], ["status"])
    return all(s.get("status", ENDED[0]) in ENDED for s in statuses)  # a batch gone from the store reads nothing


async def delete_if_unread(store: Store, file_id: str) -> None:
    """Remove a file marked deleted once no running batch reads it: one deleted while its batch runs keeps its
    content until the batch ends. Called after each change to either (the mark, a batch's end), so whichever
    comes last removes it."""
    if "deleted" not in (await store.fields([file_key(file_id)], ["deleted"]))[0]:
        return
    if await unread(store, file_id):
        await store.delete([file_key(file_id), readers_key(file_id)])


def open_store(url: str | SecretStr | None) -> Store:
    return RedisStore(url) if url else MemoryStore()


def now() -> str:
    return str(int(time.time()))
