"""Where batches and their files live: Redis (EDGE_BATCH_REDIS_URL: shared by edge replicas, and what a
restarted edge resumes from), or in process without it (a restart loses them). Per tenant: a file or batch
of another tenant is not found.

Keys (prefix llmrouter:batch:): `file:<id>` a hash (tenant, filename, purpose, created_at, bytes, content);
`batch:<id>` a hash (the batch's fields, counters included); `batch:<id>:results` a hash from line index to
its result line, written once (the line counts once however often it is retried); `batch:<id>:deferred` a
hash from line index to the provider batch it was sent in (deferral.py); `active` the set of
batches still to run; `lease:<id>` which edge runs a batch now (one at a time, or two would send each line
twice)."""

from __future__ import annotations

import math
import time
from typing import Protocol

from llmrouter.redis_connect import connect

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

    async def expire(self, keys: list[str], ttl_s: int) -> None: ...

    async def close(self) -> None: ...


# Take the lease when free, renew it when ours: one step, so two edges never both hold it.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        self.redis = connect(url, socket_connect_timeout=2, socket_timeout=10)

    async def put(self, key: str, fields: dict[str, str | bytes]) -> None:
        await self.redis.hset(key, mapping=fields)  # type: ignore[arg-type]

    async def get(self, key: str) -> dict[str, bytes]:
        raw = await self.redis.hgetall(key)  # type: ignore[misc]
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
        return {_text(m) for m in await self.redis.smembers(ACTIVE)}  # type: ignore[misc]

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        return bool(await self.redis.eval(LEASE, 1, f"{PREFIX}lease:{batch_id}", owner, ttl_s))  # type: ignore[misc]

    async def expire(self, keys: list[str], ttl_s: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.expire(key, ttl_s)
            await pipe.execute()

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

    async def expire(self, keys: list[str], ttl_s: int) -> None:
        now = time.monotonic()
        for key, deadline in list(self.expiry.items()):  # what expired unread goes now
            if deadline <= now:
                self.hashes.pop(key, None)
                del self.expiry[key]
        self.expiry.update({key: now + ttl_s for key in keys})

    async def close(self) -> None:
        self.hashes.clear()


def open_store(url: str | None) -> Store:
    return RedisStore(url) if url else MemoryStore()


def now() -> str:
    return str(int(time.time()))
