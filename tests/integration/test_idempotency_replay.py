"""A retry of a finished unstreamed request sent with an Idempotency-Key gets its first answer back (services/edge/
replays.py), through the real edge and router with the official openai SDK: byte for byte, marked
`Idempotent-Replayed: true`, reaching no router or upstream and charged nothing again. A retry whose route or body
differs is a 422 `idempotency_key_mismatch`, never another request's answer; a chat stream that ended whole is sent
again as its events (to a retry reaching its edge, or another sharing its Redis, while they are still being written,
once written); the retry of a
stream cut before its end, and one of an answer over the edge's limit, keep the router's 409. Kept in the edge's
Redis, which its replicas share, when it has one; in the edge's memory otherwise. Before, every such retry was the
409."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import openai
import pytest
import redis.asyncio as redis
from pydantic import SecretStr

from llmrouter.redis_url import RedisUrl
from services.edge import app as app_module
from services.edge import idempotency
from services.edge.keys import key_line
from services.edge.replays import KEPT_BYTES, PREFIX, Kept, Replays
from services.edge.settings import EdgeSettings
from tests.fakes.lossy_proxy import HeldCommand, LossyProxy
from tests.fakes.server import TOOL_CUE, Fault
from tests.integration.conftest import Chain, free_port, served_edge
from tests.integration.test_chain import unique
from tests.integration.test_idempotency_key import Tenant, answered, ask, asked, complete, tenant_before
from tests.integration.test_responses_api import RESPONSE_TOOLS
from tests.waiting import eventually


@pytest.fixture
async def tenant(chain: Chain) -> AsyncIterator[Tenant]:
    async with tenant_before(chain, chain.router_addr) as served:
        yield served


async def test_the_answer_is_sent_again_byte_for_byte_and_charged_once(tenant: Tenant) -> None:
    client = tenant.client(max_retries=0)
    body = ask()
    try:
        first = await answered(client, body, "order-1")
        again = await answered(client, body, "order-1")
        parsed = await client.chat.completions.create(**body, extra_headers={"Idempotency-Key": "order-1"})
    finally:
        await client.close()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # the same id, created time, content and cost
    assert parsed.id == first.json()["id"] and parsed.choices[0].message.content
    for header in ("x-request-id", "x-router-cost-usd", "x-router-model"):
        assert again.headers[header] == first.headers[header]
    assert asked(tenant, body) == 1  # neither retry reached an upstream
    [record] = await tenant.ledger()
    assert record["cost_usd"] == first.headers["x-router-cost-usd"]


async def test_the_sdks_retry_after_its_own_timeout_gets_the_answer_once_it_is_there(tenant: Tenant) -> None:
    """The first's caller gone (the SDK's client-side timeout), the request is served to its end all the same and its
    answer kept: a retry while it runs is the 409 telling it in flight, and one after it the answer, charged once."""
    client = tenant.client(timeout=3, max_retries=0)
    body = ask()
    tenant.chain.budget.holding_answers = True
    try:
        with pytest.raises(openai.APITimeoutError):
            await complete(client, body, False, "slow-order")
        with pytest.raises(openai.ConflictError) as in_flight:
            await complete(client, body, False, "slow-order")
        assert "still in flight" in in_flight.value.message
        tenant.chain.budget.holding_answers = False

        async def replayed() -> bool:
            try:
                again = await answered(client, body, "slow-order")
            except openai.ConflictError as refused:
                assert "still in flight" in refused.message  # not yet answered: never the 409 of a charge
                return False
            assert again.headers["idempotent-replayed"] == "true"
            return True

        await eventually(replayed, "the retry gets the first's answer")
    finally:
        tenant.chain.budget.holding_answers = False
        await client.close()
    assert asked(tenant, body) == 1
    [record] = await tenant.ledger()
    assert record["outcome"] == "ok"


async def test_another_body_or_route_with_the_key_is_a_422_and_reaches_no_router(tenant: Tenant) -> None:
    client = tenant.client(max_retries=2)  # a 422 is not retried
    try:
        await answered(client, ask(), "order-2")
        await complete(client, ask(), True, "order-3")  # a stream: its digest kept, its events not
        for body, stream, key in ((ask(), False, "order-2"), (ask(), True, "order-3")):
            with pytest.raises(openai.UnprocessableEntityError) as refused:
                await complete(client, body, stream, key)
            error = refused.value.body
            assert isinstance(error, dict)
            assert error["code"] == "idempotency_key_mismatch" and error["param"] == "Idempotency-Key"
        headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": "order-2"}
        async with httpx.AsyncClient(timeout=20) as http:
            other_route = await http.post(
                f"{tenant.base_url}/completions", json={"model": "cheap-model", "prompt": "hi"}, headers=headers
            )
        assert other_route.status_code == 422 and other_route.json()["error"]["code"] == "idempotency_key_mismatch"
    finally:
        await client.close()
    assert len(await tenant.ledger()) == 2  # the first two alone


async def test_an_answer_over_the_limit_keeps_the_409(chain: Chain) -> None:
    async with tenant_before(chain, chain.router_addr, idempotency_max_answer_bytes=64) as tenant:
        client = tenant.client(max_retries=0)
        body = ask()
        try:
            cost = await complete(client, body, False, "big")
            with pytest.raises(openai.ConflictError) as refused:
                await complete(client, body, False, "big")
            assert f"it was charged {cost} USD" in refused.value.message
            with pytest.raises(openai.UnprocessableEntityError):  # its digest kept all the same
                await complete(client, ask(), False, "big")
        finally:
            await client.close()


async def test_the_edges_redis_keeps_the_answer_for_every_replica(chain: Chain, redis_url: str) -> None:
    async with (
        tenant_before(chain, chain.router_addr, batch_redis_url=redis_url) as one,
        tenant_before(chain, chain.router_addr, like=one, batch_redis_url=redis_url) as other,
        tenant_before(chain, chain.router_addr, like=one) as in_memory,
    ):
        clients = [one.client(max_retries=0), other.client(max_retries=0), in_memory.client(max_retries=0)]
        body = ask()
        try:
            first = await answered(clients[0], body, "shared")
            again = await answered(clients[1], body, "shared")  # another replica, the same Redis
            assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
            with pytest.raises(openai.ConflictError):  # an edge keeping its own in memory knows none of it
                await complete(clients[2], body, False, "shared")
        finally:
            for client in clients:
                await client.close()
        assert len(await one.ledger()) == 1


async def test_a_finished_stream_is_sent_again_as_its_events_and_charged_once(tenant: Tenant) -> None:
    """A chat completion's stream that ended whole: its retry gets its events again, byte for byte, as a stream
    (text/event-stream, `Idempotent-Replayed: true`), reaching no upstream. Before, the 409."""
    body = streamed(ask())
    headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": "streamed"}
    async with httpx.AsyncClient(timeout=20) as http:
        first = await http.post(f"{tenant.base_url}/chat/completions", json=body, headers=headers)
        again = await http.post(f"{tenant.base_url}/chat/completions", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.content == first.content and first.content.endswith(b"data: [DONE]\n\n")
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert asked(tenant, body) == 1
    assert len(await tenant.ledger()) == 1


@pytest.mark.parametrize("route", ["chat", "completions", "responses"])
@pytest.mark.parametrize("how", ["cut-upstream", "over-the-limit"])
async def test_a_stream_cut_before_its_end_or_over_the_limit_is_not_kept(chain: Chain, how: str, route: str) -> None:
    """A stream that did not end whole (an error event after part of it), or is longer than
    EDGE_IDEMPOTENCY_MAX_ANSWER_BYTES, is kept as its digest alone, on every route: its retry is the 409 telling its
    charge, another body the 422."""
    limit: dict[str, Any] = {"idempotency_max_answer_bytes": 64} if how == "over-the-limit" else {}
    async with tenant_before(chain, chain.router_addr, **limit) as tenant:
        if how == "cut-upstream":
            chain.budget.enqueue(Fault.cut(after_chunks=3))  # after some text went out
        path, body, prompt = streamed_on(route)
        try:
            # Read to its end (an SDK stops at an error event, and may leave before the edge ends its stream), and
            # sent again as read: the same bytes.
            headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": "cut"}
            async with httpx.AsyncClient(base_url=tenant.base_url, headers=headers, timeout=20) as http:
                first = await http.post(path, json=body)
                again = await http.post(path, json=body)
                other = await http.post(path, json=streamed_on(route)[1])
            assert first.status_code == 200 and ended_whole(route, first.content) == (how == "over-the-limit")
            assert again.status_code == 409 and "it was charged" in again.json()["error"]["message"]
            assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_mismatch"
        finally:
            chain.budget.faults.clear()
        assert upstream_asked(tenant, prompt) == 1


def streamed_on(route: str) -> tuple[str, dict[str, Any], str]:
    """A streamed request of `route` (its path under /v1, and body) and its prompt, unique."""
    chat = ask()
    prompt = chat["messages"][0]["content"]
    if route == "completions":
        return "/completions", {"model": "cheap-model", "max_tokens": 20, "prompt": prompt, "stream": True}, prompt
    if route == "responses":
        return "/responses", {"model": "cheap-model", "max_output_tokens": 20, "input": prompt, "stream": True}, prompt
    return "/chat/completions", streamed(chat), prompt


def ended_whole(route: str, content: bytes) -> bool:
    """Whether a stream of `route` as its caller read it ended whole: [DONE], or the Responses' last event (completed,
    or incomplete at its token limit), never response.failed."""
    if route == "responses":
        ended = b"event: response.completed\n" in content or b"event: response.incomplete\n" in content
        return ended and b"event: response.failed\n" not in content
    return content.endswith(b"data: [DONE]\n\n")


def legacy_text(content: bytes) -> str:
    """The text a legacy completion's stream carries, joined from its events."""
    events = [line.removeprefix(b"data: ") for line in content.split(b"\n\n") if line.startswith(b"data: {")]
    return "".join(choice["text"] for event in events for choice in json.loads(event)["choices"])


def upstream_asked(tenant: Tenant, prompt: str) -> int:
    return sum(prompt in str(r.body) for r in tenant.chain.budget.requests)


@pytest.mark.parametrize("route", ["completions", "responses"])
async def test_a_finished_stream_of_the_legacy_or_responses_route_is_sent_again_as_its_events(
    tenant: Tenant, route: str
) -> None:
    """A legacy completion's or a Responses stream that ended whole is sent again as the chat route's is: its events
    byte for byte (text/event-stream, `Idempotent-Replayed: true`), read by the openai SDK as the stream it was,
    reaching no upstream and charged once. Before, its retry was the router's 409."""
    _, body, prompt = streamed_on(route)
    fields = {name: value for name, value in body.items() if name != "stream"}
    client = tenant.client(max_retries=0)
    create = client.completions if route == "completions" else client.responses
    headers = {"Idempotency-Key": f"streamed-{route}"}
    try:
        answers = []
        for _ in range(2):  # each read to its end before the next is sent
            raw = await create.with_raw_response.create(**fields, stream=True, extra_headers=headers)
            await raw.http_response.aread()
            answers.append(raw.http_response)
        first, again = answers
        stream = await create.create(**fields, stream=True, extra_headers=headers)  # as an SDK reads the replay
        events = [event async for event in stream]
    finally:
        await client.close()
    assert first.status_code == again.status_code == 200 and ended_whole(route, first.content)
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.content == first.content
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    if route == "completions":
        text = "".join(choice.text for event in events for choice in event.choices)
        assert text and text == legacy_text(first.content)
    else:
        assert events[-1].type in ("response.completed", "response.incomplete")
        assert events[-1].response.id.encode() in first.content
    assert upstream_asked(tenant, prompt) == 1
    assert len(await tenant.ledger()) == 1


@pytest.mark.parametrize(
    ("route", "field"), [("chat", "events"), ("completions", "retold_events"), ("responses", "retold_events")]
)
async def test_a_streams_events_are_kept_where_an_edge_before_reads_them_as_its_route_did(
    chain: Chain, redis_url: str, route: str, field: str
) -> None:
    """A legacy or Responses stream's chat events are kept under `retold_events`, which an edge of the version before
    (beside this one in a rolling upgrade, sharing its Redis) reads as a digest alone: its retry there is the 409. Under
    `events`, as a chat stream's, that edge took them for the route's JSON answer to retell: a 500."""
    path, body, _ = streamed_on(route)
    store = redis.Redis.from_url(redis_url)
    try:
        async with tenant_before(chain, chain.router_addr, batch_redis_url=redis_url) as tenant:
            headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": f"kept-{route}"}
            async with httpx.AsyncClient(base_url=tenant.base_url, headers=headers, timeout=20) as http:
                first = await http.post(path, json=body)
            assert first.status_code == 200 and ended_whole(route, first.content)
            key = PREFIX + first.headers["x-request-id"]

            async def answer_kept() -> bool:
                stored = await store.get(key)
                return stored is not None and json.loads(stored).get(field) is not None

            await eventually(answer_kept, "the stream's events kept")
        kept = json.loads(await store.get(key) or b"{}")
    finally:
        await store.aclose()
    assert kept["body"] is None and kept[field].endswith("data: [DONE]\n\n")
    assert {"events", "retold_events"} & set(kept) == {field}


async def test_a_responses_stream_of_function_calls_is_sent_again_byte_for_byte(tenant: Tenant) -> None:
    """A Responses stream that called tools: its retry gets the same events (the response's, its items' and calls'
    ids, created_at and sequence numbers told from the chat events kept), reaching no upstream, charged once."""
    prompt = unique(f"What is the weather in Paris? {TOOL_CUE}")
    body = {"model": "cheap-model", "input": prompt, "tools": RESPONSE_TOOLS, "stream": True}
    headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": "streamed-calls"}
    async with httpx.AsyncClient(base_url=tenant.base_url, headers=headers, timeout=20) as http:
        first = await http.post("/responses", json=body)
        again = await http.post("/responses", json=body)
    assert first.status_code == again.status_code == 200 and ended_whole("responses", first.content)
    assert b"event: response.function_call_arguments.done\n" in first.content
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert upstream_asked(tenant, prompt) == 1
    assert len(await tenant.ledger()) == 1


def streamed(body: dict[str, object]) -> dict[str, object]:
    """The body as `complete` streams it (the SDK's request for a stream with its usage)."""
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


async def test_in_the_edges_redis_each_tenant_keeps_answers_up_to_its_own_bytes(chain: Chain, redis_url: str) -> None:
    """EDGE_IDEMPOTENCY_TENANT_BYTES reaches the edge and counts by the request's tenant: one answer fits, a tenant's
    second is not kept (its retry the router's 409), and another tenant behind another replica keeps its own. The bound
    is one and a half of what one answer counted, as measured first."""
    store = redis.Redis.from_url(redis_url)
    async with tenant_before(chain, chain.router_addr, batch_redis_url=redis_url) as measuring:
        client = measuring.client(max_retries=0)
        try:
            await answered(client, ask(), "measure")
        finally:
            await client.close()
    counters = [key async for key in store.scan_iter(match=f"{KEPT_BYTES}{measuring.name}:*")]
    size = sum([int(await store.get(key) or 0) for key in counters])
    await store.aclose()
    assert size > 0
    bound = size * 3 // 2
    async with (
        tenant_before(chain, chain.router_addr, batch_redis_url=redis_url, idempotency_tenant_bytes=bound) as hog,
        tenant_before(chain, chain.router_addr, batch_redis_url=redis_url, idempotency_tenant_bytes=bound) as other,
    ):
        clients = [hog.client(max_retries=0), other.client(max_retries=0)]
        first, second, others = ask(), ask(), ask()
        try:
            await answered(clients[0], first, "hog-1")
            await answered(clients[0], second, "hog-2")
            await answered(clients[1], others, "other-1")
            assert (await answered(clients[0], first, "hog-1")).headers["idempotent-replayed"] == "true"
            with pytest.raises(openai.ConflictError):  # past the tenant's bytes: its digest alone
                await complete(clients[0], second, False, "hog-2")
            assert (await answered(clients[1], others, "other-1")).headers["idempotent-replayed"] == "true"
        finally:
            for client in clients:
                await client.close()


async def test_an_answer_still_being_kept_at_shutdown_lands_and_is_sent_again_after_the_restart(
    chain: Chain, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer is sent first and kept after: one whose write is still under way as the edge shuts down (a rolling
    restart) is given EDGE_IDEMPOTENCY_DRAIN_S to land, and the retry, on the edge that replaces it, gets it again,
    charged once. Before, the shutdown cancelled the write: the retry was the router's 409."""
    caplog.set_level(logging.INFO, logger="llmrouter.edge")
    port = int(urlsplit(redis_url).port or 6379)
    async with LossyProxy("127.0.0.1", port) as proxy, AsyncExitStack() as restarting:
        stopping = await restarting.enter_async_context(
            tenant_before(chain, chain.router_addr, batch_redis_url=proxy.url_for(redis_url), idempotency_drain_s=60)
        )
        client = stopping.client(max_retries=0)
        body = ask()
        try:
            write = proxy.hold_command(b'"x-request-id": "idem-')  # the answer's (a marker has no headers)
            first = await answered(client, body, "restarted")
        finally:
            await client.close()
        await eventually(write.arrived.is_set, "the answer's write reaches the store")
        shutdown = asyncio.ensure_future(restarting.aclose())
        await eventually(lambda: "answers being kept" in caplog.text, "the shutdown waits for the answer's write")
        assert not write.abandoned.is_set()
        write.released.set()
        await shutdown
        async with tenant_before(chain, chain.router_addr, like=stopping, batch_redis_url=redis_url) as replaced:
            client = replaced.client(max_retries=0)
            try:
                again = await answered(client, body, "restarted")
            finally:
                await client.close()
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert asked(stopping, body) == 1
    assert len(await stopping.ledger()) == 1


@pytest.mark.parametrize("route", ["chat", "completions", "responses"])
@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_streams_retry_while_its_events_are_being_kept_waits_for_them(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch, where: str, route: str
) -> None:
    """A stream that ended whole is kept after its last event: a retry reaching its edge while the events' write is
    still under way, refused by the router as ended, waits for that write and gets the events, as an unstreamed
    answer's retry does, charged once. Before, it was the 409 of a key used, not retried."""
    _, body, prompt = streamed_on(route)
    writing, written = asyncio.Event(), asyncio.Event()
    refused = asyncio.Event()
    keep, read_first = Replays.keep, app_module.first_chunks

    async def keep_held(replays: Replays, *answer: Any, **how: Any) -> None:
        if how.get("stream") and answer[2] is not None:  # the events' write, not the digest's
            writing.set()
            await written.wait()
        await keep(replays, *answer, **how)

    async def read_first_told(*call: Any) -> Any:
        try:
            return await read_first(*call)
        except grpc.RpcError:
            refused.set()
            raise

    edges: list[app_module.Edge] = []
    beside = app_module.Edge._beside

    def beside_seen(edge: app_module.Edge, *keeping: Any) -> asyncio.Task[None]:
        edges.append(edge)
        return beside(edge, *keeping)

    monkeypatch.setattr(Replays, "keep", keep_held)
    monkeypatch.setattr(app_module, "first_chunks", read_first_told)
    monkeypatch.setattr(app_module.Edge, "_beside", beside_seen)
    store: dict[str, Any] = {} if where == "memory" else {"batch_redis_url": redis_url}
    fields = {name: value for name, value in body.items() if name != "stream"}
    async with tenant_before(chain, chain.router_addr, **store) as tenant:
        client = tenant.client(max_retries=0)
        create: Any = {"chat": client.chat.completions, "completions": client.completions}.get(route, client.responses)

        async def sent() -> httpx.Response:  # as the SDK sends it (the same bytes each time), read to its end
            headers = {"Idempotency-Key": f"kept-late-{route}"}
            raw = await create.with_raw_response.create(**fields, stream=True, extra_headers=headers)
            await raw.http_response.aread()
            return raw.http_response

        try:
            first = await sent()
            assert ended_whole(route, first.content)
            await eventually(writing.is_set, "the stream's events are being kept")
            retry = asyncio.ensure_future(sent())
            await eventually(refused.is_set, "the router refuses the retry")  # its wait begun, the write still held
            written.set()
            again = await retry
        finally:
            await client.close()
        assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
        assert again.headers["x-request-id"] == first.headers["x-request-id"]
        assert upstream_asked(tenant, prompt) == 1
        assert len(await tenant.ledger()) == 1
        # Its keeps done, the edge holds nothing of it (by request id: one left per stream grew without end).
        await eventually(lambda: not edges[0]._keeping, "the edge forgets the stream's keeps once done")


async def test_a_streams_events_still_being_kept_at_shutdown_land_and_are_sent_again_after_the_restart(
    chain: Chain, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As an unstreamed answer's: a whole stream's events whose write is still under way as the edge shuts down are
    given EDGE_IDEMPOTENCY_DRAIN_S to land (those being kept, by request id, are among what its shutdown waits for),
    and the retry, on the edge that replaces it, gets them, charged once."""
    caplog.set_level(logging.INFO, logger="llmrouter.edge")
    port = int(urlsplit(redis_url).port or 6379)
    path, body, prompt = streamed_on("chat")

    async def sent(tenant: Tenant) -> httpx.Response:
        headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": "restarted-stream"}
        async with httpx.AsyncClient(base_url=tenant.base_url, headers=headers, timeout=20) as http:
            return await http.post(path, json=body)

    async with LossyProxy("127.0.0.1", port) as proxy, AsyncExitStack() as restarting:
        stopping = await restarting.enter_async_context(
            tenant_before(chain, chain.router_addr, batch_redis_url=proxy.url_for(redis_url), idempotency_drain_s=60)
        )
        write = proxy.hold_command(b'"events": "data: ')  # the events' (the marker's has none)
        first = await sent(stopping)
        assert ended_whole("chat", first.content)
        await eventually(write.arrived.is_set, "the events' write reaches the store")
        shutdown = asyncio.ensure_future(restarting.aclose())
        await eventually(lambda: "answers being kept" in caplog.text, "the shutdown waits for the events' write")
        assert not write.abandoned.is_set()
        write.released.set()
        await shutdown
        async with tenant_before(chain, chain.router_addr, like=stopping, batch_redis_url=redis_url) as replaced:
            again = await sent(replaced)
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert upstream_asked(stopping, prompt) == 1
    assert len(await stopping.ledger()) == 1


@asynccontextmanager
async def two_edges_keeping_slowly(
    chain: Chain, redis_url: str, stream: bool, **second_settings: Any
) -> AsyncIterator[tuple[Tenant, Tenant, HeldCommand]]:
    """Two edges of one tenant sharing a Redis: the first reaches it through a proxy holding the write of its answer
    (a stream's events, or an unstreamed answer), the second directly."""
    port = int(urlsplit(redis_url).port or 6379)
    async with (
        LossyProxy("127.0.0.1", port) as proxy,
        tenant_before(chain, chain.router_addr, batch_redis_url=proxy.url_for(redis_url)) as first,
        tenant_before(chain, chain.router_addr, like=first, batch_redis_url=redis_url, **second_settings) as second,
    ):
        # The answer's write alone: a marker's has "body": null and no events.
        yield first, second, proxy.hold_command(b'"events": "data: ' if stream else b'"body": "{')


async def sent_keyed(tenant: Tenant, body: dict[str, Any], key: str) -> httpx.Response:
    """The SDK's chat completion (streamed if the body says so) sent with the Idempotency-Key, read to its end."""
    client = tenant.client(max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(**body, extra_headers={"Idempotency-Key": key})
        await raw.http_response.aread()
        return raw.http_response
    finally:
        await client.close()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
async def test_a_retry_on_another_edge_while_the_first_s_answer_is_being_kept_waits_for_it(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """A retry reaching another edge sharing the Redis after the first ended, its answer (a stream's events) still
    being written there by the first's edge: refused by the router as ended, it waits for that write (the first's
    marker still there tells it is under way) and is sent the answer byte for byte, charged once. Before, it was the
    409 of a key used, not retried, while a retry on the first's edge waited and was sent it."""
    body = streamed(ask()) if stream else ask()
    refused = asyncio.Event()
    refusal = app_module.Edge.refusal

    def refusal_seen(edge: app_module.Edge, *told: Any) -> Any:
        refused.set()
        return refusal(edge, *told)

    monkeypatch.setattr(app_module.Edge, "refusal", refusal_seen)
    async with two_edges_keeping_slowly(chain, redis_url, stream) as (first_edge, second_edge, write):
        first = await sent_keyed(first_edge, body, "kept-elsewhere")
        await eventually(write.arrived.is_set, "the first's answer is being written")
        retry = asyncio.ensure_future(sent_keyed(second_edge, body, "kept-elsewhere"))
        await eventually(refused.is_set, "the router refuses the retry as its first ended")
        write.released.set()
        again = await retry
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert asked(first_edge, body) == 1
    assert len(await first_edge.ledger()) == 1


async def kept(redis_url: str, edge: Tenant, idempotency_key: str) -> tuple[Kept | None, int]:
    """What Redis keeps for `idempotency_key` sent with `edge`'s first API key, and its time to live."""
    store = redis.from_url(redis_url)
    key = PREFIX + idempotency.request_id(edge.name, edge.keys[0], idempotency_key)
    try:
        return Kept.loads(await store.get(key) or b""), await store.ttl(key)
    finally:
        await store.aclose()


async def answer_kept(redis_url: str, edge: Tenant, idempotency_key: str) -> bool:
    """Whether the answer to `idempotency_key` (of `edge`'s first API key) is written, not a marker or a digest."""
    found, _ = await kept(redis_url, edge, idempotency_key)
    return found is not None and found.body is not None


async def test_a_retry_on_another_edge_is_told_to_retry_when_the_first_s_answer_is_not_kept_within_the_wait(
    chain: Chain, redis_url: str
) -> None:
    """The first's answer still unwritten after EDGE_IDEMPOTENCY_KEEPING_WAIT_S, the retry on the other edge is a 409
    saying so, which the SDKs retry (no `x-should-retry: false`); once the answer is written, the next retry is sent
    it. Never served or charged again."""
    body = streamed(ask())
    async with two_edges_keeping_slowly(chain, redis_url, True, idempotency_keeping_wait_s=0.1) as edges:
        first_edge, second_edge, write = edges
        first = await sent_keyed(first_edge, body, "kept-late")
        await eventually(write.arrived.is_set, "the first's answer is being written")
        with pytest.raises(openai.ConflictError) as refused:
            await sent_keyed(second_edge, body, "kept-late")
        assert "still being kept by the edge that served it after 0.1 s" in refused.value.message
        assert refused.value.response.headers.get("x-should-retry") != "false"
        write.released.set()
        await eventually(lambda: answer_kept(redis_url, first_edge, "kept-late"), "the first's answer is written")
        again = await sent_keyed(second_edge, body, "kept-late")
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert asked(first_edge, body) == 1
    assert len(await first_edge.ledger()) == 1


async def test_a_marker_standing_past_the_wait_gives_way_to_its_digest_so_retries_are_not_held_until_it_expires(
    chain: Chain, redis_url: str
) -> None:
    """The first's answer unwritten past the wait (its edge gone, or its write failed: its marker, uncounted, would
    stand for the call's timeout and a minute): the retry waiting for it is told to retry, and the marker, still the
    one it waited on, is replaced by its digest alone, its expiry kept. The next retry is the router's 409 at once, not
    retried; an answer written late still replaces that digest and is sent. Before, every retry until the marker
    expired waited EDGE_IDEMPOTENCY_KEEPING_WAIT_S and was told to retry: each SDK call held for three waits, told
    to retry again, for minutes."""
    body = streamed(ask())
    async with two_edges_keeping_slowly(chain, redis_url, True, idempotency_keeping_wait_s=0.1) as edges:
        first_edge, second_edge, write = edges
        first = await sent_keyed(first_edge, body, "kept-never")
        await eventually(write.arrived.is_set, "the first's answer is being written")
        with pytest.raises(openai.ConflictError) as waited:
            await sent_keyed(second_edge, body, "kept-never")
        assert "still being kept" in waited.value.message
        with pytest.raises(openai.ConflictError) as refused:
            await sent_keyed(second_edge, body, "kept-never")
        assert "still being kept" not in refused.value.message
        assert refused.value.response.headers["x-should-retry"] == "false"
        digest, ttl = await kept(redis_url, first_edge, "kept-never")
        assert digest is not None and digest.started is None and digest.body is None, digest
        assert 0 < ttl <= 20 + 60  # the marker's: the call's timeout and a minute
        write.released.set()
        written = "the first's answer is written over the digest"
        await eventually(lambda: answer_kept(redis_url, first_edge, "kept-never"), written)
        again = await sent_keyed(second_edge, body, "kept-never")
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert asked(first_edge, body) == 1
    assert len(await first_edge.ledger()) == 1


@pytest.mark.parametrize("how", ["silent", "away"])
async def test_a_retry_on_an_edge_whose_redis_is_silent_or_away_is_told_to_retry_within_the_wait(
    chain: Chain, redis_url: str, how: str
) -> None:
    """A retry reaching an edge whose Redis is stopped (silent: each read would wait out the client's 5 s socket
    timeout) or out of reach, after the first was answered and kept on another edge: refused by the router as ended,
    its wait for the answer, reads included, ends within EDGE_IDEMPOTENCY_KEEPING_WAIT_S and its 409 says the answer
    could not be read, to be retried (no `x-should-retry: false`); once the Redis answers again, the retry is sent the
    answer. Never served or charged again. Before, a silent store held it a socket timeout per read, and either way it
    was the 409 not to retry, though its answer was kept."""
    body = ask()
    port = int(urlsplit(redis_url).port or 6379)
    async with (
        LossyProxy("127.0.0.1", port) as proxy,
        tenant_before(chain, chain.router_addr, batch_redis_url=redis_url) as first_edge,
        tenant_before(
            chain,
            chain.router_addr,
            like=first_edge,
            batch_redis_url=proxy.url_for(redis_url),
            idempotency_keeping_wait_s=0.3,
        ) as second_edge,
    ):
        first = await sent_keyed(first_edge, body, "store-gone")
        proxy.go_silent() if how == "silent" else proxy.go_down()
        began = asyncio.get_running_loop().time()
        with pytest.raises(openai.ConflictError) as refused:
            await sent_keyed(second_edge, body, "store-gone")
        took = asyncio.get_running_loop().time() - began
        assert "could not be read within 0.3 s" in refused.value.message
        assert refused.value.response.headers.get("x-should-retry") != "false"
        # Its arrival's read and the marker's taking back (0.5 s each at most), then the wait: never a socket timeout.
        assert took < 4, took
        proxy.come_back()
        again = await sent_keyed(second_edge, body, "store-gone")
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert asked(first_edge, body) == 1
    assert len(await first_edge.ledger()) == 1


async def test_a_retry_whose_caller_leaves_while_it_waits_stops_waiting_and_leaves_the_marker_for_the_next(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry waiting on another edge for the first's answer (its write held back) whose client disconnects: the
    wait ends at once, not at EDGE_IDEMPOTENCY_KEEPING_WAIT_S (60 s here); nothing is served or charged for it; the
    first's marker is left as it was (not given way to its digest: the answer may yet land), so the next retry, once
    the answer is written, is sent it. Before, the wait ran on for nobody to its end, then retired the marker."""
    body = ask()
    waits: list[asyncio.Task[Any]] = []
    settled = Replays.settled

    async def settled_seen(replays: Replays, *args: Any, **kwargs: Any) -> Any:
        waits.append(asyncio.current_task())  # type: ignore[arg-type]
        return await settled(replays, *args, **kwargs)

    monkeypatch.setattr(Replays, "settled", settled_seen)
    async with two_edges_keeping_slowly(chain, redis_url, False, idempotency_keeping_wait_s=60) as edges:
        first_edge, second_edge, write = edges
        first = await sent_keyed(first_edge, body, "left-waiting")
        await eventually(write.arrived.is_set, "the first's answer is being written")
        store = redis.from_url(redis_url)
        key = PREFIX + idempotency.request_id(first_edge.name, first_edge.keys[0], "left-waiting")
        marker = await store.get(key)
        try:
            retry = asyncio.ensure_future(sent_keyed(second_edge, body, "left-waiting"))
            await eventually(lambda: bool(waits), "the retry waits for the first's answer")
            retry.cancel()  # its connection closed
            with contextlib.suppress(asyncio.CancelledError):
                await retry
            await eventually(lambda: waits[0].done(), "the retry's wait ends as its caller leaves", timeout_s=20)
            assert await store.get(key) == marker  # the first's marker, as it was
            write.released.set()

            async def written() -> bool:
                kept = Kept.loads(await store.get(key) or b"")
                return kept is not None and kept.body is not None

            await eventually(written, "the first's answer is written")
        finally:
            await store.aclose()
        again = await sent_keyed(second_edge, body, "left-waiting")
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert asked(first_edge, body) == 1
    assert len(await first_edge.ledger()) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_sixteen_retries_at_once_on_two_edges_are_served_and_charged_once(
    chain: Chain, redis_url: str, stream: bool
) -> None:
    """16 requests with one Idempotency-Key and body sent at once, half to each of two edges sharing a Redis: one is
    served and charged; each other is sent its answer byte for byte (replayed, or once kept after a wait) or a 409
    that the SDKs retry (still in flight, or still being kept), never a 5xx, another answer or the 409 not to retry;
    a retry after them all is sent the answer."""
    body = streamed(ask()) if stream else ask()
    async with (
        tenant_before(chain, chain.router_addr, batch_redis_url=redis_url) as one,
        tenant_before(chain, chain.router_addr, like=one, batch_redis_url=redis_url) as other,
    ):
        headers = {"Authorization": f"Bearer {one.keys[0]}", "Idempotency-Key": "sixteen"}
        async with httpx.AsyncClient(timeout=60) as http:

            async def sent(edge: Tenant) -> httpx.Response:
                return await http.post(f"{edge.base_url}/chat/completions", json=body, headers=headers)

            answers = await asyncio.gather(*(sent(edge) for edge in [one, other] * 8))
            after = await sent(other)
    served = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    assert served, [answer.text for answer in answers]
    assert {answer.content for answer in served} == {after.content}
    assert sum("idempotent-replayed" not in answer.headers for answer in served) == 1  # the first's
    for answer in refused:
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "idempotency_key_reused", answer.text
        assert answer.headers.get("x-should-retry") != "false", answer.text
    assert after.headers["idempotent-replayed"] == "true"
    assert asked(one, body) == 1
    assert len(await one.ledger()) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_retry_that_marked_the_key_and_was_refused_as_the_first_ended_waits_for_its_answer(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Two requests with one key racing on two edges: one marks the key first but reaches the router last; the other,
    finding that marker (none of its own), is served, and its edge is still writing its answer over the marker when
    the router refuses the first as the duplicate of one ended. That one waits on its own marker and is sent the
    answer once written, charged once; its marker, replaced, is not taken back. Before, it took its marker back at
    once, read nothing kept and was the 409 not to retry, though the answer landed a moment later (16 sent at once)."""
    marked, go, refused = asyncio.Event(), asyncio.Event(), asyncio.Event()
    arrive, refusal = Replays.arrive, app_module.Edge.refusal

    async def marking_held(replays: Replays, *args: Any) -> Any:
        arrival = await arrive(replays, *args)
        if arrival.started is not None:  # the request that marked the key: held before its router call
            marked.set()
            await go.wait()
        return arrival

    def refusal_seen(edge: app_module.Edge, *told: Any) -> Any:
        refused.set()
        return refusal(edge, *told)

    monkeypatch.setattr(Replays, "arrive", marking_held)
    monkeypatch.setattr(app_module.Edge, "refusal", refusal_seen)
    body = streamed(ask()) if stream else ask()
    async with two_edges_keeping_slowly(chain, redis_url, stream) as (served_edge, marking_edge, write):
        marking = asyncio.ensure_future(sent_keyed(marking_edge, body, "marked-last"))
        await eventually(marked.is_set, "one request marks the key")
        served = await sent_keyed(served_edge, body, "marked-last")
        await eventually(write.arrived.is_set, "the served one's answer is being written")
        go.set()
        await eventually(refused.is_set, "the router refuses the one that marked the key as the first ended")
        write.released.set()
        again = await marking
    assert again.headers["idempotent-replayed"] == "true" and again.content == served.content
    assert asked(served_edge, body) == 1
    assert len(await served_edge.ledger()) == 1


async def test_another_tenants_request_with_the_same_key_value_is_never_sent_the_first_tenants_answer(
    chain: Chain, redis_url: str
) -> None:
    """Two tenants behind one edge and its Redis send one body with one Idempotency-Key value: the second is served as
    its own request (its own request id, charged to it), never sent the first tenant's answer; its own retry is sent
    its own answer. The request id derives from the tenant and the API key as well as the value."""
    names = [f"idem-{secrets.token_hex(4)}" for _ in range(2)]
    keys = [f"sk-idem-{secrets.token_urlsafe(12)}" for _ in names]
    settings = EdgeSettings(
        port=free_port(),
        router_addr=chain.router_addr,
        request_timeout_s=20,
        batch_redis_url=RedisUrl(redis_url),
        api_keys=SecretStr(",".join(key_line(name, key) for name, key in zip(names, keys, strict=True))),
    )
    body = ask()
    async with served_edge(settings) as base_url:
        first, second = (Tenant(name, (key, key), base_url, chain) for name, key in zip(names, keys, strict=True))
        answer = await sent_keyed(first, body, "shared-value")
        others = await sent_keyed(second, body, "shared-value")
        again = await sent_keyed(second, body, "shared-value")
    assert "idempotent-replayed" not in others.headers
    assert others.headers["x-request-id"] != answer.headers["x-request-id"]
    assert again.headers["idempotent-replayed"] == "true" and again.content == others.content
    [charged] = await second.ledger()
    assert charged["request_id"] == others.headers["x-request-id"]
    assert [record["request_id"] for record in await first.ledger()] == [answer.headers["x-request-id"]]


async def test_a_refused_retry_after_another_of_its_id_on_its_edge_waits_while_the_first_s_marker_stands(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two retries on one edge, the first served on another still writing its answer over its marker: the later one
    waits for the earlier (its router call still under way as it came), itself refused as ended alike, then for that
    marker, and is sent the answer, charged once. Before, once the earlier was done it read the store once, found
    nothing kept (the marker), and was the 409 not to retry, the answer landing a moment later."""
    body = ask()
    go, refusals = asyncio.Event(), []
    entered: list[str] = []
    serve_and_keep, refusal = app_module.Edge._serve_and_keep, app_module.Edge.refusal

    async def held(edge: app_module.Edge, *args: Any) -> Any:
        entered.append("retry")
        await go.wait()  # both retries on the edge, each a request of the id to the other
        return await serve_and_keep(edge, *args)

    def refusal_seen(edge: app_module.Edge, *told: Any) -> Any:
        refusals.append(told)
        return refusal(edge, *told)

    async with two_edges_keeping_slowly(chain, redis_url, False) as (first_edge, retry_edge, write):
        first = await sent_keyed(first_edge, body, "two-retries")
        await eventually(write.arrived.is_set, "the first's answer is being written")
        monkeypatch.setattr(app_module.Edge, "_serve_and_keep", held)
        monkeypatch.setattr(app_module.Edge, "refusal", refusal_seen)
        earlier = asyncio.ensure_future(sent_keyed(retry_edge, body, "two-retries"))
        await eventually(lambda: len(entered) == 1, "the earlier retry's router call is under way")
        later = asyncio.ensure_future(sent_keyed(retry_edge, body, "two-retries"))
        await eventually(lambda: len(entered) == 2, "the later retry's router call is under way too")
        go.set()
        await eventually(lambda: len(refusals) == 2, "the router refuses both as the first ended")
        assert not later.done()  # waiting while the marker stands, not the 409
        write.released.set()
        answers = [await earlier, await later]
    for again in answers:
        assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert asked(first_edge, body) == 1
    assert len(await first_edge.ledger()) == 1
