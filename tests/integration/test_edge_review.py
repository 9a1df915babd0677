"""A hostile tenant's requests the edge must answer with a clear 4xx (never a 500, a 5xx blaming the provider, or a
batch that never ends): deep nesting on every JSON route, ids naming the batch store's internal hashes, bodies
that grow past the gRPC message limit once encoded for the router, and batch files the router cannot take whole."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from llmrouter.validation import MAX_MESSAGES
from services.batches import runner as runner_module
from services.batches import wire
from services.edge.keys import key_line
from services.edge.off_loop import OFF_LOOP_BYTES
from services.edge.settings import EdgeSettings
from services.router.store import keys as router_keys
from tests.integration.conftest import Chain, free_port, start_edge
from tests.integration.test_policy_in_chain import extra_router
from tests.integration.test_provider_batches import finished
from tests.waiting import eventually, http_requests_ended

pytestmark = pytest.mark.heavy  # make test-heavy: batch and rate-limit windows waited out in real time

DEEP = b"[" * 50_000 + b"]" * 50_000  # past the interpreter's recursion limit
# The rate limit's window in the rate-limited tests (the router's is a minute): a batch refused for it is parked
# PARKED_S or more, well past PARK_LEAVE_S (5 s, so its run ends and gives up its place), and past each wait for
# what must not wait for that park (OTHER_S), yet its next window comes within seconds, not up to a minute.
RATE_WINDOW_S = 12
PARKED_S = 9
OTHER_S = 6


@pytest.fixture
async def edge(chain: Chain) -> AsyncIterator[tuple[str, dict[str, str], dict[str, str]]]:
    """(base url, a tenant's auth header, an admin's auth header): an edge with its batches in Redis."""
    run = secrets.token_hex(4)
    tenant, admin = (f"t-{run}", f"sk-t-{run}"), (f"ops-{run}", f"sk-ops-{run}")
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        api_keys=SecretStr(f"{key_line(*tenant)},{key_line(*admin)} admin"),
        batch_redis_url=RedisUrl(chain.redis_url),
        request_timeout_s=20,
    )
    server, task, channel = await start_edge(settings)
    try:
        yield (
            f"http://127.0.0.1:{settings.port}/v1",
            {"authorization": f"Bearer {tenant[1]}"},
            {"authorization": f"Bearer {admin[1]}"},
        )
    finally:
        server.should_exit = True
        await task
        await channel.close()


def assert_clear_400(reply: httpx.Response) -> None:
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


def line(custom_id: str, content: str, **body: object) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "cheap-model", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **body},
    }


async def test_deep_nesting_is_a_400_on_every_json_route(edge: tuple[str, dict[str, str], dict[str, str]]) -> None:
    base, tenant, admin = edge
    deep_line = b'{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {"stop": ' + DEEP + b"}}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert_clear_400(
            await http.post("/completions", content=b'{"prompt": "x", "stop": ' + DEEP + b"}", headers=tenant)
        )
        assert_clear_400(await http.put("/router/budgets/tenant/anyone", content=DEEP, headers=admin))
        files = {"file": ("deep.jsonl", deep_line)}
        assert_clear_400(await http.post("/files", files=files, data={"purpose": "batch"}, headers=tenant))


async def test_a_batch_line_with_a_unicode_line_separator_in_a_string_is_valid(
    edge: tuple[str, dict[str, str], dict[str, str]],
) -> None:
    """JSONL lines end at \\n only: U+2028, U+2029 and U+0085 are legal unescaped inside JSON strings."""
    base, tenant, _ = edge
    content = "\n".join(
        json.dumps(line(f"l{i}", f"{uuid.uuid4().hex} a{sep}b"), ensure_ascii=False)
        for i, sep in enumerate(("\u2028", "\u2029", "\u0085"))
    )
    client = AsyncOpenAI(base_url=base, api_key=tenant["authorization"][7:], max_retries=0)
    try:
        uploaded = await client.files.create(file=("seps.jsonl", content.encode()), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await finished(client, batch.id)
        assert batch.request_counts.completed == 3, batch
        # A byte-order mark (as Windows editors write one) opens a UTF-8 file; it is not part of the first line.
        bom = b"\xef\xbb\xbf" + json.dumps(line("first", uuid.uuid4().hex)).encode()
        assert (await client.files.create(file=("bom.jsonl", bom), purpose="batch")).bytes == len(bom)
    finally:
        await client.close()


async def test_a_batch_id_naming_a_batchs_results_hash_is_a_404(
    edge: tuple[str, dict[str, str], dict[str, str]],
) -> None:
    """`batch:<id>:results` is a hash of the store too, without a tenant field."""
    base, tenant, _ = edge
    client = AsyncOpenAI(base_url=base, api_key=tenant["authorization"][7:], max_retries=0)
    try:
        uploaded = await client.files.create(
            file=("one.jsonl", json.dumps(line("x", uuid.uuid4().hex)).encode()), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await finished(client, batch.id)
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for reply in (
            await http.get(f"/batches/{batch.id}:results", headers=tenant),
            await http.post(f"/batches/{batch.id}:results/cancel", headers=tenant),
        ):
            assert reply.status_code == 404, reply.text
            assert reply.json()["error"]["code"] == "not_found"


async def test_a_long_model_name_is_a_404_without_the_transports_words(
    edge: tuple[str, dict[str, str], dict[str, str]],
) -> None:
    """The router's refusal quotes the name: quoted whole, it overflowed the gRPC metadata limit, and the edge
    answered 429 with the transport's error text, or 502 blaming a provider."""
    base, tenant, _ = edge
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for length in (6_000, 20_000):
            body = {"model": "m" * length, "messages": [{"role": "user", "content": "hi"}]}
            reply = await http.post("/chat/completions", json=body, headers=tenant)
            assert reply.status_code == 404, (length, reply.text[:300])
            assert reply.json()["error"]["code"] == "model_not_found" and "metadata" not in reply.text


async def test_a_refusal_quoting_a_long_max_cost_is_a_400(edge: tuple[str, dict[str, str], dict[str, str]]) -> None:
    """0.00000001 followed by 20,000 zeros is a valid decimal, too small for any model: the router's refusal quoted
    it for every model, which overflowed gRPC's metadata limit, and the edge answered 502 blaming a provider. Past an
    amount's digits it is now refused as such, naming the field or header; a short cap too small is no model's."""
    base, tenant, _ = edge
    tiny = "0.00000001" + "0" * 20_000
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        ask = {"messages": [{"role": "user", "content": uuid.uuid4().hex}]}
        as_field = await http.post("/chat/completions", json={**ask, "max_cost_usd": tiny}, headers=tenant)
        header = {**tenant, "x-router-max-cost-usd": tiny[:12_000]}
        as_header = await http.post("/chat/completions", json=ask, headers=header)
        short = await http.post("/chat/completions", json={**ask, "max_cost_usd": tiny[:10]}, headers=tenant)
    for reply, param in ((as_field, "max_cost_usd"), (as_header, "x-router-max-cost-usd")):
        assert reply.status_code == 400, reply.text[:300]
        assert (reply.json()["error"]["code"], reply.json()["error"]["param"]) == ("invalid_value", param)
    assert short.status_code == 400 and short.json()["error"]["code"] == "no_eligible_model", short.text[:300]


EMOJI = "\U0001f600"  # 4 bytes of UTF-8, 12 once escaped as JSON (\\ud83d\\ude00)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_body_under_the_limit_that_grows_past_the_routers_message_limit_is_a_413(
    edge: tuple[str, dict[str, str], dict[str, str]], stream: bool
) -> None:
    """7.6 MB of emoji in a tool's description is under the 8 MiB body limit, but re-encoded as ASCII JSON for the
    router it is 23 MB, over gRPC's 16 MiB: that was a 502 'the provider failed to answer'."""
    base, tenant, _ = edge
    tools = [{"type": "function", "function": {"name": "f", "description": EMOJI * 1_900_000}}]
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "stream": stream}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for path in ("/chat/completions", "/router/decide"):
            reply = await http.post(path, content=json.dumps(body, ensure_ascii=False).encode(), headers=tenant)
            assert reply.status_code == 413, (path, reply.text[:300])
            assert reply.json()["error"]["code"] == "request_too_large"


async def test_a_batch_too_large_for_one_router_message_still_ends(
    edge: tuple[str, dict[str, str], dict[str, str]],
) -> None:
    """Lines are offered to the router's SubmitBatch in parts: a part over gRPC's 16 MiB (4 lines of 4.5 MB) failed
    the offer, and the batch was offered again every 15 s, never ending. (One line over it alone is now refused at
    upload, as over a request's bound: tests/edge/test_batch_line_bound.py.)"""
    base, tenant, _ = edge
    lines = [line(f"big-{i}", "a" * 4_500_000) for i in range(4)]  # each over the cheap model's window: a 400
    lines += [line("small", uuid.uuid4().hex)]
    client = AsyncOpenAI(base_url=base, api_key=tenant["authorization"][7:], max_retries=0, timeout=120)
    try:
        content = "\n".join(json.dumps(x) for x in lines).encode()
        uploaded = await client.files.create(file=("large.jsonl", content), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await finished(client, batch.id, timeout_s=40)
        assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 4), batch
        errors = [json.loads(x) for x in (await client.files.content(batch.error_file_id)).text.splitlines()]
        status = {e["custom_id"]: e["response"]["status_code"] for e in errors}
        assert status == {f"big-{i}": 400 for i in range(4)}, status
    finally:
        await client.close()


async def test_a_batch_lines_large_request_is_parsed_off_the_event_loop(
    edge: tuple[str, dict[str, str], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running batch parses each line, then its request, as the chat route parses a body: one over OFF_LOOP_BYTES in
    the parser's thread. On the event loop, a batch of three lines of 8 MB of empty arrays held every other request of
    the edge (/healthz too) for over a minute."""
    base, tenant, _ = edge
    parsed_on: list[tuple[str, int, int]] = []
    parse_line, parse_body = wire.parse_line, runner_module.parse_request

    def parsing_line(raw: bytes) -> dict[str, Any]:
        parsed_on.append(("line", len(raw), threading.get_ident()))
        return parse_line(raw)

    def parsing_body(body: bytes, max_messages: int = MAX_MESSAGES) -> Any:
        parsed_on.append(("request", len(body), threading.get_ident()))
        return parse_body(body, max_messages)

    monkeypatch.setattr(wire, "parse_line", parsing_line)
    monkeypatch.setattr(runner_module, "parse_request", parsing_body)
    # Past OFF_LOOP_BYTES, and refused as a request (a list where an object is due): no upstream is asked.
    large = line("large", "hi", metadata=[[]] * OFF_LOOP_BYTES)
    client = AsyncOpenAI(base_url=base, api_key=tenant["authorization"][7:], max_retries=0)
    try:
        uploaded = await client.files.create(file=("b.jsonl", json.dumps(large).encode()), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await finished(client, batch.id)).request_counts.failed == 1
    finally:
        await client.close()
    large_parses = [(what, thread) for what, size, thread in parsed_on if size > OFF_LOOP_BYTES]
    assert sorted({what for what, _ in large_parses}) == ["line", "request"], parsed_on
    assert threading.get_ident() not in [thread for _, thread in large_parses], large_parses


async def test_batch_files_are_read_off_the_event_loop(
    edge: tuple[str, dict[str, str], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking a 100 MB file takes most of a second: on the event loop it stalled every other caller of the edge,
    at upload and when the batch runs (its lines found again). A batch's creation reads only the count kept at
    upload, never the content."""
    base, tenant, _ = edge
    read_on: list[tuple[str, int]] = []
    check, index = wire.check_lines, wire.Lines.index

    def checking(content: bytes, max_line_bytes: int) -> int:
        read_on.append(("check", threading.get_ident()))
        return check(content, max_line_bytes)

    def indexing(content: bytes) -> wire.Lines:
        read_on.append(("index", threading.get_ident()))
        return index(content)

    monkeypatch.setattr(wire, "check_lines", checking)
    monkeypatch.setattr(wire.Lines, "index", indexing)
    client = AsyncOpenAI(base_url=base, api_key=tenant["authorization"][7:], max_retries=0)
    try:
        content = "\n".join(json.dumps(line(f"r{i}", uuid.uuid4().hex)) for i in range(3)).encode()
        uploaded = await client.files.create(file=("b.jsonl", content), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await finished(client, batch.id)).request_counts.completed == 3
    finally:
        await client.close()
    assert [what for what, _ in read_on] == ["check", "index"]  # upload, the run
    assert threading.get_ident() not in [thread for _, thread in read_on]


async def test_a_custom_id_with_a_lone_surrogate_is_refused_at_upload(
    edge: tuple[str, dict[str, str], dict[str, str]],
) -> None:
    """JSON lets a string escape a lone UTF-16 surrogate, which no request id can carry to the router: accepted at
    upload, the line failed every run of its batch, which never ended."""
    base, tenant, _ = edge
    bad = json.dumps(line("a\ud800b", uuid.uuid4().hex))  # travels as the escape \\ud800
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        reply = await http.post(
            "/files", files={"file": ("s.jsonl", bad.encode())}, data={"purpose": "batch"}, headers=tenant
        )
    assert_clear_400(reply)
    assert "line 1" in reply.json()["error"]["message"]


async def test_a_chunked_upload_past_the_file_limit_is_refused_as_it_arrives(chain: Chain) -> None:
    """A chunked upload declares no length: the form parser spooled every byte to disk, however many, and the
    413 came only once the caller stopped sending. Here the caller never stops; the 413 must come anyway."""
    settings = EdgeSettings(
        port=free_port(), router_addr=chain.router_addr, batch_max_file_bytes=1024, access_log="off"
    )
    server, task, channel = await start_edge(settings)
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    try:
        head = (
            "POST /v1/files HTTP/1.1\r\nhost: edge\r\ntransfer-encoding: chunked\r\n"
            "content-type: multipart/form-data; boundary=b\r\n\r\n"
        )
        part = b'--b\r\ncontent-disposition: form-data; name="file"; filename="f.jsonl"\r\n\r\n'
        writer.write(head.encode() + b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"x" * 65_536
        for _ in range(80):  # 5 MiB, and no last chunk: the upload is never finished
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # buffered: an edge that stops reading is fine
        status = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status.split(b" ")[1] == b"413", status
    finally:
        writer.close()
        server.should_exit = True
        await task
        await channel.close()


async def test_a_batch_body_cut_short_by_the_client_is_not_a_500(
    edge: tuple[str, dict[str, str], dict[str, str]],
) -> None:
    base, tenant, _ = edge
    before, ended = http_requests_ended("/v1/batches", "500"), http_requests_ended("/v1/batches")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(base.split(":")[2].split("/")[0]))
    try:
        writer.write(
            b"POST /v1/batches HTTP/1.1\r\nhost: edge\r\ncontent-length: 1000\r\n"
            + f"authorization: {tenant['authorization']}\r\n\r\n".encode()
            + b'{"input_file_id": '
        )
        await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    await eventually(lambda: http_requests_ended("/v1/batches") > ended, "the edge ended the request")
    assert http_requests_ended("/v1/batches", "500") == before


class RateLimitedEdge:
    """An edge with two slots for batch lines, before a router admitting 2 requests a window (RATE_WINDOW_S) per
    key, and a tenant for each name."""

    def __init__(self, base: str, keys: dict[str, str]) -> None:
        self.clients = {name: AsyncOpenAI(base_url=base, api_key=key, max_retries=0) for name, key in keys.items()}

    async def submit(self, name: str, count: int) -> str:
        content = "\n".join(json.dumps(line(f"{name}-{i}", uuid.uuid4().hex)) for i in range(count)).encode()
        uploaded = await self.clients[name].files.create(file=("b.jsonl", content), purpose="batch")
        batch = await self.clients[name].batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return batch.id

    async def parked(self, name: str, count: int) -> str:
        """A batch of `count` > 2 lines, 2 of them answered and the rest refused until the next window, PARKED_S or
        more from now."""
        while RATE_WINDOW_S - time.time() % RATE_WINDOW_S < PARKED_S + 1:
            await asyncio.sleep(0.1)
        batch_id = await self.submit(name, count)
        for _ in range(100):
            if (await self.clients[name].batches.retrieve(batch_id)).request_counts.completed == 2:  # type: ignore[union-attr]
                return batch_id
            await asyncio.sleep(0.1)
        raise AssertionError("the batch's first 2 lines were not answered")


@pytest.fixture
async def rate_limited(chain: Chain) -> AsyncIterator[RateLimitedEdge]:
    async with rate_limited_edge(chain) as edge:
        yield edge


@asynccontextmanager
async def rate_limited_edge(chain: Chain, **settings: Any) -> AsyncIterator[RateLimitedEdge]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(router_keys, "RATE_WINDOW_S", RATE_WINDOW_S)
        async with _rate_limited_edge(chain, **settings) as edge:
            yield edge


@asynccontextmanager
async def _rate_limited_edge(chain: Chain, **settings: Any) -> AsyncIterator[RateLimitedEdge]:
    limited = await extra_router(chain, rate_limit_rpm=2, redis_url=None)
    run = secrets.token_hex(4)
    keys = {name: (f"{name}-{run}", f"sk-{name}-{run}") for name in ("busy", "other")}
    edge_settings = EdgeSettings(
        port=free_port(),
        router_addr=f"127.0.0.1:{limited.port}",
        api_keys=SecretStr(",".join(key_line(*k) for k in keys.values())),
        batch_concurrency=2,
        access_log="off",
        **settings,
    )
    server, task, channel = await start_edge(edge_settings)
    edge = RateLimitedEdge(f"http://127.0.0.1:{edge_settings.port}/v1", {name: k[1] for name, k in keys.items()})
    try:
        yield edge
    finally:
        for client in edge.clients.values():
            await client.close()
        server.should_exit = True
        await task  # a parked batch does not hold up the edge's stop
        await channel.close()
        await limited.stop(1)


async def test_a_rate_limited_tenants_batch_does_not_hold_up_another_tenants(rate_limited: RateLimitedEdge) -> None:
    await rate_limited.parked("busy", 6)  # 2 admitted this window, 4 refused until the next
    other = await rate_limited.submit("other", 1)
    done = await finished(rate_limited.clients["other"], other, timeout_s=OTHER_S)  # within busy's park
    assert done.request_counts.completed == 1


async def test_a_parked_batch_gives_its_running_place_to_another_tenants(chain: Chain) -> None:
    """A batch parked until the rate limit's next window kept its running place (and its input file) meanwhile: on
    an edge running one batch at a time, another tenant's batch waited for that window. Parked in the store, the
    batch is resumed at its retry time and completes."""
    async with rate_limited_edge(chain, batch_redis_url=chain.redis_url, batch_max_running=1) as edge:
        busy = await edge.parked("busy", 3)  # 2 answered this window, 1 refused until the next
        other = await edge.submit("other", 1)
        done = await finished(edge.clients["other"], other, timeout_s=OTHER_S)  # within busy's park
        assert done.request_counts.completed == 1
        resumed = await finished(edge.clients["busy"], busy, timeout_s=RATE_WINDOW_S + 10)  # at the next window
    assert resumed.status == "completed" and resumed.request_counts.completed == 3


async def test_a_batch_parked_until_its_retry_time_is_cancelled_meanwhile(rate_limited: RateLimitedEdge) -> None:
    client = rate_limited.clients["busy"]
    busy = await rate_limited.parked("busy", 4)
    await client.batches.cancel(busy)
    done = await finished(client, busy, timeout_s=5)  # not at the next window, when its lines could run
    assert done.status == "cancelled"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
    output = (await client.files.content(done.output_file_id)).text.splitlines()
    assert len({json.loads(o)["custom_id"] for o in output}) == 2  # the lines answered, each once


async def test_a_parked_batch_cancelled_while_its_edge_is_full_ends_once_a_place_frees(chain: Chain) -> None:
    """Parked in the store, a cancelled batch is run again as soon as a place frees, not at its retry time."""
    async with rate_limited_edge(chain, batch_redis_url=chain.redis_url, batch_max_running=1) as edge:
        busy = await edge.parked("busy", 3)
        chain.budget.latency = 2.0  # the other tenant's batch holds the one place meanwhile
        try:
            await edge.submit("other", 1)
            await edge.clients["busy"].batches.cancel(busy)
            done = await finished(edge.clients["busy"], busy, timeout_s=PARKED_S - 2)  # not at the next window
        finally:
            chain.budget.latency = 0.0
    assert done.status == "cancelled"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)


async def test_a_batch_waiting_for_a_place_expires_at_the_end_of_its_window(chain: Chain) -> None:
    """On an edge running one batch at a time, another tenant's line holds the place for 6 s: the batch waiting for
    it ends `expired` at its 3 s window's end (at most 3.6 s on), its line never sent, not once the place frees
    (the other batch still in progress then)."""
    async with rate_limited_edge(chain, batch_redis_url=chain.redis_url, batch_max_running=1, batch_window_s=3) as edge:
        chain.budget.latency = 6.0  # the edge's stop waits for this line: no longer than the check needs
        try:
            sent = len(chain.budget.requests) + len(chain.premium.requests)
            other = await edge.submit("other", 1)
            await eventually(
                lambda: len(chain.budget.requests) + len(chain.premium.requests) > sent,
                "its run takes the one place, its line at the upstream",
            )
            client = edge.clients["busy"]
            busy = await edge.submit("busy", 1)
            done = await finished(client, busy, timeout_s=6)
            assert (await edge.clients["other"].batches.retrieve(other)).status == "in_progress"  # its line runs
            errors = (await client.files.content(done.error_file_id)).text.splitlines()
        finally:
            chain.budget.latency = 0.0
    assert done.status == "expired" and done.expired_at <= done.expires_at + 2
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
    assert [json.loads(e)["error"]["code"] for e in errors] == ["batch_expired"]


async def test_a_batch_the_router_keeps_refusing_expires_at_the_end_of_its_window(chain: Chain) -> None:
    """Lines refused until the next window are never sent once the batch's 3 s window ends: the batch ends then,
    `expired`, with the lines answered in its output file and the others in its error file as OpenAI writes them."""
    async with rate_limited_edge(chain, batch_window_s=3) as edge:
        client = edge.clients["busy"]
        busy = await edge.parked("busy", 5)
        done = await finished(client, busy, timeout_s=PARKED_S - 2)  # not at the next window, when its lines run
        errors = (await client.files.content(done.error_file_id)).text.splitlines()
        output = (await client.files.content(done.output_file_id)).text.splitlines()
    assert done.status == "expired" and done.expired_at >= done.expires_at == done.created_at + 3
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 3)
    assert len({json.loads(o)["custom_id"] for o in output}) == 2
    message = "This request could not be executed before the completion window expired."
    expected = {"code": "batch_expired", "message": message}
    assert [(e["response"], e["error"]) for e in map(json.loads, errors)] == [(None, expected)] * 3
    assert {json.loads(e)["custom_id"] for e in errors} | {json.loads(o)["custom_id"] for o in output} == {
        f"busy-{i}" for i in range(5)
    }
