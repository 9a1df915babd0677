"""A batch store out of reach, or refusing the edge, is a 503 in OpenAI's body with a Retry-After: the caller (its
SDK) retries, as it does when the router is out of reach. The edge answered 500 internal_error instead, as for a crash,
and logged a traceback: for one server stopped, for a user an ACL change denies, and for a Redis Cluster no node of
which answers, which redis-py reports as a bare RedisClusterException ("Redis Cluster cannot be connected"), no
ConnectionError. Real redis-server processes of the test's own (a server, or a 3-master cluster), stopped or denied
mid-test, then back: the edge serves again with the same clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import batch_edge
from tests.redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.heavy  # make test-heavy: a Redis Cluster out of reach

UNAVAILABLE = {
    "message": "batch storage is temporarily unavailable: retry shortly",
    "type": "server_error",
    "param": None,
    "code": "storage_unavailable",
}
# What an ACL change may leave the edge's user: its connection and the cluster's layout, none of the batch commands.
DENIED = ("-@read", "-@write", "-@scripting")


@dataclass
class Outage:
    url: str
    begin: Callable[[], object]
    end: Callable[[], object]


def acl(ports: list[int], *rules: str) -> None:
    for port in ports:
        client = redis.Redis(port=port)
        try:
            client.execute_command("ACL", "SETUSER", "default", *rules)
        finally:
            client.close()


@asynccontextmanager
async def outage(kind: str, workdir: Path) -> AsyncIterator[Outage]:
    store: RedisServer | RedisCluster
    if kind.startswith("server"):
        store = RedisServer(workdir, "--save", "").start()
        ports = [store.port]
    else:
        store = RedisCluster(workdir).start()
        ports = [node.port for node in store.nodes]
    try:
        if kind.endswith("stopped"):
            yield Outage(store.url, store.stop, store.start if isinstance(store, RedisServer) else store.restart)
        else:
            yield Outage(store.url, lambda: acl(ports, *DENIED), lambda: acl(ports, "+@all"))
    finally:
        store.stop()


def batch_file() -> bytes:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    line = {"custom_id": "l0", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


async def upload(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/files", files={"file": ("b.jsonl", batch_file())}, data={"purpose": "batch"})


@pytest.mark.parametrize("kind", ["server stopped", "server denied (ACL)", "cluster stopped", "cluster denied (ACL)"])
async def test_a_batch_store_out_of_reach_is_a_503_to_retry(kind: str, tmp_path: Path) -> None:
    async with outage(kind, tmp_path / "store") as store, batch_edge("127.0.0.1:1", store.url, timeout_s=30) as client:
        kept = await upload(client)
        assert kept.status_code == 200, kept.text
        file_id = kept.json()["id"]
        creation = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        store.begin()
        for refused in [
            await client.get("/files"),
            await upload(client),
            await client.get(f"/files/{file_id}"),
            await client.post("/batches", json=creation),
            await client.get("/batches"),
        ]:
            assert refused.status_code == 503, refused.text
            assert refused.json() == {"error": UNAVAILABLE}
            assert refused.headers["retry-after"] == "1"
        store.end()
        again = await upload(client)
        assert again.status_code == 200, again.text
        listed = (await client.get("/files")).json()["data"]
        assert again.json()["id"] in [f["id"] for f in listed]
