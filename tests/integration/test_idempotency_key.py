"""The Idempotency-Key header, end to end through the real edge and router with the official openai SDK: a request
retried with the same key (the SDK's own retry after a client-side timeout, which reuses `extra_headers`) is served
and charged once, its retry refused with a 409 that says what the first was charged; two API keys sending the same
value are two requests; a value outside the rule is a 400. Before, each retry was a new request, charged again."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import redis.asyncio as redis
from pydantic import SecretStr

from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.router.store import Account, AccountKeys, RedisStore, period_id
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.fakes.server import Fault
from tests.integration.conftest import Chain, free_port, served_edge
from tests.integration.test_policy_in_chain import extra_router
from tests.waiting import eventually

PICO = 10**12


@dataclass
class Tenant:
    """A tenant of its own, with two API keys, behind an edge of its own over the session's router."""

    name: str
    keys: tuple[str, str]
    base_url: str
    chain: Chain

    def client(self, key: int = 0, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.keys[key], **options)

    async def ledger(self) -> list[dict]:
        db = redis.from_url(self.chain.redis_url)
        try:
            return [r for r in await ledger_records(db) if r["tenant"] == self.name]
        finally:
            await db.aclose()

    async def spent_pico(self) -> int:
        """The tenant's spend counter for the day."""
        db = redis.from_url(self.chain.redis_url)
        try:
            return int(await db.get(AccountKeys.of(Account(self.name, "")).spend(period_id("day"))[0]) or 0)
        finally:
            await db.aclose()

    async def set_limit(self, usd: str | None) -> None:
        store = RedisStore(self.chain.redis_url)
        try:
            await store.set_limit("tenant", self.name, None if usd is None else int(Decimal(usd) * PICO))
        finally:
            await store.close()


@asynccontextmanager
async def tenant_before(
    chain: Chain, router_addr: str, like: Tenant | None = None, **edge_settings: Any
) -> AsyncIterator[Tenant]:
    """A tenant of its own (or the one `like` is, behind another edge), behind an edge of its own over the router at
    `router_addr`; edge_settings: the edge's others."""
    name = like.name if like else f"idem-{secrets.token_hex(4)}"
    keys = like.keys if like else (f"sk-idem-a-{secrets.token_urlsafe(12)}", f"sk-idem-b-{secrets.token_urlsafe(12)}")
    settings = EdgeSettings(
        port=free_port(),
        router_addr=router_addr,
        request_timeout_s=20,
        api_keys=SecretStr(",".join(key_line(name, key) for key in keys)),
        **edge_settings,
    )
    async with served_edge(settings) as base_url:
        yield Tenant(name, keys, base_url, chain)


@pytest.fixture
async def tenant(chain: Chain) -> AsyncIterator[Tenant]:
    async with tenant_before(chain, chain.router_addr) as served:
        yield served


def ask(**fields: Any) -> dict[str, Any]:
    """A chat completion of the cheap model, its prompt unique (no response cache answers it)."""
    text = f"say something {uuid.uuid4().hex}"
    return {"model": "cheap-model", "max_tokens": 20, "messages": [{"role": "user", "content": text}], **fields}


async def complete(client: openai.AsyncOpenAI, body: dict[str, Any], stream: bool, key: str) -> Any:
    """The SDK's chat completion, sent with the Idempotency-Key: its cost (x_router, on the last chunk of a stream)."""
    extra = {"Idempotency-Key": key}
    if not stream:
        return (await client.chat.completions.create(**body, extra_headers=extra)).model_extra["x_router"]["cost_usd"]
    chunks = await client.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}, extra_headers=extra
    )
    return [chunk async for chunk in chunks][-1].model_extra["x_router"]["cost_usd"]


async def answered(client: openai.AsyncOpenAI, body: dict[str, Any], key: str) -> httpx.Response:
    """The SDK's unstreamed chat completion sent with the Idempotency-Key, as the edge answered it (2xx)."""
    raw = await client.chat.completions.with_raw_response.create(**body, extra_headers={"Idempotency-Key": key})
    return raw.http_response


def asked(tenant: Tenant, body: dict[str, Any]) -> int:
    """How many times the upstream was asked this body's prompt."""
    prompt = body["messages"][0]["content"]
    return sum(prompt in str(r.body) for r in tenant.chain.budget.requests)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_the_sdks_retry_after_a_client_timeout_is_refused_and_the_request_charged_once(
    tenant: Tenant, stream: bool
) -> None:
    body = ask()
    # One retry, after a timeout the held upstream makes certain: the retry reaches the router while the first runs.
    client = tenant.client(timeout=5, max_retries=1)
    tenant.chain.budget.holding_answers = True
    try:
        sent = asyncio.ensure_future(complete(client, body, stream, "order-4711"))
        await eventually(lambda: asked(tenant, body) == 1, "the first attempt is being generated")
        with pytest.raises(openai.ConflictError) as refused:
            await sent
    finally:
        tenant.chain.budget.holding_answers = False
        await client.close()
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    assert "not served or charged again" in error["message"]
    assert refused.value.response.headers["x-request-id"].startswith("idem-")
    told = refused.value.response.json()["x_router"]
    if not stream:  # the first still runs (its upstream held until now): told so and the hold it has, not a charge
        assert "still in flight, holding" in error["message"]
        assert told["cost_pending"] is True and Decimal(told["held_usd"]) > 0
        assert "x-router-cost-usd" not in refused.value.response.headers

    await eventually(tenant.ledger, "the first attempt is charged")
    [record] = await tenant.ledger()
    assert asked(tenant, body) == 1  # the retry reached no upstream
    assert record["request_id"] == refused.value.response.headers["x-request-id"]
    assert Decimal(record["cost_usd"]) > 0
    assert await tenant.spent_pico() == Decimal(record["cost_usd"]) * PICO
    if "cost_usd" in told:  # a stream is cut as its client leaves, charged what it generated: the retry told that
        assert told["cost_usd"] == record["cost_usd"] and f"it was charged {record['cost_usd']} USD" in error["message"]


async def test_a_streams_retry_after_the_answer_gets_its_events_and_two_keys_sending_one_value_are_both_served(
    tenant: Tenant,
) -> None:
    """A stream's answer is sent again (services/edge/replays.py) as a chat completion's, and so is a legacy
    completion's (its retry charged nothing: a stream cut before its end keeps the 409, test_idempotency_replay.py)."""
    first, second = tenant.client(0, max_retries=0), tenant.client(1, max_retries=0)
    bodies = (ask(), ask())
    try:
        cost_first = await complete(first, bodies[0], True, "same-value")
        cost_second = await complete(second, bodies[1], True, "same-value")  # the other key: a request of its own
        for client, body, cost in ((first, bodies[0], cost_first), (second, bodies[1], cost_second)):
            assert await complete(client, body, True, "same-value") == cost  # its events sent again
        prompt = f"say {uuid.uuid4().hex}"
        legacy = first.completions.create  # the same request each time: the model, prompt and limit below
        told = []
        for _ in range(2):  # each read to its end before the next is sent
            streamed = await legacy(model="cheap-model", prompt=prompt, max_tokens=20, stream=True, extra_headers=KEYED)
            told.append([chunk.model_dump() async for chunk in streamed])
        assert told[0] and told[1] == told[0]
    finally:
        await first.close()
        await second.close()
    costs = [Decimal(r["cost_usd"]) for r in await tenant.ledger()]
    assert len(costs) == 3 and Decimal(cost_first) in costs and Decimal(cost_second) in costs  # each charged once


KEYED = {"Idempotency-Key": "legacy-stream"}


async def test_a_retry_after_a_refusal_that_charged_nothing_is_served_once(tenant: Tenant) -> None:
    client = tenant.client(max_retries=0)
    body = ask()
    try:
        await tenant.set_limit("0")
        with pytest.raises(openai.RateLimitError) as refused:
            await complete(client, body, False, "after-the-budget")
        assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "insufficient_quota"
        await tenant.set_limit(None)
        cost = await complete(client, body, False, "after-the-budget")  # the same key, once the budget allows it
        again = await answered(client, body, "after-the-budget")  # its answer, sent again
        assert again.headers["idempotent-replayed"] == "true" and again.json()["x_router"]["cost_usd"] == cost
    finally:
        await client.close()
    [record] = await tenant.ledger()
    assert record["cost_usd"] == cost


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_the_sdks_retry_after_a_failure_that_cost_nothing_is_served_once(tenant: Tenant, stream: bool) -> None:
    """A first admitted and failed upstream, charged nothing and nothing delivered, releases its value (lua.py,
    CHARGE): the retry the SDK makes of that 503, with the same key, is served and charged once, and a retry after it is
    the 409 telling that charge. Before, the retry was a 409 `idempotency_key_reused` charged 0, `x-should-retry:
    false`: the key could never be used again though nothing was served."""
    faults = [Fault.error(500)] * 6  # every attempt on both models, of the first request alone (cleared on its 503)
    tenant.chain.budget.enqueue(*faults)
    tenant.chain.premium.enqueue(*faults)
    replies: list[httpx.Response] = []

    def clear_faults() -> None:
        for upstream in (tenant.chain.budget, tenant.chain.premium):  # the session's: none left for the next test
            upstream.faults.clear()

    async def seen(response: httpx.Response) -> None:
        replies.append(response)
        clear_faults()  # before the SDK sends its retry

    http = httpx.AsyncClient(event_hooks={"response": [seen]})
    client = tenant.client(max_retries=2, http_client=http)
    body = ask()
    try:
        cost = await complete(client, body, stream, "fails-upstream")
        assert await complete(client, body, stream, "fails-upstream") == cost  # sent again
    finally:
        await client.close()
        clear_faults()
    assert [r.status_code for r in replies] == [503, 200, 200]  # the SDK's retry of the 503 served
    assert replies[-1].headers["idempotent-replayed"] == "true"
    assert len({r.headers["x-request-id"] for r in replies}) == 1  # one request id throughout
    failed, served = sorted(await tenant.ledger(), key=lambda record: record["ts"])
    assert failed["outcome"] == "failed" and Decimal(failed["cost_usd"]) == 0
    assert served["outcome"] == "ok" and served["cost_usd"] == cost and Decimal(cost) > 0
    assert await tenant.spent_pico() == Decimal(cost) * PICO


async def test_a_retry_after_the_money_store_was_out_of_reach_is_served_once(chain: Chain, tmp_path: Path) -> None:
    """STORE_UNAVAILABLE: nothing admitted, so nothing charged; the same key, sent again once the store is back, is
    served (a router of its own, its money store the chain's Redis behind a proxy that takes it out of reach)."""
    parts = urlsplit(chain.redis_url)
    async with LossyProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        router = await extra_router(chain, redis_url=proxy.url_for(chain.redis_url), data_dir=tmp_path / "data")
        try:
            async with tenant_before(chain, f"127.0.0.1:{router.port}") as tenant:
                client = tenant.client(max_retries=0)
                body = ask()
                try:
                    proxy.go_down()
                    with pytest.raises(openai.InternalServerError) as refused:
                        await complete(client, body, False, "store-down")
                    assert refused.value.status_code == 503 and refused.value.code == "store_unavailable"
                    proxy.come_back()
                    served: list[str] = []

                    async def retried() -> bool:
                        """The same key sent again: refused (503) until the router has found its store back."""
                        try:
                            served.append(await complete(client, body, False, "store-down"))
                        except openai.InternalServerError as again:
                            assert again.status_code == 503 and again.code == "store_unavailable"
                        return bool(served)

                    await eventually(retried, "the retry is served once the store is back")
                    [cost] = served
                    again = await answered(client, body, "store-down")
                    assert again.headers["idempotent-replayed"] == "true"
                finally:
                    proxy.come_back()
                    await client.close()
                [record] = await tenant.ledger()
                assert record["cost_usd"] == cost
                assert await tenant.spent_pico() == Decimal(cost) * PICO
        finally:
            await router.stop(1)


async def test_a_retry_after_a_failure_settled_through_the_outbox_is_served_once(chain: Chain, tmp_path: Path) -> None:
    """The first fails upstream, charged nothing, as the money store goes out of reach: its charge of 0 waits in the
    router's outbox. Landing from there, it releases the value as the charge made in time would have: the retry is
    served and charged once (before, the value stayed used: every retry the 409 of a request charged 0)."""
    faults = [Fault.error(500)] * 6  # every attempt on both models
    parts = urlsplit(chain.redis_url)
    async with LossyProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        router = await extra_router(chain, redis_url=proxy.url_for(chain.redis_url), data_dir=tmp_path / "data")
        try:
            async with tenant_before(chain, f"127.0.0.1:{router.port}") as tenant:
                client = tenant.client(max_retries=0)
                body = ask()
                upstreams = (tenant.chain.budget, tenant.chain.premium)
                try:
                    for upstream in upstreams:
                        upstream.enqueue(*faults)
                    tenant.chain.budget.holding_answers = True
                    first = asyncio.ensure_future(complete(client, body, False, "outbox-release"))
                    await eventually(lambda: asked(tenant, body) == 1, "the first admitted and sent upstream")
                    proxy.go_down()  # its charge of 0 goes to the outbox
                    tenant.chain.budget.holding_answers = False
                    with pytest.raises(openai.APIStatusError) as failed:
                        await first
                    assert failed.value.status_code >= 500
                    for upstream in upstreams:
                        upstream.faults.clear()
                    assert '"release":true' in (tmp_path / "data" / "charges-outbox.jsonl").read_text()
                    proxy.come_back()
                    served: list[str] = []

                    async def retried() -> bool:
                        """The same key sent again: the request in flight (its charge still in the outbox) or the store
                        not yet found back, until the outbox's charge of 0 lands and releases the value."""
                        try:
                            served.append(await complete(client, body, False, "outbox-release"))
                        except openai.ConflictError as again:
                            assert "still in flight" in again.message
                        except openai.InternalServerError as again:
                            assert again.status_code == 503 and again.code == "store_unavailable"
                        return bool(served)

                    await eventually(retried, "the retry is served once the outbox's release lands")
                    [cost] = served
                    again = await answered(client, body, "outbox-release")  # its answer sent again, not served again
                    assert again.headers["idempotent-replayed"] == "true"
                finally:
                    tenant.chain.budget.holding_answers = False
                    proxy.come_back()
                    for upstream in upstreams:
                        upstream.faults.clear()
                    await client.close()
                failed_record, served_record = sorted(await tenant.ledger(), key=lambda record: record["ts"])
                assert failed_record["outcome"] == "failed" and Decimal(failed_record["cost_usd"]) == 0
                assert served_record["outcome"] == "ok" and served_record["cost_usd"] == cost and Decimal(cost) > 0
                assert await tenant.spent_pico() == Decimal(cost) * PICO
        finally:
            await router.stop(1)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completions", {"model": "cheap-model", "max_tokens": 20}),
        ("/responses", {"model": "cheap-model", "max_output_tokens": 20}),
    ],
)
async def test_the_other_completion_routes_take_the_key(tenant: Tenant, path: str, body: dict[str, Any]) -> None:
    text = f"say something {uuid.uuid4().hex}"
    sent = {**body, ("prompt" if path == "/completions" else "input"): text}
    headers = {"authorization": f"Bearer {tenant.keys[0]}", "idempotency-key": "route-key"}
    async with httpx.AsyncClient(timeout=20) as http:
        served = await http.post(f"{tenant.base_url}{path}", json=sent, headers=headers)
        again = await http.post(f"{tenant.base_url}{path}", json=sent, headers=headers)
    assert served.status_code == 200, served.text
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == served.json() and again.headers["x-request-id"] == served.headers["x-request-id"]
    assert again.headers["x-router-cost-usd"] == served.headers["x-router-cost-usd"]
    assert len(await tenant.ledger()) == 1


async def raw_post(base_url: str, api_key: str, header_lines: list[bytes]) -> tuple[int, bytes]:
    """A chat completion sent byte for byte (an HTTP client refuses to send control characters in a header)."""
    url = httpx.URL(base_url)
    body = httpx.Request("POST", "http://x", json=ask()).read()
    head = [
        b"POST /v1/chat/completions HTTP/1.1",
        f"host: {url.host}:{url.port}".encode(),
        f"authorization: Bearer {api_key}".encode(),
        b"content-type: application/json",
        f"content-length: {len(body)}".encode(),
        b"connection: close",
        *header_lines,
    ]
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


EDGES = "invalid_idempotency_key"  # the edge's refusal, naming the header
PROTOCOLS = "invalid_http_request"  # a byte no header may hold, refused by the HTTP protocol first, as in any header


@pytest.mark.parametrize(
    ("header_lines", "code"),
    [
        ([b"idempotency-key: " + b"k" * 256], EDGES),
        ([b"idempotency-key: " + b"k" * 8000], EDGES),
        ([b"idempotency-key: a\x01b"], PROTOCOLS),
        ([b"idempotency-key: a\x7fb"], PROTOCOLS),
        ([b"idempotency-key: a\tb"], EDGES),
        ([b"idempotency-key: caf\xc3\xa9"], EDGES),
        ([b"idempotency-key: two words"], EDGES),
        ([b"idempotency-key:"], EDGES),
        ([b"idempotency-key: one", b"idempotency-key: two"], EDGES),
    ],
    ids=["256", "8000", "control", "delete", "tab", "non-ascii", "space", "empty", "twice"],
)
async def test_a_hostile_key_is_a_400_and_reaches_no_router(
    tenant: Tenant, header_lines: list[bytes], code: str
) -> None:
    before = len(tenant.chain.budget.requests)
    status, body = await raw_post(tenant.base_url, tenant.keys[0], header_lines)
    assert status == 400, body[:200]
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error"
    if code == EDGES:
        assert error["param"] == "Idempotency-Key"
    assert "kkkk" not in error["message"]  # the value is never echoed
    assert len(tenant.chain.budget.requests) == before
    assert await tenant.ledger() == []


async def test_two_retries_racing_after_a_failure_that_cost_nothing_are_served_once(tenant: Tenant) -> None:
    """The value released (its first failed upstream, charged nothing): of two retries sent at once, one is served and
    the other refused as in flight (the router's ADMIT lets one in), never both served and charged."""
    faults = [Fault.error(500)] * 6
    tenant.chain.budget.enqueue(*faults)
    tenant.chain.premium.enqueue(*faults)
    client = tenant.client(max_retries=0)
    body = ask()
    try:
        with pytest.raises(openai.InternalServerError):
            await complete(client, body, False, "racing")
        for upstream in (tenant.chain.budget, tenant.chain.premium):
            upstream.faults.clear()
        before = asked(tenant, body)
        tenant.chain.budget.holding_answers = True
        racing = [asyncio.ensure_future(complete(client, body, False, "racing")) for _ in range(2)]
        await eventually(lambda: asked(tenant, body) == before + 1, "one retry is being generated")
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        [refused] = done
        with pytest.raises(openai.ConflictError) as conflict:
            refused.result()
        assert "still in flight" in conflict.value.message
        tenant.chain.budget.holding_answers = False
        served = await next(task for task in racing if task is not refused)
    finally:
        tenant.chain.budget.holding_answers = False
        for upstream in (tenant.chain.budget, tenant.chain.premium):
            upstream.faults.clear()
        await client.close()
    assert asked(tenant, body) == before + 1
    failed, ok = sorted(await tenant.ledger(), key=lambda record: record["ts"])
    assert failed["outcome"] == "failed" and ok["cost_usd"] == served
    assert await tenant.spent_pico() == Decimal(served) * PICO
