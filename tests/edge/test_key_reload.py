"""EDGE_API_KEYS_FILE is read again as it changes (services/edge/key_reload.py), as a mounted Secret is updated in place
by the kubelet: a key taken out of it is refused and a key added served within EDGE_API_KEYS_RELOAD_S, with no restart
(read once at start, a revoked key spent on until every edge pod was restarted). A file that fails to parse keeps the
last good keys, refused with llmrouter_edge_api_keys_valid 0 and a log line that names no key; EDGE_API_KEYS stays; a
request let in before its key was revoked finishes; a batch of a key revoked while it runs sends no new line. A real
edge over loopback before a stand-in router, a real Redis batch store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from llmrouter.v1 import router_pb2
from services.batches import wire
from services.edge.key_reload import MAX_FILE_BYTES, LiveKeys
from services.edge.keys import digest, key_line
from tests.edge.conftest import Edge, recorded_edge
from tests.fakes.recording_router import RecordingRouter

RELOAD_S = 0.1
OLD, NEW, INLINE = "sk-old-key", "sk-new-key", "sk-inline-key"


class SecretMount:
    """A directory laid out as the kubelet mounts a Secret: api-keys -> ..data/api-keys, ..data -> a timestamped
    directory; an update writes a new directory and swaps ..data atomically."""

    def __init__(self, root: Path, text: str) -> None:
        self.root, self.version = root, 0
        (root / "api-keys").symlink_to("..data/api-keys")
        self.publish(text)

    @property
    def path(self) -> Path:
        return self.root / "api-keys"

    def publish(self, text: str) -> None:
        self.version += 1
        version = self.root / f"..2026_12_06_{self.version}"
        version.mkdir()
        (version / "api-keys").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")


class HeldRouter(RecordingRouter):
    """A stand-in router whose Complete answers once `released` is set: a request, or a batch line, held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()
        self.released.set()

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        self.asked.append(request)
        await self.released.wait()
        return router_pb2.CompleteResponse(id="c1", model="cheap-model", content="hi", cost_usd="0")


def valid() -> float | None:
    return REGISTRY.get_sample_value("llmrouter_edge_api_keys_valid")


def reloads(outcome: str) -> float:
    return REGISTRY.get_sample_value("llmrouter_edge_api_keys_reloads_total", {"outcome": outcome}) or 0.0


async def status(edge: Edge, key: str | None) -> int:
    async with edge.client(key) as client:
        return (await client.get("/models")).status_code


async def until(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.02)


async def chat(edge: Edge, key: str) -> httpx.Response:
    async with edge.client(key) as client:
        return await client.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})


async def test_a_revoked_key_is_refused_and_a_new_one_served_without_a_restart(tmp_path: Path) -> None:
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    inline = SecretStr(key_line("globex", INLINE))
    async with recorded_edge(api_keys_file=mount.path, api_keys=inline, api_keys_reload_s=RELOAD_S) as edge:
        assert [await status(edge, key) for key in (OLD, NEW, INLINE)] == [200, 401, 200]
        ok = reloads("ok")
        mount.publish(f"# acme's key rotated\n{key_line('acme', NEW)}\n")
        await until(lambda: _is(status(edge, OLD), 401))
        assert [await status(edge, key) for key in (OLD, NEW, INLINE)] == [401, 200, 200]  # EDGE_API_KEYS stays
        assert (await chat(edge, NEW)).status_code == 200
        assert edge.router.asked[-1].tenant == "acme"
        assert reloads("ok") == ok + 1 and valid() == 1


async def test_a_file_that_fails_to_parse_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    async with recorded_edge(api_keys_file=mount.path, api_keys_reload_s=RELOAD_S) as edge:
        invalid = reloads("invalid")
        # A key given to two tenants: the new key is in it, the old one gone.
        broken = f"{key_line('acme', NEW)}\n{key_line('globex', NEW)}\n"
        with caplog.at_level(logging.ERROR, logger="llmrouter.edge.keys"):
            mount.publish(broken)
            await until(lambda: _true(reloads("invalid") == invalid + 1))
        assert valid() == 0
        assert [await status(edge, key) for key in (OLD, NEW)] == [200, 401]  # the keys as they were
        refused = [r for r in caplog.records if r.name == "llmrouter.edge.keys"]
        assert refused and "line 2" in getattr(refused[-1], "error", "")
        assert digest(NEW).hex() not in caplog.text and NEW not in caplog.text  # no key, no digest in the log
        mount.publish("acme half-written-line\n")  # a line cut short: refused too
        await until(lambda: _true(reloads("invalid") == invalid + 2))
        assert await status(edge, OLD) == 200
        mount.publish(key_line("acme", NEW) + "\n")  # fixed: in force, and valid again
        await until(lambda: _is(status(edge, NEW), 200))
        assert await status(edge, OLD) == 401 and valid() == 1


async def test_a_keyed_edge_whose_file_loses_every_key_refuses_every_caller(tmp_path: Path) -> None:
    """Never the anonymous tenant, which an edge with no keys at all serves: a file emptied revokes every key."""
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    async with recorded_edge(api_keys_file=mount.path, api_keys_reload_s=RELOAD_S) as edge:
        mount.publish("# every key revoked\n")
        await until(lambda: _is(status(edge, OLD), 401))
        assert await status(edge, None) == 401
        assert (await chat(edge, "anything")).status_code == 401
        assert edge.router.asked == []


async def test_a_request_let_in_before_its_key_was_revoked_finishes(tmp_path: Path) -> None:
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    router = HeldRouter()
    async with recorded_edge(router, api_keys_file=mount.path, api_keys_reload_s=RELOAD_S) as edge:
        router.released.clear()
        in_flight = asyncio.create_task(chat(edge, OLD))
        await until(lambda: _true(len(router.asked) == 1))
        mount.publish(key_line("acme", NEW) + "\n")
        await until(lambda: _is(status(edge, OLD), 401))
        router.released.set()
        answered = await in_flight
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"] == "hi"


async def test_a_batch_of_a_key_revoked_while_it_runs_sends_no_new_line(tmp_path: Path, redis_url: str) -> None:
    """Its line in flight finishes; the lines after it are left to an edge that still serves the key (the batch stays
    in_progress), as a batch of a revoked key is at adoption. Before, a batch checked its key only as its run began:
    one running as its key was revoked sent every line it had left on it."""
    mount = SecretMount(tmp_path, f"{key_line('acme', OLD)}\n{key_line('acme', NEW)}\n")
    router = HeldRouter()
    settings: dict[str, Any] = {
        "api_keys_file": mount.path,
        "api_keys_reload_s": RELOAD_S,
        "batch_redis_url": RedisUrl(redis_url),
        "batch_concurrency": 1,
    }
    async with recorded_edge(router, **settings) as edge, edge.client(OLD) as old:
        router.released.clear()
        bodies = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)]
        lines = [
            {"custom_id": f"line-{i}", "method": "POST", "url": wire.ENDPOINT, "body": b} for i, b in enumerate(bodies)
        ]
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        uploaded = await old.post("/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"})
        assert uploaded.status_code == 200, uploaded.text
        body = {"input_file_id": uploaded.json()["id"], "endpoint": wire.ENDPOINT, "completion_window": "24h"}
        created = await old.post("/batches", json=body)
        assert created.status_code == 200, created.text
        await until(lambda: _true(len(router.asked) == 1))  # its first line in flight, held
        mount.publish(key_line("acme", NEW) + "\n")  # the batch's key revoked; the tenant keeps its other key
        await until(lambda: _is(status(edge, OLD), 401))
        router.released.set()
        async with edge.client(NEW) as new:
            batch_url = f"/batches/{created.json()['id']}"
            await until(lambda: _completed(new, batch_url, 1))
            await asyncio.sleep(1.0)  # time enough for the lines left to go out, were they sent
            seen = (await new.get(batch_url)).json()
        assert [request.messages[0].content for request in router.asked] == ["q0"]
        assert seen["status"] == "in_progress" and seen["request_counts"]["completed"] == 1


def test_a_fifo_put_in_place_of_the_key_file_is_refused_at_once(tmp_path: Path) -> None:
    """Opened as a file is, a FIFO held the event loop (every request with it) until a writer came, then read as empty:
    every key revoked. Here a writer comes after 3 s, should the check be waiting for one."""
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    keys = LiveKeys(SecretStr(""), mount.path, RELOAD_S)
    version = tmp_path / "..fifo"
    version.mkdir()
    os.mkfifo(version / "api-keys")
    (tmp_path / "..data_tmp").symlink_to(version.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    writer = threading.Timer(3.0, _open_and_close_for_writing, [version / "api-keys"])
    writer.daemon = True
    writer.start()
    started = time.monotonic()
    try:
        assert keys.check() is False
    finally:
        writer.cancel()
    assert time.monotonic() - started < 1.0
    assert keys.ring.tenant_for(OLD) == "acme" and valid() == 0


def test_a_key_file_past_its_size_limit_is_refused_unread(tmp_path: Path) -> None:
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    keys = LiveKeys(SecretStr(""), mount.path, RELOAD_S)
    invalid = reloads("invalid")
    mount.publish(key_line("acme", NEW) + "\n#" + "x" * MAX_FILE_BYTES + "\n")  # a symlink led to a large file
    assert keys.check() is False
    assert keys.ring.tenant_for(OLD) == "acme" and keys.ring.tenant_for(NEW) is None
    assert reloads("invalid") == invalid + 1 and valid() == 0


def test_a_directory_put_in_place_of_the_key_file_is_refused_its_descriptor_closed(tmp_path: Path) -> None:
    """Opened, then refused by fdopen (a directory), its descriptor was never closed and the error escaped the check:
    one descriptor lost at every check until the edge could open no more (no connection taken), the file not counted
    invalid. It is refused as an unreadable file is."""
    mount = SecretMount(tmp_path, key_line("acme", OLD) + "\n")
    keys = LiveKeys(SecretStr(""), mount.path, RELOAD_S)
    version = tmp_path / "..directory"
    (version / "api-keys").mkdir(parents=True)  # a Secret mounted at the file's path: a directory there
    (tmp_path / "..data_tmp").symlink_to(version.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    open_before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert keys.check() is False
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert keys.ring.tenant_for(OLD) == "acme" and valid() == 0


def _open_and_close_for_writing(path: Path) -> None:
    with suppress(OSError):  # no reader waiting: nothing to let go
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


async def _completed(client: httpx.AsyncClient, url: str, count: int) -> bool:
    return bool((await client.get(url)).json()["request_counts"]["completed"] >= count)


async def _is(reading: Any, expected: int) -> bool:
    return bool(await reading == expected)


async def _true(value: bool) -> bool:
    return value
