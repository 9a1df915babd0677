"""A batch's output and error files, bounded by no upload, are written and downloaded a part at a time. Before, a
finish read every line's result at once, parsed them all, joined them and stored one record, a run resumed read every
result too, and a download read the file whole: hundreds of MB of answers, held several times over, killed the edge
that ran the finish, and the next to adopt the batch. Now a run resumed to end such a batch, and a download, hold about
a part, not the file; the files' bytes, part boundaries through multi-byte characters, download exactly (the openai
SDK's files.content, a real edge, on a real Redis and a Redis Cluster), as does a file stored whole by an edge of an
earlier version, and a finish run again writes the same files (one stored whole then, in parts)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import tracemalloc
import uuid
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from starlette.types import Message

from services.batches import wire
from services.batches.api import _Sent
from services.batches.output_files import PART_BYTES, PartWriter, part_field, stored_fields
from services.batches.runner import file_fields
from services.batches.store import RedisStore, Store, batch_key, file_key, readers_key, results_key
from tests.edge.conftest import opened_runner, proxied_redis, recorded_edge

TENANT = "default"  # an edge's without API keys
ANSWER = "é✓ answer " * 300  # about 4 KB of UTF-8, its characters of 1 to 3 bytes: parts split some of them


def result_line(batch_id: str, index: int) -> tuple[bool, str]:
    """A line's result as a run records it: every seventh an error."""
    ok = index % 7 != 0
    body = {"choices": [{"message": {"content": f"{index} {ANSWER}"}}]} if ok else {"error": {"message": str(index)}}
    line = wire.output_line(str(index), f"{batch_id}:{index}", 200 if ok else 400, body)
    return ok, line


async def put_results(store: Store, batch_id: str, lines: int) -> None:
    for start in range(0, lines, 500):
        written: dict[str, str | bytes] = {}
        for i in range(start, min(lines, start + 500)):
            ok, line = result_line(batch_id, i)
            written[str(i)] = json.dumps({"ok": ok, "line": line, "cost": "0", "cost_pending": False})
        await store.put(results_key(batch_id), written)


def expected(batch_id: str, lines: int, ok: bool) -> bytes:
    results = (result_line(batch_id, i) for i in range(lines))
    return "".join(line + "\n" for good, line in results if good is ok).encode()


async def put_batch(store: Store, batch_id: str, lines: int, status: str) -> None:
    """A batch of `lines` lines, all recorded, every line offered (none to a provider); its input file stored."""
    input_id = f"file-in-{batch_id}"
    content = b"".join(b'{"custom_id": "%d"}\n' % i for i in range(lines))
    await store.put(file_key(input_id), file_fields(TENANT, "in.jsonl", content, "batch", lines) | {"created_at": "1"})
    created = int(await store.clock(batch_key(batch_id)))
    batch: dict[str, str | bytes] = {"status": status, "tenant": TENANT, "key_id": "k", "total": str(lines)}
    batch |= {"input_file_id": input_id, "created_at": str(created), "expires_at": str(created + 86400)}
    batch |= {"endpoint": wire.ENDPOINT, "completion_window": "24h", "offered": "1"}
    await store.put(batch_key(batch_id), batch)
    await store.put(readers_key(input_id), {batch_id: "1"})
    await store.activate(batch_id, True)
    await put_results(store, batch_id, lines)


async def stored(store: Store, file_id: str) -> bytes:
    fields = (await store.fields([file_key(file_id)], ["parts", "bytes"]))[0]
    parts = [await store.content(file_key(file_id), part_field(i)) for i in range(int(fields["parts"]))]
    assert all(part is not None and len(part) <= PART_BYTES for part in parts)
    content = b"".join(part or b"" for part in parts)
    assert len(content) == int(fields["bytes"])
    return content


async def test_a_run_ending_a_batch_of_a_large_output_holds_about_a_part(redis_url: str) -> None:
    """A batch whose finish was cut past `finalizing` (its edge out of memory), run again by the next edge: the run,
    input file and all, holds a few parts, not its 30 MB of answers."""
    lines, batch_id = 8_000, "b-large"
    store = RedisStore(redis_url)
    try:
        await put_batch(store, batch_id, lines, "finalizing")
        async with opened_runner(store, retention_s=600) as runner:
            tracemalloc.start()
            try:
                await runner._adopt()
                assert batch_id in runner.runs
                await runner.runs[batch_id]
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        batch = await store.get(batch_key(batch_id))
        assert batch["status"] == b"completed" and not await store.is_active(batch_id)
        output = await stored(store, batch["output_file_id"].decode())
        assert output == expected(batch_id, lines, True)
        assert await stored(store, batch["error_file_id"].decode()) == expected(batch_id, lines, False)
    finally:
        await store.close()
    assert len(output) > 30 * PART_BYTES
    assert peak < 8 * PART_BYTES, f"a run ending a batch of a {len(output)} byte output held {peak} bytes"


async def test_output_files_download_exactly_and_a_finish_run_again_writes_the_same(any_redis_url: str) -> None:
    lines, batch_id = 1_000, f"b-{uuid.uuid4().hex}"
    store = RedisStore(any_redis_url)
    try:
        await put_batch(store, batch_id, lines, "in_progress")
        async with opened_runner(store, retention_s=600) as runner:
            await runner._finish(batch_id, await store.get(batch_key(batch_id)), "completed")
            output_id, error_id = f"file-{batch_id}-output", f"file-{batch_id}-error"
            first = [await store.get(file_key(i)) for i in (output_id, error_id)]
            assert int(first[0]["parts"]) > 3  # several parts, the last partial
            # Run again as it ended (the finish cut past its status): the same files, dated as before.
            await runner._finish(batch_id, await store.get(batch_key(batch_id)), "completed")
            assert [await store.get(file_key(i)) for i in (output_id, error_id)] == first
        # An output an edge of an earlier version stored whole, and its finish run again here: in parts now.
        old_id = f"b-old-{uuid.uuid4().hex}"
        await put_batch(store, old_id, 20, "completed")
        whole = file_fields(TENANT, f"{old_id}_output.jsonl", expected(old_id, 20, True)) | {"created_at": "7"}
        await store.put(file_key(f"file-{old_id}-output"), whole)
        whole_kept_id = "file-whole"  # and one that stays so
        await store.put(file_key(whole_kept_id), file_fields(TENANT, "w.jsonl", expected(old_id, 20, False)))
        await store.put(file_key(whole_kept_id), {"created_at": "7"})
        async with opened_runner(store, retention_s=600) as runner:
            await runner._finish(old_id, await store.get(batch_key(old_id)), "completed")
        rewritten = await store.get(file_key(f"file-{old_id}-output"))
        assert "content" not in rewritten and rewritten["created_at"] == b"7"
        assert await stored(store, f"file-{old_id}-output") == expected(old_id, 20, True)
    finally:
        await store.close()
    async with (
        recorded_edge(batch_redis_url=any_redis_url) as edge,
        openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0) as client,
    ):
        assert (await client.files.content(output_id)).content == expected(batch_id, lines, True)
        assert (await client.files.content(error_id)).content == expected(batch_id, lines, False)
        assert (await client.files.content(f"file-{old_id}-output")).content == expected(old_id, 20, True)
        assert (await client.files.content(whole_kept_id)).content == expected(old_id, 20, False)


async def test_a_download_of_a_large_output_holds_about_a_part(redis_url: str) -> None:
    file_id, written = "file-b-large-output", hashlib.sha256()
    store = RedisStore(redis_url)
    try:
        writer = PartWriter(store, file_key(file_id))
        for i in range(6_000):
            line = (f"{i:08d}é" * 400 + "\n").encode()  # 4 KB
            written.update(line)
            await writer.write(line)
        await writer.close()
        fields = stored_fields(TENANT, "b-large_output.jsonl", writer.size, writer.parts) | {"created_at": "1"}
        await store.put(file_key(file_id), fields)
    finally:
        await store.close()
    read, size = hashlib.sha256(), 0
    async with recorded_edge(batch_redis_url=redis_url) as edge, httpx.AsyncClient(base_url=edge.base_url) as http:
        tracemalloc.start()
        try:
            async with http.stream("GET", f"/files/{file_id}/content", timeout=30) as reply:
                assert reply.status_code == 200 and int(reply.headers["content-length"]) == writer.size
                async for chunk in reply.aiter_raw():  # taken and dropped: what is held is the edge's
                    read.update(chunk)
                    size += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert size == writer.size > 20 * PART_BYTES and read.digest() == written.digest()
    assert peak < 8 * PART_BYTES, f"a download of a {size} byte output held {peak} bytes"


async def test_an_output_stored_whole_by_a_finish_cut_before_its_batch_ended_is_kept_in_parts_alone(
    redis_url: str,
) -> None:
    """An edge of an earlier version stored a batch's output whole, then died before the batch's record said it ended
    (out of memory storing its error file): the batch still `finalizing`, the next edge's finish is no rerun of an
    ended one, yet the file's whole content must go as its parts are written, or the batch Redis (never evicting) holds
    the file twice for its retention, past what its tenant's quota counts."""
    batch_id = f"b-cut-{uuid.uuid4().hex}"
    output_id = f"file-{batch_id}-output"
    store = RedisStore(redis_url)
    try:
        await put_batch(store, batch_id, 20, "finalizing")
        whole = file_fields(TENANT, f"{batch_id}_output.jsonl", expected(batch_id, 20, True)) | {"created_at": "7"}
        await store.put(file_key(output_id), whole)
        async with opened_runner(store, retention_s=600) as runner:
            await runner._finish(batch_id, await store.get(batch_key(batch_id)), "completed")
        assert (await store.get(batch_key(batch_id)))["status"] == b"completed"
        assert "content" not in await store.get(file_key(output_id))
        assert await stored(store, output_id) == expected(batch_id, 20, True)
    finally:
        await store.close()


async def test_a_download_its_client_leaves_reads_no_more_of_its_parts(redis_url: str) -> None:
    """A client gone (closed, or dropped for reading too slowly) sends nothing more: its download reads no more
    parts from the store, and its upload place is free at once. It read on to the file's end, each part a read of a
    MiB sent nowhere (seconds of a large output, the place held), and a part slow to come held its place that long."""
    file_id, small_id = "file-b-left-output", "file-b-small-output"
    store = RedisStore(redis_url)
    try:
        for written, lines in ((file_id, 8 * 8192), (small_id, 1)):
            writer = PartWriter(store, file_key(written))
            for i in range(lines):
                await writer.write(f"{i:0127d}\n".encode())  # 128 bytes a line: 8 parts
            await writer.close()
            fields = stored_fields(TENANT, f"{written}.jsonl", writer.size, writer.parts) | {"created_at": "1"}
            await store.put(file_key(written), fields)
    finally:
        await store.close()
    async with (
        proxied_redis(redis_url) as (proxy, proxied_url),
        recorded_edge(batch_redis_url=proxied_url, batch_max_concurrent_uploads=1) as edge,
        httpx.AsyncClient(base_url=edge.base_url, timeout=30) as http,
    ):
        held = proxy.hold_command(part_field(5).encode())  # a slow read of a part not yet sent
        port = urlsplit(edge.base_url).port
        assert port is not None
        client = socket.socket()
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(10)
            client.connect(("127.0.0.1", port))
            client.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
            assert (await asyncio.to_thread(client.recv, 1024)).startswith(b"HTTP/1.1 200 ")
            assert (await http.get(f"/files/{small_id}/content")).status_code == 429  # the download holds the place
        finally:
            client.close()
        try:
            async with asyncio.timeout(5):
                while (await http.get(f"/files/{small_id}/content")).status_code == 429:
                    await asyncio.sleep(0.05)
            # Given up, not waited for: were the client's download still reading, it would wait here.
            assert not held.arrived.is_set() or held.abandoned.is_set()
        finally:
            held.released.set()


async def test_a_download_cancelled_as_a_part_is_read_ends_that_read_and_gives_back_its_place() -> None:
    """A download the server cancels (its shutdown past the grace period) as a part is read: that read ends with it,
    then the parts are closed and the place given back, and the cancellation is what the request ends on. The read
    went on in its own task, its generator then closed under it ("already running"), the place's closing raising that
    in place of the cancellation (ShutdownCut answers only that)."""
    reading, closed, released = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def parts() -> AsyncGenerator[bytes, None]:
        try:
            yield b"second"
            reading.set()
            await asyncio.Event().wait()  # a part slow to come
            yield b"never"
        finally:
            closed.set()

    async def give_back() -> None:
        released.set()

    rest = parts()
    place = AsyncExitStack()
    place.push_async_callback(give_back)  # the upload place, given back last
    place.push_async_callback(rest.aclose)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    response = _Sent(b"first", rest, 64, place)
    download = asyncio.create_task(response({"type": "http"}, receive, send))
    await asyncio.wait_for(reading.wait(), 5)
    download.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(download, 5)
    assert closed.is_set() and released.is_set()
    assert [m.get("body") for m in sent[1:]] == [b"first", b"second"]
