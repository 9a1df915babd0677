"""An Idempotency-Key's request while the first with it still runs (services/edge/replays.py, its in-flight marker),
and what a retry must repeat to be the same request, through the real edge and router with the official openai SDK:
another body, or other x-router-* routing headers, is a 422 `idempotency_key_mismatch` reaching no router, on the
first's edge or another sharing its Redis; a first that failed charging nothing takes its marker back, so its retry
with another body is served; and a slow edge Redis never holds a keyed answer up. Before, a request with another body
sent while the first ran was the router's 409 (as if it were the same request), one with other routing headers after
it got the first's answer, and the answer waited on its write to the edge's Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from services.edge import app as app_module
from services.edge import idempotency
from services.edge.replays import PREFIX, Kept, Replays
from tests.fakes.lossy_proxy import LossyProxy
from tests.fakes.server import Fault
from tests.integration.conftest import Chain
from tests.integration.test_idempotency_key import Tenant, answered, ask, asked, complete, tenant_before
from tests.waiting import eventually


@asynccontextmanager
async def two_edges(chain: Chain, where: str, redis_url: str) -> AsyncIterator[tuple[Tenant, Tenant]]:
    """The edge the first request is sent to and the one its second is: the same edge (in memory, or with a Redis),
    or two edges sharing a Redis."""
    async with AsyncExitStack() as stack:
        store: dict[str, Any] = {} if where == "memory" else {"batch_redis_url": redis_url}
        first = await stack.enter_async_context(tenant_before(chain, chain.router_addr, **store))
        second = first
        if where == "two-edges":
            second = await stack.enter_async_context(tenant_before(chain, chain.router_addr, like=first, **store))
        yield first, second


@pytest.fixture
async def tenant(chain: Chain) -> AsyncIterator[Tenant]:
    async with tenant_before(chain, chain.router_addr) as served:
        yield served


def mismatch(refused: pytest.ExceptionInfo[openai.UnprocessableEntityError]) -> bool:
    body = refused.value.body
    return isinstance(body, dict) and body["code"] == "idempotency_key_mismatch" and body["param"] == "Idempotency-Key"


Sent = Callable[[openai.AsyncOpenAI, dict[str, Any], dict[str, Any]], Awaitable[None]]


async def sent_while_the_first_runs(
    chain: Chain, first_edge: Tenant, second_client: openai.AsyncOpenAI, stream: bool, key: str, meanwhile: Sent
) -> None:
    """The first request with `key` held in its generation on first_edge while `meanwhile` sends the same body and
    another on second_client; then answered: the other never reached the upstream, and the first is charged once."""
    first_client = first_edge.client(max_retries=0)
    body, other = ask(), ask()
    chain.budget.holding_answers = True
    try:
        first = asyncio.ensure_future(complete(first_client, body, stream, key))
        await eventually(lambda: asked(first_edge, body) == 1, "the first is being generated")
        await meanwhile(second_client, body, other)
        chain.budget.holding_answers = False
        cost = await first
    finally:
        chain.budget.holding_answers = False
        await first_client.close()
        await second_client.close()
    assert asked(first_edge, other) == 0
    [record] = await first_edge.ledger()
    assert record["cost_usd"] == cost


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("where", ["memory", "redis", "two-edges"])
async def test_another_body_while_the_first_runs_is_a_422_and_is_never_served(
    chain: Chain, redis_url: str, where: str, stream: bool
) -> None:
    async def other_then_same(second_client: openai.AsyncOpenAI, body: dict[str, Any], other: dict[str, Any]) -> None:
        with pytest.raises(openai.UnprocessableEntityError) as refused:  # a 422 is not retried
            await complete(second_client, other, stream, "in-flight")
        assert mismatch(refused)
        with pytest.raises(openai.ConflictError) as same:  # the same body: the router's 409, in flight
            await complete(second_client.with_options(max_retries=0), body, stream, "in-flight")
        assert "still in flight" in same.value.message

    async with two_edges(chain, where, redis_url) as (first_edge, second_edge):
        second_client = second_edge.client(max_retries=2)
        await sent_while_the_first_runs(chain, first_edge, second_client, stream, "in-flight", other_then_same)


async def served_after_a_failed_first(
    chain: Chain, tenant: Tenant, first: Callable[[openai.AsyncOpenAI], Awaitable[None]], stream: bool, key: str
) -> None:
    """`first` sends the first request with `key`, every attempt of it failing on both models; then another body with
    the key: served (asked once), the ledger holding the first failed and the other charged what it was told."""
    chain.budget.enqueue(*[Fault.error(500)] * 6)  # every attempt of the first, on both models
    chain.premium.enqueue(*[Fault.error(500)] * 6)
    client = tenant.client(max_retries=0)
    try:
        await first(client)
        for upstream in (chain.budget, chain.premium):
            upstream.faults.clear()
        other = ask()
        cost = await complete(client, other, stream, key)
    finally:
        for upstream in (chain.budget, chain.premium):
            upstream.faults.clear()
        await client.close()
    assert asked(tenant, other) == 1
    failed, served = sorted(await tenant.ledger(), key=lambda record: record["ts"])
    assert failed["outcome"] == "failed" and served["cost_usd"] == cost


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_first_that_failed_charging_nothing_leaves_the_key_to_another_body(
    chain: Chain, redis_url: str, where: str, stream: bool
) -> None:
    """Its marker taken back as it fails (a stream's, before its first event), the retry with another body is the
    router's to decide: served, the id released as the first was charged 0."""

    async def failing(client: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.InternalServerError):
            await complete(client, ask(), stream, "failed-first")

    async with two_edges(chain, where, redis_url) as (tenant, _):
        await served_after_a_failed_first(chain, tenant, failing, stream, "failed-first")


async def test_a_duplicates_marker_stays_guarding_a_first_on_an_edge_that_wrote_none(
    chain: Chain, redis_url: str
) -> None:
    """The first in flight on an edge keeping its answers in memory (as an edge before markers, or one whose store was
    passed over): the same body on an edge with the Redis writes the marker, and the router refuses it as the
    duplicate. That marker names the first truly, so it stays (replays.py): another body after it is the 422, reaching
    no router. Taken back as a failure's, another body reached the router and was its 409, as if the same request."""
    async with (
        tenant_before(chain, chain.router_addr) as first_edge,
        tenant_before(chain, chain.router_addr, like=first_edge, batch_redis_url=redis_url) as second_edge,
    ):

        async def same_then_other(
            second_client: openai.AsyncOpenAI, body: dict[str, Any], other: dict[str, Any]
        ) -> None:
            with pytest.raises(openai.ConflictError) as same:  # marks the key, then the router's duplicate
                await complete(second_client, body, False, "unmarked-first")
            assert "still in flight" in same.value.message
            with pytest.raises(openai.UnprocessableEntityError) as refused:
                await complete(second_client, other, False, "unmarked-first")
            assert mismatch(refused)

        second_client = second_edge.client(max_retries=0)
        await sent_while_the_first_runs(chain, first_edge, second_client, False, "unmarked-first", same_then_other)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_retry_refused_as_its_first_ended_takes_its_marker_back(
    chain: Chain, redis_url: str, stream: bool
) -> None:
    """A tenant past its bytes keeps nothing of a request, which takes its marker back as it ends (Replays.keep): its
    retry finds the key free, marks it, and is the router's 409 of a request ended, charged once. That marker names no
    request in flight: once waited on (EDGE_IDEMPOTENCY_KEEPING_WAIT_S: a first racing it may keep its answer over
    it), it is taken back too. Left, uncounted, it outlived the retry by the call's timeout and a minute, so a tenant
    past its bytes sending each request twice (a response cache hit costs nothing) filled the Redis with markers, one
    per request, for free; and a retry with another body meanwhile was a false 422."""
    settings: dict[str, Any] = {"idempotency_tenant_bytes": 1, "idempotency_keeping_wait_s": 0.2}
    async with tenant_before(chain, chain.router_addr, batch_redis_url=redis_url, **settings) as tenant:
        client = tenant.client(max_retries=0)
        body = ask()
        store = redis.from_url(redis_url)
        key = PREFIX + idempotency.request_id(tenant.name, tenant.keys[0], "spent")
        try:
            cost = await complete(client, body, stream, "spent")
            with pytest.raises(openai.ConflictError) as refused:
                await complete(client, body, stream, "spent")
            assert f"it was charged {cost} USD" in refused.value.message
            assert refused.value.response.headers["x-should-retry"] == "false"

            async def taken_back() -> bool:
                return not await store.exists(key)

            await eventually(taken_back, "neither request's marker is left")
            with pytest.raises(openai.ConflictError):  # another body: the router's 409 too, never a marker's 422
                await complete(client, ask(), stream, "spent")
        finally:
            await client.close()
            await store.aclose()
        assert asked(tenant, body) == 1
        [record] = await tenant.ledger()
        assert record["cost_usd"] == cost


async def test_a_stream_past_its_tenants_bytes_with_no_events_kept_leaves_no_marker(
    chain: Chain, redis_url: str
) -> None:
    """A stream's marker stands until it ends, replaced then by its events (ended whole within the edge's limit) or its
    digest: past its tenant's bytes, neither kept, its marker is taken back then (over the limit here). Left, it
    outlived the stream by the call's timeout and a minute."""
    settings: dict[str, Any] = {"idempotency_tenant_bytes": 1, "idempotency_max_answer_bytes": 64}
    async with tenant_before(chain, chain.router_addr, batch_redis_url=redis_url, **settings) as tenant:
        client = tenant.client(max_retries=0)
        store = redis.from_url(redis_url)
        key = PREFIX + idempotency.request_id(tenant.name, tenant.keys[0], "streamed-past")

        async def taken_back() -> bool:
            return not await store.exists(key)

        try:
            await complete(client, ask(), True, "streamed-past")
            await eventually(taken_back, "the stream's marker is taken back")
        finally:
            await client.close()
            await store.aclose()


async def test_a_marker_whose_reply_came_too_late_is_taken_back_as_its_request_fails(
    chain: Chain, redis_url: str
) -> None:
    """The marker's write landed, its reply later than EDGE_IDEMPOTENCY_LOOKUP_TIMEOUT_S (the store passed over, the
    request served on): the request failing, charging nothing, takes it back all the same (by its token: never
    another's), so a retry with another body is the router's to serve. Before, the edge took it for unwritten and
    left it, tying the key to the first body for the call's timeout and a minute: that retry was a false 422."""
    port = int(urlsplit(redis_url).port or 6379)
    async with (
        LossyProxy("127.0.0.1", port) as proxy,
        tenant_before(
            chain, chain.router_addr, batch_redis_url=proxy.url_for(redis_url), idempotency_lookup_timeout_s=0.2
        ) as tenant,
    ):

        async def failing_its_marker_unheard(client: openai.AsyncOpenAI) -> None:
            marker = proxy.hold_reply_to(b'"started": "')  # the marker's write: run, its reply held
            with pytest.raises(openai.InternalServerError):
                await complete(client, ask(), False, "late-marker")
            assert marker.arrived.is_set()  # it landed, its reply unheard

        await served_after_a_failed_first(chain, tenant, failing_its_marker_unheard, False, "late-marker")


ROUTING = {"x-router-quality-target": "0.9", "x-router-max-cost-usd": "1"}


@pytest.mark.parametrize(
    "changed",
    [
        {"x-router-quality-target": "0.2", "x-router-max-cost-usd": "1"},
        {"x-router-quality-target": "0.9"},  # one left out
        {**ROUTING, "x-router-escalation": "off"},  # one more
    ],
    ids=["another-value", "one-left-out", "one-more"],
)
async def test_a_retry_with_other_routing_headers_is_a_422_and_tracing_headers_do_not_count(
    tenant: Tenant, changed: dict[str, str]
) -> None:
    client = tenant.client(max_retries=0)
    body = ask()
    try:
        first = await client.chat.completions.with_raw_response.create(
            **body, extra_headers={"Idempotency-Key": "routed", **ROUTING}
        )
        traced = {"Idempotency-Key": "routed", **ROUTING, "traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
        again = await client.chat.completions.with_raw_response.create(**body, extra_headers=traced)
        assert again.http_response.headers["idempotent-replayed"] == "true"
        assert again.http_response.content == first.http_response.content
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await client.chat.completions.create(**body, extra_headers={"Idempotency-Key": "routed", **changed})
        assert mismatch(refused)
        with pytest.raises(openai.UnprocessableEntityError):  # none at all: as the first without its headers
            await answered(client, body, "routed")
    finally:
        await client.close()
    assert asked(tenant, body) == 1


async def test_a_slow_edge_redis_never_holds_the_answer_up_and_the_answer_is_kept_once_it_answers(
    chain: Chain, redis_url: str
) -> None:
    """The answer's write to the edge's Redis held back (a slow store, as the edge sees it): the caller has its
    answer while the write still waits, and the write, once the store answers, keeps it for the retry (sent again,
    charged once). Before, the caller waited on the write up to the client's socket timeout (5 s), which then gave
    it up: the answer never kept, its retry the 409."""
    port = int(urlsplit(redis_url).port or 6379)
    async with (
        LossyProxy("127.0.0.1", port) as proxy,
        tenant_before(chain, chain.router_addr, batch_redis_url=proxy.url_for(redis_url)) as tenant,
    ):
        client = tenant.client(max_retries=0)
        body = ask()
        try:
            write = proxy.hold_command(b'"x-request-id": "idem-')  # the answer's (a marker has no headers)
            given_up = keeps_given_up()
            first = await answered(client, body, "slow-store")
            # Answered while the write waits (or before it is even sent): not given up by the edge, nor its connection.
            assert keeps_given_up() == given_up
            await eventually(write.arrived.is_set, "the answer's write reaches the store")
            assert not write.abandoned.is_set()
            write.released.set()
            again = await answered(client, body, "slow-store")
        finally:
            await client.close()
        assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
        assert asked(tenant, body) == 1
        assert len(await tenant.ledger()) == 1


async def test_a_slow_edge_redis_never_holds_a_keyed_stream_up(chain: Chain, redis_url: str) -> None:
    """A stream's events are written beside it, at its end: the stream runs to its end while the write waits, and a
    retry of another body is the 422 all along (its marker). Before, its first event waited on the digest's write."""
    port = int(urlsplit(redis_url).port or 6379)
    async with (
        LossyProxy("127.0.0.1", port) as proxy,
        tenant_before(chain, chain.router_addr, batch_redis_url=proxy.url_for(redis_url)) as tenant,
    ):
        client = tenant.client(max_retries=0)
        try:
            write = proxy.hold_command(b'"events": "data: ')  # the events' (a marker's has none)
            given_up = keeps_given_up()
            cost = await complete(client, ask(), True, "slow-stream")
            assert keeps_given_up() == given_up
            await eventually(write.arrived.is_set, "the events' write reaches the store")
            assert not write.abandoned.is_set()
            with pytest.raises(openai.UnprocessableEntityError) as refused:  # its marker tells it meanwhile
                await complete(client, ask(), True, "slow-stream")
            assert mismatch(refused)
            write.released.set()
        finally:
            await client.close()
        [record] = await tenant.ledger()
        assert record["cost_usd"] == cost


def keeps_given_up() -> float:
    """How many answers this process's edges gave up keeping (their store failed or timed out)."""
    return REGISTRY.get_sample_value("llmrouter_edge_idempotency_store_passed_total", {"step": "keep"}) or 0.0


async def test_a_stream_whose_caller_left_before_its_first_event_leaves_no_marker(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller gone as its stream was to start (its first chunks read, its response not begun): the stream is cut
    before its first event, and its marker is replaced by its digest as it ends (kept_whole), so its retry is the
    router's 409 at once, not retried. Left, the marker stood for the call's timeout and a minute, and every retry
    waited EDGE_IDEMPOTENCY_KEEPING_WAIT_S for an answer never to be kept, then was told to retry."""
    read, reading = asyncio.Event(), app_module.first_chunks

    async def read_then_left(call: Any, request: Any, request_id: str) -> Any:
        chunks = await reading(call, request, request_id)
        read.set()
        assert await app_module.client_left(request)  # the caller gone before the response starts
        return chunks

    monkeypatch.setattr(app_module, "first_chunks", read_then_left)
    async with tenant_before(
        chain, chain.router_addr, batch_redis_url=redis_url, idempotency_keeping_wait_s=0.2
    ) as tenant:
        store = redis.from_url(redis_url)
        key = PREFIX + idempotency.request_id(tenant.name, tenant.keys[0], "left-unstarted")
        body = {**ask(), "stream": True}
        headers = {"Authorization": f"Bearer {tenant.keys[0]}", "Idempotency-Key": "left-unstarted"}

        async def digest_alone() -> bool:
            kept = Kept.loads(await store.get(key) or b"")
            return kept is not None and kept.started is None and kept.body is None

        try:
            async with httpx.AsyncClient(base_url=tenant.base_url) as http:
                first = asyncio.ensure_future(http.post("/chat/completions", json=body, headers=headers))
                await read.wait()
                first.cancel()  # its connection closed
                with contextlib.suppress(asyncio.CancelledError):
                    await first
                monkeypatch.setattr(app_module, "first_chunks", reading)
                await eventually(digest_alone, "the marker is replaced by its digest", timeout_s=10)
                again = await http.post("/chat/completions", json=body, headers=headers)
            assert again.status_code == 409, again.text
            assert "still being kept" not in again.text and again.headers["x-should-retry"] == "false"
        finally:
            await store.aclose()


async def test_a_retry_whose_caller_left_before_it_was_refused_as_its_first_ended_takes_its_marker_back(
    chain: Chain, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry that marked the key (its first kept nothing: past its tenant's bytes) whose caller left before the
    router refused it as the duplicate of the first, ended: no one waits on its marker then (its wait is its caller's),
    so it is taken back as the refusal comes, not left to outlive it by the call's timeout and a minute."""
    marked, go = asyncio.Event(), asyncio.Event()
    arrive = Replays.arrive

    async def marking_held(replays: Replays, *args: Any) -> Any:
        arrival = await arrive(replays, *args)
        if arrival.started is not None and marked.is_set():  # the retry's marker: held before its router call
            await go.wait()
        marked.set()
        return arrival

    monkeypatch.setattr(Replays, "arrive", marking_held)
    async with tenant_before(chain, chain.router_addr, batch_redis_url=redis_url, idempotency_tenant_bytes=1) as tenant:
        store = redis.from_url(redis_url)
        key = PREFIX + idempotency.request_id(tenant.name, tenant.keys[0], "left-marked")
        body = ask()
        headers = {"Authorization": f"Bearer {tenant.keys[0]}", "Idempotency-Key": "left-marked"}

        async def taken_back() -> bool:
            return not await store.exists(key)

        try:
            async with httpx.AsyncClient(base_url=tenant.base_url, timeout=60) as http:
                first = await http.post("/chat/completions", json=body, headers=headers)
                assert first.status_code == 200, first.text
                await eventually(taken_back, "the first's marker is taken back, nothing kept past its tenant's bytes")
                retry = asyncio.ensure_future(http.post("/chat/completions", json=body, headers=headers))
                await eventually(lambda: store.exists(key), "the retry marks the key")
                retry.cancel()  # its connection closed
                with contextlib.suppress(asyncio.CancelledError):
                    await retry
            go.set()
            await eventually(taken_back, "the retry's marker is taken back as the router refuses it", timeout_s=10)
        finally:
            await store.aclose()
    assert asked(tenant, body) == 1
    assert len(await tenant.ledger()) == 1
