"""Where batches and their files live: Redis (EDGE_BATCH_REDIS_URL: shared by edge replicas, and what a
restarted edge resumes from), or in process without it (a restart loses them). Per tenant: a file or batch
of another tenant is not found.

Keys (prefix llmrouter:batch:): `file:<id>` a hash (tenant, filename, purpose, created_at, bytes, content);
`batch:<id>` a hash (the batch's fields, counters included); `batch:<id>:results` a hash from line index to
its result line, written once (the line counts once however often it is retried); `active` the set of
batches still to run."""

from __future__ import annotations

import time
from typing import Protocol

PREFIX = "llmrouter:batch:"
ACTIVE = PREFIX + "active"


def file_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def results_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:results"


class Store(Protocol):
    async def put(self, key: str, fields: dict[str, str | bytes]) -> None: ...

    async def get(self, key: str) -> dict[str, bytes]: ...

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        """Set a field unless it is set already; True when this call set it."""

    async def add(self, key: str, field: str, amount: int) -> int: ...

    async def activate(self, batch_id: str, active: bool) -> None: ...

    async def active(self) -> set[str]: ...

    async def close(self) -> None: ...


class RedisStore:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.redis = redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)

    async def put(self, key: str, fields: dict[str, str | bytes]) -> None:
        await self.redis.hset(key, mapping=fields)  # type: ignore[arg-type]

    async def get(self, key: str) -> dict[str, bytes]:
        raw = await self.redis.hgetall(key)
        return {k.decode(): v for k, v in raw.items()}

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
        return {m.decode() for m in await self.redis.smembers(ACTIVE)}

    async def close(self) -> None:
        await self.redis.aclose()


class MemoryStore:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.running: set[str] = set()

    async def put(self, key: str, fields: dict[str, str | bytes]) -> None:
        entry = self.hashes.setdefault(key, {})
        entry.update({k: v.encode() if isinstance(v, str) else v for k, v in fields.items()})

    async def get(self, key: str) -> dict[str, bytes]:
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

    async def close(self) -> None:
        self.hashes.clear()


def open_store(url: str | None) -> Store:
    return RedisStore(url) if url else MemoryStore()


def now() -> str:
    return str(int(time.time()))
