"""EDGE_BATCH_MAX_CONCURRENT_UPLOADS bounds the file uploads and downloads in progress (each holds a file in
memory): a caller that stops reading a download, or stops sending an upload, loses its place once its transfer
has made no progress for EDGE_WRITE_TIMEOUT_S (EDGE_READ_TIMEOUT_S for an upload), or an upload once it has come
slower than EDGE_MIN_BODY_RATE on average after EDGE_BODY_GRACE_S, its connection dropped, so a few stalled or
trickling callers cannot lock everyone else out with 429s."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import quiet_edge_settings, served_edge
from tests.integration.test_batch_listing import upload_places_taken
from tests.waiting import eventually

STALL_S = 1.0
MIN_RATE = 64 * 1024  # bytes/s
GRACE_S = 2.0


def batch_file(megabytes: float) -> bytes:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 1000}]}
    line = json.dumps({"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": body})
    count = max(1, int(megabytes * 1024 * 1024) // len(line))
    return "".join(line.replace('"c"', f'"c{i}"', 1) + "\n" for i in range(count)).encode()


@pytest.fixture
async def edge() -> AsyncIterator[tuple[int, httpx.AsyncClient]]:
    """An anonymous edge, its batches in process, taking one upload or download at a time; no router."""
    settings = quiet_edge_settings(
        "127.0.0.1:1",
        batch_max_concurrent_uploads=1,
        read_timeout_s=STALL_S,
        write_timeout_s=STALL_S,
        min_body_rate=MIN_RATE,
        body_grace_s=GRACE_S,
    )
    async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield settings.port, client


@pytest.fixture
def places(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tenant of each upload or download place the edge takes."""
    return upload_places_taken(monkeypatch)


async def held(places: list[str]) -> None:
    await eventually(lambda: places, "the stalled transfer holds its place")


async def upload(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post("/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"})


async def place_freed(client: httpx.AsyncClient, within_s: float) -> float:
    """How long until an upload takes the one place again (a 200, not a 429)."""
    start = time.monotonic()
    while (reply := await upload(client, batch_file(0))).status_code == 429:
        if time.monotonic() - start > within_s:
            pytest.fail(f"the place was still held {within_s} s on")
        await asyncio.sleep(0.1)
    assert reply.status_code == 200, reply.text
    return time.monotonic() - start


def stalled_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small receive window
    s.settimeout(10)  # its reads, run in a thread: the edge answers on this test's event loop
    s.connect(("127.0.0.1", port))
    return s


async def test_a_download_its_caller_stops_reading_frees_its_place(edge: tuple[int, httpx.AsyncClient]) -> None:
    port, client = edge
    uploaded = await upload(client, batch_file(12))  # past what the sockets' buffers take
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    stalled = stalled_socket(port)
    try:
        stalled.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        # And then it reads no more. Its head sent, its place is held (taken before the content is read).
        assert (await asyncio.to_thread(stalled.recv, 1024)).startswith(b"HTTP/1.1 200 ")
        assert (await client.get(f"/files/{file_id}/content")).status_code == 429  # the place is its
        assert await place_freed(client, within_s=STALL_S + 5) > STALL_S / 2
        with pytest.raises(ConnectionResetError):  # dropped: what it had not read is gone
            while await asyncio.to_thread(stalled.recv, 1024 * 1024):
                pass
    finally:
        stalled.close()
    whole = await client.get(f"/files/{file_id}/content")  # a caller who reads gets it all
    assert whole.status_code == 200 and len(whole.content) == int(uploaded.json()["bytes"])


async def test_a_download_read_slowly_but_steadily_is_not_dropped(edge: tuple[int, httpx.AsyncClient]) -> None:
    port, client = edge
    uploaded = await upload(client, batch_file(8))
    file_id, size = uploaded.json()["id"], int(uploaded.json()["bytes"])
    slow = stalled_socket(port)
    try:
        slow.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode())
        received, start = 0, time.monotonic()
        while chunk := await asyncio.to_thread(slow.recv, 1024 * 1024):
            received += len(chunk)
            if time.monotonic() - start < 3 * STALL_S:  # for longer than the deadline: a pause under it each time
                await asyncio.sleep(STALL_S / 2)
    finally:
        slow.close()
    assert received > size  # the head and the whole content


async def test_an_upload_its_caller_stops_sending_frees_its_place(
    edge: tuple[int, httpx.AsyncClient], places: list[str]
) -> None:
    port, client = edge
    stalled = stalled_socket(port)
    try:
        head = (
            "POST /v1/files HTTP/1.1\r\nHost: edge\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000000\r\n\r\n"
        )
        part = '--b\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n\r\n{"custom_id": '
        stalled.sendall((head + part).encode())  # and then no more
        await held(places)
        assert (await upload(client, batch_file(1))).status_code == 429
        await place_freed(client, within_s=STALL_S + 5)
        assert (await asyncio.to_thread(stalled.recv, 1024)).startswith(b"HTTP/1.1 408 ")
    finally:
        stalled.close()


UPLOAD_HEAD = (
    "POST /v1/files HTTP/1.1\r\nHost: edge\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    "Connection: close\r\nContent-Length: %d\r\n\r\n"
)


def multipart(content: bytes) -> bytes:
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n\r\n' + content
    return part + b'\r\n--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'


async def test_an_upload_its_caller_trickles_frees_its_place(
    edge: tuple[int, httpx.AsyncClient], places: list[str]
) -> None:
    """A byte every half read timeout never stalls, but is far under the least rate: refused once the grace ends."""
    port, client = edge
    body = multipart(batch_file(1))
    trickling = stalled_socket(port)

    async def trickle() -> None:
        trickling.sendall((UPLOAD_HEAD % len(body)).encode() + body[:100])
        for byte in body[100:]:
            await asyncio.sleep(STALL_S / 2)
            try:
                trickling.sendall(bytes([byte]))
            except OSError:  # refused and closed
                return

    sender = asyncio.create_task(trickle())
    try:
        await held(places)
        assert (await upload(client, batch_file(0))).status_code == 429  # the place is its
        assert await place_freed(client, within_s=GRACE_S + 5) > GRACE_S - 0.5
        status, _, error = (await asyncio.to_thread(trickling.recv, 4096)).partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408 "), status
        assert json.loads(error)["error"]["code"] == "request_timeout"
    finally:
        sender.cancel()
        trickling.close()


async def test_a_body_trickled_after_its_429_is_cut_off(edge: tuple[int, httpx.AsyncClient], places: list[str]) -> None:
    """Refused on its head (no place free), an upload's body is read and dropped: trickled, not for ever. Its
    connection is closed once the grace ends, with no second answer after the 429."""
    port, _ = edge
    with stalled_socket(port) as holder, stalled_socket(port) as trickling:
        holder.sendall((UPLOAD_HEAD % 1_000_000).encode())  # holds the place until its read timeout
        await held(places)
        trickling.sendall((UPLOAD_HEAD % 1_000_000).replace("Connection: close", "Connection: keep-alive").encode())
        start, received = time.monotonic(), b""
        while time.monotonic() - start < GRACE_S + 5:
            try:
                trickling.sendall(b"x")
                readable: tuple[list[Any], list[Any], list[Any]] = await asyncio.to_thread(
                    select.select, [trickling], [], [], STALL_S / 2
                )
                if readable[0]:
                    if not (chunk := trickling.recv(65536)):
                        break
                    received += chunk
            except (ConnectionResetError, BrokenPipeError):  # closed with what it sent unread: a reset
                break
        else:
            pytest.fail(f"still open {GRACE_S + 5} s on")
    assert time.monotonic() - start > GRACE_S - 0.5
    assert received.startswith(b"HTTP/1.1 429 ") and received.count(b"HTTP/1.1") == 1, received


async def test_an_upload_at_a_reasonable_rate_is_taken_past_the_grace(edge: tuple[int, httpx.AsyncClient]) -> None:
    """Sent at four times the least rate for well over the grace, after a pause at its start: read whole."""
    port, _ = edge
    content = batch_file(1)
    body = multipart(content)
    piece = MIN_RATE * 4 // 10
    with stalled_socket(port) as s:
        s.sendall((UPLOAD_HEAD % len(body)).encode())
        await asyncio.sleep(STALL_S * 0.8)  # nothing yet, under the read timeout
        start = time.monotonic()
        for at in range(0, len(body), piece):
            s.sendall(body[at : at + piece])
            await asyncio.sleep(0.1)
        assert time.monotonic() - start > GRACE_S
        reply = await asyncio.to_thread(s.recv, 65536)
    status, _, created = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), reply
    assert json.loads(created)["bytes"] == len(content)


@pytest.mark.parametrize("setting", [{"min_body_rate": -1}, {"body_grace_s": 0}, {"body_grace_s": -1}])
def test_the_least_body_rate_settings_are_checked(setting: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        EdgeSettings(**setting)  # type: ignore[arg-type]


async def test_one_tenant_holds_at_most_half_the_places(places: list[str]) -> None:
    """With keys, a tenant's stalled uploads take at most half the places: another tenant still finds one."""
    settings = quiet_edge_settings(
        "127.0.0.1:1",
        api_keys=SecretStr(f"{key_line('mallory', 'sk-m')},{key_line('alice', 'sk-a')}"),
        batch_max_concurrent_uploads=2,
        read_timeout_s=30,
    )
    async with served_edge(settings) as base:
        with stalled_socket(settings.port) as stalled:
            head = (
                "POST /v1/files HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer sk-m\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n"
            )
            stalled.sendall(head.encode())  # and then no more: it holds its place until the read timeout
            await held(places)
            replies = {}
            for key in ("sk-m", "sk-a"):
                async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
                    replies[key] = await upload(client, batch_file(0))
            assert replies["sk-m"].status_code == 429 and "1 of your file uploads" in replies["sk-m"].text
            assert replies["sk-a"].status_code == 200, replies["sk-a"].text
