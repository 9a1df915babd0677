"""The edge against hostile callers and faults: no caller chooses its tenant, only price-neutral fields reach a
provider, malformed bodies are 400s, provider error text stays in the logs, and a router outage is a 503 the
readiness endpoint reports."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import httpx
import openai
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llmrouter.passthrough import PASSTHROUGH_FIELDS
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.edge.openai_api import REFUSED
from services.edge.settings import EdgeSettings
from services.router.end_users import END_USER_FIELDS, scoped_id
from tests.conftest import ledger_records
from tests.fakes.server import Fault
from tests.integration.conftest import Chain, free_port, start_edge
from tests.waiting import eventually, http_requests_ended

NO_KEY = "no API key: send it as 'Authorization: Bearer <key>'"

CHAT = "/v1/chat/completions"
SECRET = "org-Zq81SecretOrganisation"  # what a provider's error text may carry


def ask(text: str = "", **fields: object) -> dict:
    return {"messages": [{"role": "user", "content": text or uuid.uuid4().hex}], "quality_target": 0, **fields}


async def record_of(chain: Chain, request_id: str) -> dict:
    db = redis.from_url(chain.redis_url)
    try:
        for _ in range(100):
            for record in await ledger_records(db):
                if record["request_id"] == request_id:
                    return record
            await asyncio.sleep(0.05)
    finally:
        await db.aclose()
    raise AssertionError(f"no ledger record for {request_id}")


async def test_without_keys_every_caller_is_the_anonymous_tenant(chain: Chain) -> None:
    """A spoofed tenant header is refused (an x-router-* header the edge does not know) and chooses nothing, and a
    made-up bearer string is not a fresh per-key allowance."""
    victim = f"victim-{uuid.uuid4().hex[:8]}"
    fresh = {"authorization": f"Bearer sk-fresh-{uuid.uuid4().hex}"}
    async with httpx.AsyncClient(timeout=30) as http:
        url = f"{chain.base_url}/chat/completions"
        spoofed = await http.post(url, json=ask(), headers={**fresh, "x-router-tenant": victim})
        reply = await http.post(url, json=ask(), headers=fresh)
    assert (spoofed.status_code, spoofed.json()["error"]["param"]) == (400, "x-router-tenant"), spoofed.text
    assert reply.status_code == 200, reply.text
    record = await record_of(chain, reply.headers["x-request-id"])
    assert (record["tenant"], record["key"]) == ("default", "anonymous")
    db = redis.from_url(chain.redis_url)
    try:
        assert await db.keys(f"*{victim}*") == [] and await db.keys(f"*{victim.encode().hex()}*") == []
    finally:
        await db.aclose()


async def test_with_keys_the_key_alone_names_the_tenant(chain: Chain) -> None:
    tenant, key = chain.keys["acme"]
    assert key.endswith("=")  # base64 padding is part of the key
    async with httpx.AsyncClient(timeout=30) as http:
        url = f"{chain.keyed_url}/chat/completions"
        spoofed = {"authorization": f"Bearer {key}", "x-router-tenant": chain.keys["globex"][0]}
        refused = await http.post(url, json=ask(), headers=spoofed)
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "x-router-tenant"), refused.text
        reply = await http.post(url, json=ask(), headers={"authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        assert (await record_of(chain, reply.headers["x-request-id"]))["tenant"] == tenant
        for auth in (None, "Bearer", f"Bearer {key.rstrip('=')}", f"Bearer {key}x", key, f"Basic {key}"):
            headers = {"authorization": auth} if auth is not None else {}
            refused = await http.post(url, json=ask(), headers={**headers, "x-router-tenant": tenant})
            assert refused.status_code == 401, auth
            assert refused.json()["error"] == {
                # A key sent other than as a bearer token is not sent: told how to send it, as a missing one is.
                "message": "invalid API key" if (auth or "").startswith("Bearer ") else NO_KEY,
                "type": "invalid_request_error",  # as at OpenAI, with code invalid_api_key
                "param": None,
                "code": "invalid_api_key",
            }
        assert (await http.get(f"{chain.keyed_url}/models")).status_code == 401


@pytest.mark.parametrize("field", sorted(REFUSED))
async def test_a_field_the_router_cannot_honour_is_refused_naming_it(chain: Chain, field: str) -> None:
    sent = len(chain.budget.requests) + len(chain.premium.requests)
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=ask(**{field: "priority"}))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (field, "unsupported_parameter", "invalid_request_error")
    assert field in error["message"]
    assert len(chain.budget.requests) + len(chain.premium.requests) == sent  # nothing reached a provider


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 2}, "n"), ({"functions": []}, "functions"), ({"frobnicate": 1}, "frobnicate")],
)
async def test_more_choices_and_unknown_fields_are_refused(chain: Chain, fields: dict, param: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", json=ask(**fields))
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param


async def test_the_sdk_still_works_and_price_neutral_fields_reach_the_provider(chain: Chain) -> None:
    sdk = openai.AsyncOpenAI(base_url=chain.base_url, api_key="unused", max_retries=0)
    neutral: dict[str, Any] = {
        "top_p": 0.5,
        "seed": 7,
        "stop": ["\n\n"],
        "user": "end-user-1",
        "safety_identifier": "hashed-end-user",
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "response_format": {"type": "text"},
    }
    completion = await sdk.chat.completions.create(
        model="cheap-model", messages=[{"role": "user", "content": uuid.uuid4().hex}], n=1, **neutral
    )
    assert completion.choices[0].message.content
    sent = chain.budget.requests[-1].json
    scoped = {k: scoped_id("default", v) if k in END_USER_FIELDS else v for k, v in neutral.items()}
    assert {k: sent[k] for k in neutral} == scoped
    assert set(sent) - {"model", "messages", "max_tokens"} <= PASSTHROUGH_FIELDS
    with pytest.raises(openai.BadRequestError) as err:
        await sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], service_tier="priority"
        )
    assert err.value.param == "service_tier"


DEEP = b'{"messages": [{"role": "user", "content": "x"}], "stop": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
BAD_BODIES = [
    ("nesting past the interpreter's recursion limit", DEEP),
    (
        "nesting past the edge's limit",
        b'{"messages": [{"role": "user", "content": "x"}], "tools": ' + b"[" * 65 + b"]" * 65 + b"}",
    ),
    ("lone surrogate escaped in content", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    ("lone low surrogate escaped", b'{"messages": [{"role": "user", "content": "\\udc00"}]}'),
    ("lone surrogate in a key", b'{"messages": [{"role": "user", "content": "x", "\\ud800": 1}]}'),
    ("lone surrogate in a passthrough value", b'{"messages": [{"role": "user", "content": "x"}], "user": "\\ud800"}'),
    ("surrogate encoded as UTF-8 bytes", b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'),
    ("NaN", b'{"messages": [{"role": "user", "content": "x"}], "top_p": NaN}'),
    (  # a float's range passed: as Infinity it is no JSON any upstream reads
        "a number past a float's range in a tool's schema",
        b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", '
        b'"parameters": {"type": "number", "maximum": 1e400}}}]}',
    ),
    ("a 5000-digit integer", b'{"messages": [{"role": "user", "content": "x"}], "seed": ' + b"9" * 5000 + b"}"),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_BODIES], ids=[n for n, _ in BAD_BODIES])
async def test_malformed_bodies_are_400s_not_500s(chain: Chain, body: bytes) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", content=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


async def test_a_surrogate_pair_is_fine(chain: Chain) -> None:
    body = b'{"messages": [{"role": "user", "content": "smile \\ud83d\\ude00 ' + uuid.uuid4().hex.encode() + b'"}]}'
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{chain.base_url}/chat/completions", content=body)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        ([Fault.error(400, message=f"bad schema for {SECRET}")], 400),
        ([Fault.error(500, message=SECRET)] * 2, 502),
        # The router's own context-window refusal is returned as it is; a provider's stays its own.
        ([Fault.error(400, message=f"maximum context length exceeded at {SECRET}")], 400),
    ],
    ids=["provider 400", "provider 500", "provider context length"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_provider_error_text_is_not_echoed(chain: Chain, faults: list, status: int, stream: bool) -> None:
    chain.budget.enqueue(*faults)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "cheap-model", **ask(stream=stream)}
            reply = await http.post(f"{chain.base_url}/chat/completions", json=body)
    finally:
        chain.budget.faults.clear()
    assert reply.status_code in (status, 503), reply.text
    assert SECRET not in reply.text and "fake upstream" not in reply.text
    error = reply.json()["error"]
    assert "request id" in error["message"] and error["type"]


async def test_router_down_is_a_503_with_retry_after_and_not_ready(chain: Chain) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = EdgeSettings(port=free_port(), router_addr=dead, request_timeout_s=5)
    server, task, channel = await start_edge(settings)
    base = f"http://127.0.0.1:{settings.port}"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for stream in (False, True):
                reply = await http.post(f"{base}/v1/chat/completions", json=ask(stream=stream))
                assert reply.status_code == 503, reply.text
                assert int(reply.headers["retry-after"]) >= 1
                assert reply.json()["error"]["type"] == "server_error"
                assert dead not in reply.text and "127.0.0.1" not in reply.text
            models = await http.get(f"{base}/v1/models")
            assert models.status_code == 503 and dead not in models.text
            assert (await http.get(f"{base}/healthz")).status_code == 200  # alive, only not ready
            ready = await http.get(f"{base}/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "not ready"
            assert dead not in ready.text
            assert (await http.get(chain.base_url.removesuffix("/v1") + "/readyz")).json() == {"status": "ready"}
    finally:
        server.should_exit = True
        await task
        await channel.close()


def edge_status_count(status: str) -> float:
    return http_requests_ended(CHAT, status)


async def raw_exchange(base_url: str, head: bytes, body: bytes, close_early: bool = False) -> bytes:
    """One HTTP/1.1 request written byte for byte (clients will not send a lying content-length)."""
    host, port = base_url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n" + head + b"\r\n" + body
        )
        await writer.drain()
        if close_early:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout=20)
    finally:
        writer.close()


GOOD_BODY = json.dumps(ask("hello there")).encode()


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (b"content-length: 99999999999\r\n", GOOD_BODY, b"413"),
        (f"content-length: {len(GOOD_BODY) - 5}\r\n".encode(), GOOD_BODY, b"400"),  # the body read is cut short
        (b"content-length: abc\r\n", GOOD_BODY, b"400"),
        (b"content-length: -1\r\n", GOOD_BODY, b"400"),
        (b"content-length: \xb2\r\n", GOOD_BODY, b"400"),
    ],
    ids=["over the limit", "shorter than the body", "not a number", "negative", "a superscript digit"],
)
async def test_a_lying_content_length_is_a_4xx(chain: Chain, head: bytes, body: bytes, status: bytes) -> None:
    reply = await raw_exchange(chain.base_url, head, body)
    assert reply.split(b" ", 2)[1] == status, reply[:300]


async def test_a_body_cut_short_by_the_client_is_not_a_500(chain: Chain) -> None:
    before, ended = edge_status_count("500"), http_requests_ended(CHAT)
    await raw_exchange(chain.base_url, b"content-length: 1000\r\n", GOOD_BODY, close_early=True)
    await eventually(lambda: http_requests_ended(CHAT) > ended, "the edge ended the request")
    assert edge_status_count("500") == before


class RefusingRouter(router_pb2_grpc.RouterServicer):
    """A router that refuses the edge's own credentials, naming an internal address as interceptors may."""

    async def Complete(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate from 10.1.2.3:50999")


async def test_router_refusing_the_edges_credentials_is_a_502_not_the_callers_401() -> None:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(RefusingRouter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{port}", request_timeout_s=5)
    edge, task, channel = await start_edge(settings)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.post(f"http://127.0.0.1:{settings.port}/v1/chat/completions", json=ask())
        assert reply.status_code == 502, reply.text
        assert "10.1.2.3" not in reply.text and "request id" in reply.json()["error"]["message"]
    finally:
        edge.should_exit = True
        await task
        await channel.close()
        await server.stop(None)


async def test_readiness_follows_the_routers_health_status() -> None:
    """A router that answers but drains (NOT_SERVING) makes the edge not ready; SERVING makes it ready."""
    server = grpc.aio.server()
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = EdgeSettings(port=free_port(), router_addr=f"127.0.0.1:{port}")
    edge, task, channel = await start_edge(settings)
    url = f"http://127.0.0.1:{settings.port}/readyz"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(url)).status_code == 503  # the Router service is not registered yet
            await status.set("llmrouter.v1.Router", health_pb2.HealthCheckResponse.SERVING)
            assert (await http.get(url)).status_code == 200
            await status.set("llmrouter.v1.Router", health_pb2.HealthCheckResponse.NOT_SERVING)
            assert (await http.get(url)).status_code == 503
    finally:
        edge.should_exit = True
        await task
        await channel.close()
        await server.stop(None)
