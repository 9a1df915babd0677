"""The operator's surface over the running chain: after a mixed run (served, escalated, cached, refused by
budget), the SQL ledger's stats and the money store's budgets agree with the answers' own costs and the Redis
ledger to the pico-dollar; a tenant's key sees only its tenant, an admin key sees all and sets overrides; the
decision without a generation over REST charges nothing."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis
from pydantic import SecretStr

from llmrouter.errors import ServiceError
from llmrouter.v1 import operator_pb2, operator_pb2_grpc
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.router.store import key_id
from tests.conftest import ledger_records
from tests.integration.conftest import SILENCE, Chain, free_port, start_edge


@pytest.fixture
async def keyed_edge(chain: Chain) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A second edge in front of the same router, with two tenants' keys (two of acme's: a and a2) and an admin key."""
    run = uuid.uuid4().hex[:8]
    tenants = {"a": f"acme-{run}", "a2": f"acme-{run}", "g": f"globex-{run}", "root": f"ops-{run}"}
    keys = {name: f"sk-{name}-{run}" for name in tenants}
    # The key file's format, `<tenant> <sha256 of the key>`, with the role word `admin` on the admin's line.
    api_keys = ",".join(key_line(tenants[n], keys[n]) + (" admin" if n == "root" else "") for n in tenants)
    settings = EdgeSettings(
        port=free_port(), router_addr=chain.router_addr, api_keys=SecretStr(api_keys), request_timeout_s=20
    )
    server, task, channel = await start_edge(settings)
    try:
        yield f"http://127.0.0.1:{settings.port}/v1", {**{f"key_{n}": k for n, k in keys.items()}, **tenants}
    finally:
        server.should_exit = True
        await task
        await channel.close()


def chat(text: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 32}


async def redis_ledger(chain: Chain, tenant: str) -> list[dict[str, Any]]:
    db = redis.from_url(chain.redis_url)
    try:
        return [r for r in await ledger_records(db) if r["tenant"] == tenant]
    finally:
        await db.aclose()


async def stats_when_copied(http: httpx.AsyncClient, key: str, requests: int, **params: str) -> dict[str, Any]:
    """The sink copies asynchronously: wait (bounded) until the table holds the run's rows."""
    deadline = time.monotonic() + 30
    while True:
        reply = await http.get("/router/stats", params=params, headers={"authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        if int(body["total"]["requests"]) >= requests or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.2)


async def test_stats_and_budgets_agree_with_the_ledger_to_the_pico_dollar(
    chain: Chain, keyed_edge: tuple[str, dict[str, str]]
) -> None:
    base_url, who = keyed_edge
    acme = {"authorization": f"Bearer {who['key_a']}"}
    globex = {"authorization": f"Bearer {who['key_g']}"}
    admin = {"authorization": f"Bearer {who['key_root']}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        costs: list[Decimal] = []
        prompts = [f"What is 2 + {i}? {uuid.uuid4().hex}" for i in range(4)]
        prompts += [f"{SILENCE} Prove Fermat's little theorem. {uuid.uuid4().hex}"]  # escalated
        for prompt in [*prompts, prompts[0]]:  # the repeat is a cache hit, charged nothing
            reply = await http.post("/chat/completions", json=chat(prompt), headers=acme)
            assert reply.status_code == 200, reply.text
            costs.append(Decimal(reply.headers["x-router-cost-usd"]))
        reply = await http.post("/chat/completions", json=chat(f"Hello {uuid.uuid4().hex}"), headers=globex)
        assert reply.status_code == 200

        # The decision alone: every candidate, no provider call, no charge.
        decided = await http.post("/router/decide", json=chat("Write a proof of the four colour theorem"), headers=acme)
        assert decided.status_code == 200, decided.text
        decision = decided.json()
        assert decision["model"] in {c["model"] for c in decision["candidates"]}
        assert {c["model"] for c in decision["candidates"]} == {"cheap-model", "strong-model"}
        assert all("estimated_cost_usd" in c and "predicted_quality" in c for c in decision["candidates"])

        body = await stats_when_copied(http, who["key_a"], len(costs), group_by="model")
        total = body["total"]
        ledger = await redis_ledger(chain, who["a"])
        assert len(ledger) == len(costs) == int(total["requests"])  # the decision was not charged
        assert Decimal(total["cost_usd"]) == sum(costs) == sum(Decimal(r["cost_usd"]) for r in ledger)
        baseline = sum(Decimal(r["baseline_cost_usd"]) for r in ledger)
        assert Decimal(total["baseline_cost_usd"]) == baseline
        assert Decimal(total["saved_usd"]) == baseline - sum(costs)
        assert any(r["cache_hit"] for r in ledger)  # the repeat
        assert total["cache_hit_rate"] == pytest.approx(sum(r["cache_hit"] for r in ledger) / len(costs))
        assert total["escalation_rate"] == pytest.approx(sum(r["escalated"] for r in ledger) / len(costs))
        assert sum(g["requests"] for g in map(lambda g: {"requests": int(g["requests"])}, body["groups"])) == len(costs)
        assert sum(total["model_share"].values()) == pytest.approx(1.0)

        # Budgets: the money store's spend for the tenant, and nothing of another tenant.
        budgets = (await http.get("/router/budgets", headers=acme)).json()["budgets"]
        assert {b["tenant"] for b in budgets} == {who["a"]}
        tenant_budget = next(b for b in budgets if b["scope"] == "tenant")
        assert Decimal(tenant_budget["spent_usd"]) == sum(costs)
        assert Decimal(tenant_budget["held_usd"]) == 0

        # A tenant cannot see others' stats or set budgets; an admin sees all and sets overrides.
        assert (
            await http.put(f"/router/budgets/tenant/{who['a']}", json={"limit_usd": "1"}, headers=acme)
        ).status_code == 403
        await stats_when_copied(http, who["key_g"], 1)
        everyone = await stats_when_copied(http, who["key_root"], 0, group_by="tenant")
        groups = {g["key"]: g for g in everyone["groups"]}
        assert Decimal(groups[who["a"]]["cost_usd"]) == sum(costs)
        assert int(groups[who["g"]]["requests"]) == 1
        set_reply = await http.put(f"/router/budgets/tenant/{who['a']}", json={"limit_usd": "0.5"}, headers=admin)
        assert set_reply.status_code == 200, set_reply.text
        assert set_reply.json()["limit_usd"] == "0.5" and set_reply.json()["overridden"] is True
        mine = (await http.get("/router/budgets", headers=acme)).json()["budgets"]
        acme_budget = next(b for b in mine if b["scope"] == "tenant")
        assert Decimal(acme_budget["remaining_usd"]) == Decimal("0.5") - sum(costs)
        every_budget = (await http.get("/router/budgets", headers=admin)).json()["budgets"]
        assert {who["a"], who["g"]} <= {b["tenant"] for b in every_budget}
        removed = await http.delete(f"/router/budgets/tenant/{who['a']}", headers=admin)
        assert removed.json()["overridden"] is False


async def test_a_key_sees_its_tenants_budget_and_its_own_not_another_keys(
    chain: Chain, keyed_edge: tuple[str, dict[str, str]]
) -> None:
    """Two keys of one tenant: each sees the tenant's budget (their spend summed: the budget they share) and its own
    key's, never the other key's spend; the admin sees both keys."""
    base_url, who = keyed_edge
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        costs = {}
        for name in ("a", "a2"):
            headers = {"authorization": f"Bearer {who[f'key_{name}']}"}
            reply = await http.post("/chat/completions", json=chat(f"Hi {uuid.uuid4().hex}"), headers=headers)
            assert reply.status_code == 200, reply.text
            costs[name] = Decimal(reply.headers["x-router-cost-usd"])
        for name, other in (("a", "a2"), ("a2", "a")):
            reply = await http.get("/router/budgets", headers={"authorization": f"Bearer {who[f'key_{name}']}"})
            assert reply.status_code == 200, reply.text
            seen = {(b["scope"], b["name"]): Decimal(b["spent_usd"]) for b in reply.json()["budgets"]}
            assert seen == {("tenant", who["a"]): sum(costs.values()), ("key", key_id(who[f"key_{name}"])): costs[name]}
            assert key_id(who[f"key_{other}"]) not in reply.text
        deadline = time.monotonic() + 30  # the admin's listing names the keys on record: the sink's copy, ~1 s behind
        while True:
            reply = await http.get("/router/budgets", headers={"authorization": f"Bearer {who['key_root']}"})
            named = {b["name"] for b in reply.json()["budgets"] if b["tenant"] == who["a"]}
            if {key_id(who["key_a"]), key_id(who["key_a2"])} <= named or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert {key_id(who["key_a"]), key_id(who["key_a2"])} <= named


async def test_a_key_sees_its_own_stats_not_its_colleagues(
    chain: Chain, keyed_edge: tuple[str, dict[str, str]]
) -> None:
    """Two keys of one tenant: each key's stats are its own requests alone (how many, what they cost, their cache hits
    and models), as its budget is; an admin's, grouped by tenant, sums both keys'."""
    base_url, who = keyed_edge
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        costs: dict[str, list[Decimal]] = {"a": [], "a2": []}
        for name, count in (("a", 1), ("a2", 3)):
            headers = {"authorization": f"Bearer {who[f'key_{name}']}"}
            for _ in range(count):
                reply = await http.post("/chat/completions", json=chat(f"Hi {uuid.uuid4().hex}"), headers=headers)
                assert reply.status_code == 200, reply.text
                costs[name].append(Decimal(reply.headers["x-router-cost-usd"]))
        for name in ("a2", "a"):  # each waits for its own rows to be copied: the sink is about a second behind
            body = await stats_when_copied(http, who[f"key_{name}"], len(costs[name]), group_by="tenant")
            assert int(body["total"]["requests"]) == len(costs[name])
            assert Decimal(body["total"]["cost_usd"]) == sum(costs[name])
            assert [g["key"] for g in body["groups"]] == [who["a"]]
        everyone = await stats_when_copied(http, who["key_root"], 0, group_by="tenant")
        acme = {g["key"]: g for g in everyone["groups"]}[who["a"]]
        assert (int(acme["requests"]), Decimal(acme["cost_usd"])) == (4, sum(costs["a"] + costs["a2"]))


async def test_operator_api_bad_input_is_a_clear_400(keyed_edge: tuple[str, dict[str, str]]) -> None:
    base_url, who = keyed_edge
    admin = {"authorization": f"Bearer {who['key_root']}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for params in ({"group_by": "weekday"}, {"since": "yesterday"}, {"since": "200", "until": "100"}):
            reply = await http.get("/router/stats", params=params, headers=admin)
            assert reply.status_code == 400, (params, reply.text)
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        for path, body in (
            ("/router/budgets/planet/x", {"limit_usd": "1"}),
            ("/router/budgets/tenant/x", {"limit_usd": "-1"}),
            ("/router/budgets/tenant/x", {"limit_usd": "lots"}),
            ("/router/budgets/tenant/x", {"limit": "1"}),
        ):
            reply = await http.put(path, json=body, headers=admin)
            assert reply.status_code == 400, (path, body, reply.text)
        assert (await http.get("/router/stats")).status_code == 401


@pytest.mark.parametrize(("since", "until"), [(math.nan, 0.0), (0.0, math.nan), (math.inf, 0.0), (0.0, math.inf)])
async def test_stats_bounds_that_are_no_instant_are_invalid_not_an_empty_answer(
    chain: Chain, since: float, until: float
) -> None:
    """A gRPC caller's NaN or infinity (the edge refuses them itself): the router answered 0 requests and $0, a NaN
    bound matching no row of the ledger, as though nothing had been served."""
    request = operator_pb2.StatsRequest(admin=True, since=since, until=until)
    async with grpc.aio.insecure_channel(chain.router_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await operator_pb2_grpc.OperatorStub(channel).Stats(request, timeout=10)
    error = ServiceError.from_rpc_error(refused.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), error.message


async def test_two_authorization_headers_are_a_400_on_every_authenticated_route(
    chain: Chain, keyed_edge: tuple[str, dict[str, str]]
) -> None:
    """Which of two keys counts is ambiguous: a proxy in front may check or log one while the edge serves the
    other (a tenant's request charged to another's key, or answered with an admin's view). Refused, in OpenAI's
    error body, before anything reaches the router."""
    base_url, who = keyed_edge
    pairs = [(who["key_root"], who["key_a"]), (who["key_a"], who["key_root"]), (who["key_g"], who["key_a"])]
    pairs.append((who["key_a"], who["key_a"]))  # the same key twice: still no single credential
    calls = [
        ("POST", "/chat/completions", chat(f"Say hello {uuid.uuid4().hex}")),
        ("POST", "/completions", {"model": "auto", "prompt": "hi", "max_tokens": 8}),
        ("POST", "/router/decide", chat("hi")),
        ("GET", "/router/budgets", None),
        ("GET", "/router/stats", None),
        ("PUT", f"/router/budgets/tenant/{who['a']}", {"limit_usd": "1000"}),
        ("GET", "/models", None),
        ("GET", "/files", None),
        ("GET", "/batches", None),
    ]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for first, second in pairs:
            headers = [("authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]
            for method, path, body in calls:
                reply = await http.request(method, path, json=body, headers=headers)
                assert reply.status_code == 400, (method, path, reply.status_code, reply.text)
                assert reply.json()["error"] == {
                    "message": "more than one Authorization header",
                    "type": "invalid_request_error",
                    "param": "authorization",
                    "code": "ambiguous_credentials",
                }
        budgets = (await http.get("/router/budgets", headers={"authorization": f"Bearer {who['key_root']}"})).json()
    assert not any(b["overridden"] for b in budgets["budgets"] if b["tenant"] == who["a"])
    assert await redis_ledger(chain, who["a"]) == [] and await redis_ledger(chain, who["g"]) == []


async def test_legacy_completions_route_and_charge_like_chat(
    chain: Chain, keyed_edge: tuple[str, dict[str, str]]
) -> None:
    """POST /v1/completions (prompt in, text out), plain and streamed, through the same routing, headers
    and accounting as chat completions; what only a completion model understands is a clear 400."""
    import openai

    base_url, who = keyed_edge
    tenant = who["g"]
    client = openai.AsyncOpenAI(base_url=base_url, api_key=who["key_g"], max_retries=0)
    raw = await client.completions.with_raw_response.create(
        model="auto", prompt=f"Say hello {uuid.uuid4().hex}", max_tokens=16
    )
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.model == raw.headers["x-router-model"]
    cost = Decimal(raw.headers["x-router-cost-usd"])
    stream = await client.completions.create(
        model="auto", prompt=f"Say bye {uuid.uuid4().hex}", max_tokens=16, stream=True
    )
    streamed = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert streamed
    ledger = await redis_ledger(chain, tenant)
    assert len(ledger) == 2 and Decimal(ledger[0]["cost_usd"]) == cost
    headers = {"authorization": f"Bearer {who['key_g']}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers) as http:
        body: dict[str, Any]
        for body in ({"prompt": ["a", "b"]}, {"prompt": ""}, {"prompt": "x", "echo": True}, {"messages": []}):
            reply = await http.post("/completions", json={"model": "auto", **body})
            assert reply.status_code == 400, (body, reply.text)
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    await client.close()
