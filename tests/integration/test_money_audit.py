"""An auditor's reconciliation of the money under chaos, seeded. About 200 requests at once, from three tenants with
two API keys each under tight tenant and key budgets, some with a per-request cost cap: unary and streamed, some left by
their callers at random points, some sent again with the same request id, some repeats served from the response
cache. The cheap model misbehaves on a seeded schedule (fails before and after writing, answers slowly, is cut short so
the answer escalates, leaves out its usage), some callers send a cap no money fits; a first router is stopped past its
grace mid-way, a second (a process) is SIGKILLed with requests in flight, and a third, its reconciler settling what the
killed one left, serves the rest. Then, to the pico-dollar: each budget's spend is the sum of its ledger lines, and the
sum of what its callers were told plus the lines of those told cost_pending or nothing (left, or their router killed);
each caller told a charge (an answer's cost, a failure's charged_usd, a duplicate's) was told its ledger line; no
request is charged twice, no cache hit or hostile one at all, none by another tenant's key; no budget is past its
limit, no capped request past its cap; and every generation a provider reported is charged at least at its model's
prices. Each key's repeats of a prompt are sent once its first was answered, so they hit the routers' shared cache.

Real routers (router.build) behind their gRPC servers on loopback over the real Redis; the providers and classifier a
gRPC server of the test's. The seed is printed, and named in every failure: MONEY_AUDIT_SEED replays it."""

from __future__ import annotations

import asyncio
import os
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services import router
from services.router.settings import RouterSettings
from services.router.store import Account, key_id, to_pico
from tests.conftest import ledger_records
from tests.integration.conftest import Chain
from tests.integration.test_money_faults import RouterProcess, pending_of
from tests.redis_servers import cache_redis
from tests.router.servicer_kit import NearScores, registry_file, serve_providers, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_budgets_mixed_load import REFUSAL
from tests.waiting import eventually

TENANTS = ("t-acme", "t-bolt", "t-cove")
KEYS = {t: (f"{t}-key-a", f"{t}-key-b") for t in TENANTS}  # a key is of one tenant
KEYS_OF_ALL = [k for t in TENANTS for k in KEYS[t]]
TENANT_BUDGET, KEY_BUDGET = Decimal("0.02"), Decimal("0.012")
CAP = Decimal("0.0008")  # a per-request cost cap: below the strong model's worst case, above the cheap one's
MAX_TOKENS = 60
REQUESTS = 200
FATES = ("ok", "slow", "fails_before", "fails_after", "truncated", "declines", "no_usage")
KINDS = ("unary", "stream", "left_stream", "left_unary", "cached", "resent", "hostile")
TAG = re.compile(r"#(\d+)")


def seed() -> int:
    chosen = os.environ.get("MONEY_AUDIT_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**31)


@dataclass
class Plan:
    """One request of the run, drawn from the seed."""

    n: int
    tenant: str
    key: str
    kind: str
    fate: str  # the cheap model's, on its first attempt
    words: int  # what the cheap model writes (the strong one writes all it may)
    leave_after: int  # the deltas a left stream reads first
    capped: bool
    prompt: str
    request_id: str


def draw(rng: random.Random) -> list[Plan]:
    # A cached prompt per key (the cache's scope), sent uncapped (the cap is part of what the cache matches).
    cached = {k: f"What is the capital of France? {uuid.UUID(int=rng.getrandbits(128)).hex}" for k in KEYS_OF_ALL}
    plans = []
    for n in range(REQUESTS):
        tenant, kind = rng.choice(TENANTS), rng.choice(KINDS)
        key = rng.choice(KEYS[tenant])
        prompt = cached[key] if kind == "cached" else f"Question #{n} {uuid.UUID(int=rng.getrandbits(128)).hex}"
        plans.append(
            Plan(
                n,
                tenant,
                key,
                kind,
                rng.choice(FATES),
                rng.randint(3, MAX_TOKENS - 10),
                rng.randint(1, 4),
                rng.random() < 0.25 and kind != "cached",
                prompt,
                f"r{n}-{rng.getrandbits(32):08x}",
            )
        )
    for first in Repeats(plans).first.values():  # answered plainly, so kept for the repeats to hit
        plans[first].fate = "ok"
    return plans


class Repeats:
    """Each key's cached prompt: its first request is answered (and kept in the shared response cache) before the
    others are sent, which are then served from it; sent all at once, every one missed."""

    def __init__(self, plans: list[Plan]) -> None:
        self.first: dict[str, int] = {}
        for plan in plans:
            if plan.kind == "cached":
                self.first.setdefault(plan.key, plan.n)
        self.answered: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    @asynccontextmanager
    async def turn(self, plan: Plan) -> AsyncIterator[None]:
        """Waits, for a repeat, until its key's first request was answered; for that first, says when it was."""
        if plan.kind != "cached":
            yield
            return
        first = self.first[plan.key] == plan.n
        if not first:
            await self.answered[plan.key].wait()
        try:
            yield
        finally:
            if first:
                self.answered[plan.key].set()


@dataclass
class Reported:
    """What the providers generated, by request: each generation whose usage they reported (model, input, output)."""

    usage: dict[int, list[tuple[str, int, int]]] = field(default_factory=lambda: defaultdict(list))
    reached: dict[int, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))


class Chaos(provider_pb2_grpc.ProviderServicer):
    """The cheap model's first attempt at each request does as the plan says; the strong model answers, after a
    short wait, writing all it may. Each generation's reported usage is noted under its plan, found by the request id
    the router passes on (else by the prompt's tag, #n); a request sent again answers plainly."""

    def __init__(self, plans: list[Plan], rng: random.Random) -> None:
        self.plans, self.reported = {p.n: p for p in plans}, Reported()
        self.by_request_id = {p.request_id: p for p in plans}
        self.delays = {p.n: rng.uniform(0.05, 0.4) for p in plans}
        self.tried: set[int] = set()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    def fate(self, request: provider_pb2.GenerateRequest) -> tuple[int, str, int]:
        """The request's tag (-1 for a cached prompt), the fate of this attempt, and how many words it writes."""
        by_id = self.by_request_id.get(request.request_id)
        found = TAG.search(request.messages[-1].content)
        n = by_id.n if by_id else int(found.group(1)) if found else -1
        self.reported.reached[n].set()
        if request.model != "cheap":
            return n, "ok", request.max_tokens
        plan = self.plans.get(n)
        if plan is None or n in self.tried:  # a request sent again: its first attempt had its fate
            return n, "ok", min(20, request.max_tokens)
        self.tried.add(n)
        return n, plan.fate, min(plan.words, request.max_tokens)

    def report(self, n: int, model: str, words: int) -> common_pb2.Usage:
        self.reported.usage[n].append((model, 20, words))
        return common_pb2.Usage(input_tokens=20, output_tokens=words)

    async def unavailable(self, context: Any, n: int, model: str, words: int | None) -> None:
        measured = {}
        if words is not None:  # what the upstream billed before it failed
            usage = self.report(n, model, words)
            cost = REGISTRY.get(model).usage_cost_usd(usage)  # type: ignore[union-attr]
            measured = {"input_tokens": "20", "output_tokens": str(words), "cost_usd": format(cost, "f")}
        error = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", f"{model}: 503", measured)
        await context.abort(error.code, error.message, error.trailing_metadata())

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        n, fate, words = self.fate(request)
        if fate == "slow" or request.model == "strong":
            await asyncio.sleep(self.delays.get(n, 0.05))  # an upstream's latency, not the test's synchronisation
        if fate in ("fails_before", "fails_after"):
            await self.unavailable(context, n, request.model, words if fate == "fails_after" else None)
        content, finish = "word " * words, "stop"
        if fate == "truncated":
            finish = "length"
        if fate == "declines":
            content = REFUSAL
        response = provider_pb2.GenerateResponse(
            content=content, model=request.model, provider="p", finish_reason=finish
        )
        if fate != "no_usage":
            response.usage.CopyFrom(self.report(n, request.model, words))
        return response

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        request = (await anext(messages)).request
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(messages)  # the router's word to send it
        async for chunk in self.GenerateStream(request, context):
            yield chunk

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        n, fate, words = self.fate(request)
        if fate == "fails_before":
            await self.unavailable(context, n, request.model, None)
        for i in range(words):
            yield provider_pb2.GenerateChunk(delta="word ")
            if fate == "slow" or request.model == "strong":
                await asyncio.sleep(self.delays.get(n, 0.05) / words)
            if fate == "fails_after" and i == words // 2:
                await self.unavailable(context, n, request.model, i + 1)
        final = provider_pb2.GenerateResponse(
            model=request.model, provider="p", finish_reason="length" if fate == "truncated" else "stop"
        )
        if fate != "no_usage":
            final.usage.CopyFrom(self.report(n, request.model, words))
        yield provider_pb2.GenerateChunk(final=final)


@dataclass
class Told:
    """What callers were told, by (tenant, request id): each charge named, and the requests told cost_pending."""

    charged: dict[tuple[str, str], list[Decimal]] = field(default_factory=lambda: defaultdict(list))
    pending: set[tuple[str, str]] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)

    def error(self, plan: Plan, err: grpc.aio.AioRpcError) -> None:
        if err.code() == grpc.StatusCode.CANCELLED:
            return  # the caller left: told nothing
        told = ServiceError.from_rpc_error(err)
        self.refused[told.reason or err.code().name] += 1
        if "charged_usd" in told.metadata:
            self.charged[plan.tenant, plan.request_id].append(Decimal(told.metadata["charged_usd"]))
        elif told.metadata.get("cost_pending") == "true":
            self.pending.add((plan.tenant, plan.request_id))

    def cost(self, plan: Plan, cost_usd: str) -> None:
        self.charged[plan.tenant, plan.request_id].append(Decimal(cost_usd))


def asked(plan: Plan) -> router_pb2.CompleteRequest:
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=plan.prompt)],
        tenant=plan.tenant,
        api_key=plan.key,
        quality_target=0.5,
        max_tokens=MAX_TOKENS,
        request_id=plan.request_id,
    )
    if plan.capped:
        request.max_cost_usd = format(CAP, "f")
    if plan.kind == "hostile":  # a cap no money fits, as a hostile caller sends it: refused, charged nothing
        request.max_cost_usd = "NaN"
    return request


async def send(stub: router_pb2_grpc.RouterStub, plan: Plan, told: Told, reported: Reported, repeats: Repeats) -> None:
    """One request as its plan says, in its turn; what its caller is told noted."""
    async with repeats.turn(plan):
        await sent(stub, plan, told, reported)


async def sent(stub: router_pb2_grpc.RouterStub, plan: Plan, told: Told, reported: Reported) -> None:
    request = asked(plan)
    try:
        if plan.kind in ("stream", "left_stream"):
            call = stub.CompleteStream(request, timeout=30)
            deltas = 0
            async for chunk in call:
                if chunk.WhichOneof("kind") == "final":
                    told.cost(plan, chunk.final.cost_usd)
                elif chunk.WhichOneof("kind") == "delta":
                    deltas += 1
                    if plan.kind == "left_stream" and deltas >= plan.leave_after:
                        call.cancel()
                        return
            return
        answering = asyncio.ensure_future(stub.Complete(request, timeout=30))
        if plan.kind == "left_unary":  # left once its generation has reached the provider, unless answered first
            reached = asyncio.ensure_future(reported.reached[plan.n].wait())
            await asyncio.wait([reached, answering], return_when=asyncio.FIRST_COMPLETED)
            reached.cancel()
            if not answering.done():
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
                return
        told.cost(plan, (await answering).cost_usd)
        if plan.kind == "resent":  # sent again, same id, once answered: a duplicate, told the first's charge
            await stub.Complete(request, timeout=30)
    except grpc.aio.AioRpcError as err:
        told.error(plan, err)


@asynccontextmanager
async def a_router(
    tmp_path: Path, name: str, redis_url: str, cache_url: str, providers_port: int
) -> AsyncIterator[RunningServer]:
    """A router as it is deployed (router.build: its upkeep heartbeats, replays its outbox and reconciles), stopped
    at the end unless the test stopped it."""
    settings = RouterSettings(
        port=0,
        metrics_port=0,
        instance_id=name,
        registry_path=registry_file(tmp_path, REGISTRY),
        classifier_addr=f"127.0.0.1:{providers_port}",
        providers_addr=f"127.0.0.1:{providers_port}",
        redis_url=RedisUrl(redis_url),
        cache_redis_url=RedisUrl(cache_url),  # shared by the routers, as deployed
        data_dir=tmp_path / name,
        ledger_sql_path=tmp_path / f"{name}.sqlite3",
        verifier=False,
        auth="none",
        key_budget_usd=KEY_BUDGET,
        upkeep_interval_s=0.2,
        heartbeat_ttl_s=1.0,
    )
    running = await start_server("router", settings, *await router.build(settings))
    try:
        yield running
    finally:
        await running.stop(5)


async def test_the_money_adds_up_under_chaos(tmp_path: Path, redis_url: str) -> None:
    chosen = seed()
    print(f"MONEY_AUDIT_SEED={chosen}")
    rng = random.Random(chosen)
    plans = draw(rng)
    provider, told, repeats = Chaos(plans, rng), Told(), Repeats(plans)
    async with store_on(redis_url) as store:
        for tenant in TENANTS:
            await store.set_limit("tenant", tenant, to_pico(TENANT_BUDGET))
    providers, port = await serve_providers(provider, NearScores())
    cache = cache_redis(tmp_path / "cache", maxmemory="64mb").start()
    drained, killed, rest = plans[:70], plans[70:130], plans[130:]
    try:
        async with (
            a_router(tmp_path, "router-a", redis_url, cache.url, port) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = router_pb2_grpc.RouterStub(channel)
            sending = [asyncio.create_task(send(stub, p, told, provider.reported, repeats)) for p in drained]
            await eventually(lambda: sum(t.done() for t in sending) >= len(drained) // 2, "half its requests done")
            await running.stop(0.2)  # drained mid-way, past its grace: what still runs is cut
            await asyncio.gather(*sending)
        left_pending = await killed_mid_way(
            tmp_path, redis_url, cache.url, port, killed, told, provider.reported, repeats
        )
        async with a_router(tmp_path, "router-b", redis_url, cache.url, port) as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                again = [p for p in drained + killed if p.kind == "resent"]  # sent again here, same ids
                await asyncio.gather(*(send(stub, p, told, provider.reported, repeats) for p in rest + again))
            # The killed router's pending charges are this one's reconciler's to settle, at their holds.
            await eventually(lambda: all_settled(redis_url), "every hold settled", timeout_s=30)
    finally:
        await providers.stop(0)
        cache.stop()
    reconciled = await audit(redis_url, plans, told, provider.reported, chosen)
    print(f"the killed router left {left_pending} pending charges; the reconciler made {reconciled} ledger lines")
    assert reconciled >= min(left_pending, 1), (
        f"the killed router left {left_pending} pending; MONEY_AUDIT_SEED={chosen}"
    )


async def killed_mid_way(
    tmp_path: Path,
    redis_url: str,
    cache_url: str,
    providers_port: int,
    plans: list[Plan],
    told: Told,
    reported: Reported,
    repeats: Repeats,
) -> int:
    """`plans` sent to a router process (python -m services.router) SIGKILLed once it has requests in flight past
    their admission: how many pending charges it left."""
    where = SimpleNamespace(port=providers_port)  # the chain's services RouterProcess reads: here one server
    stand_in = cast(
        Chain,
        SimpleNamespace(
            registry_path=registry_file(tmp_path, REGISTRY), servers={"classifier": where, "providers": where}
        ),
    )
    doomed = RouterProcess(
        stand_in,
        tmp_path,
        ROUTER_REDIS_URL=redis_url,
        ROUTER_CACHE_REDIS_URL=cache_url,
        ROUTER_INSTANCE_ID="router-c",
        ROUTER_HEARTBEAT_TTL_S="1",
        ROUTER_VERIFIER="false",
        ROUTER_AUTH="none",
        ROUTER_METRICS_PORT="0",
        ROUTER_KEY_BUDGET_USD=str(KEY_BUDGET),
    )
    db: Any = redis.from_url(redis_url)
    try:
        await doomed.ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{doomed.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            sending = [asyncio.create_task(send(stub, p, told, reported, repeats)) for p in plans]

            async def in_flight() -> bool:
                return len(await pending_of(db, "router-c")) >= 3 or all(t.done() for t in sending)

            await eventually(in_flight, "the doomed router's requests in flight")
            left = len(await pending_of(db, "router-c"))
            doomed.kill()
            await asyncio.gather(*sending)
        return left
    finally:
        doomed.kill()
        await db.aclose()


async def all_settled(redis_url: str) -> bool:
    async with store_on(redis_url) as store:
        held = [await store.held_pico(Account(t, key_id(k))) for t in TENANTS for k in KEYS[t]]
    return all(h == (0, 0) for h in held)


async def audit(redis_url: str, plans: list[Plan], told: Told, reported: Reported, chosen: int) -> int:
    """The reconciliation, asserted; how many ledger lines the reconciler made."""
    replay = f"replay with MONEY_AUDIT_SEED={chosen}"
    client = redis.from_url(redis_url)
    try:
        ledger = [r for r in await ledger_records(client) if r["tenant"] in TENANTS]
    finally:
        await client.aclose()
    by_plan = {(p.tenant, p.request_id): p for p in plans}
    lines: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for r in ledger:
        lines[r["tenant"], r["request_id"]].append(Decimal(r["cost_usd"]))
    assert set(lines) <= set(by_plan), f"lines of no request sent: {set(lines) - set(by_plan)}; {replay}"
    # Charged once: a request's id is used again only once its first try was settled at nothing and released.
    twice = {asker: costs for asker, costs in lines.items() if len([c for c in costs if c]) > 1}
    assert not twice, f"charged twice: {twice}; {replay}"

    # Each caller told a charge was told one of its ledger lines, the charged one once there is one, every time it
    # asked (a duplicate tells the first's); one told cost_pending has its line.
    for asker, charges in told.charged.items():
        on_record = lines.get(asker, [Decimal(0)])
        assert set(charges) <= set(on_record), f"{asker} told {charges}, its ledger lines {on_record}; {replay}"
    for asker in told.pending:
        assert asker in lines, f"{asker} told cost_pending has no ledger line; {replay}"
    hostile = [asker for asker in lines if by_plan[asker].kind == "hostile"]
    assert not hostile, f"hostile requests on record: {hostile}; {replay}"
    for r in ledger:  # each charge paid by its own tenant's key; an answer served from the cache generated nothing
        assert r["key"] in {key_id(k) for k in KEYS[r["tenant"]]}, f"{r}; {replay}"
        assert not r.get("cache_hit") or Decimal(r["cost_usd"]) == 0, f"a cache hit charged: {r}; {replay}"
    for asker, costs in lines.items():
        plan, charged = by_plan[asker], sum(costs, Decimal(0))
        if plan.capped:
            assert charged <= CAP, f"{asker} past its cap: {costs}; {replay}"
        # Every generation the providers reported is charged at least at its model's prices; not a stream cut (its
        # caller left, or a draining router cut it), charged what it delivered (README, Money), while the fake upstream
        # ran on to its end and reported more: a known gap, the upstream bills what the router never read.
        owed = sum(
            (REGISTRY.get(m).cost_usd(i, o) for m, i, o in reported.usage[plan.n]),  # type: ignore[union-attr]
            Decimal(0),
        )
        records = [r for r in ledger if (r["tenant"], r["request_id"]) == asker]
        cut = plan.kind in ("stream", "left_stream") and any(r["outcome"] == "cancelled" for r in records)
        if not cut:
            generated = reported.usage[plan.n]
            assert charged >= owed, f"{plan} charged {records}, less than generated {generated}; {replay}"
    for plan in plans:
        if reported.usage[plan.n]:
            assert (plan.tenant, plan.request_id) in lines, f"{plan} generated, never charged; {replay}"

    # Each budget's spend is its ledger lines' sum, to the pico-dollar, and within its limit; the tenant's is what its
    # callers were told (each request's charge, once) with the lines of those told it pending or told nothing.
    async with store_on(redis_url) as store:
        for tenant in TENANTS:
            # A request told 0 (its try released) and sent again by a caller that then left counts its later line.
            told_sum = sum(
                (
                    max(told.charged.get(asker) or [Decimal(0)]) or sum(costs, Decimal(0))
                    for asker, costs in lines.items()
                    if asker[0] == tenant
                ),
                Decimal(0),
            )
            periods = {r["period"] for r in ledger if r["tenant"] == tenant}
            spent_now = sum([(await store.spent(Account(tenant, key_id(KEYS[tenant][0])), p))[0] for p in periods])
            assert spent_now == to_pico(told_sum), f"{tenant}: spend {spent_now}, told and pending {told_sum}; {replay}"
            for period in periods:
                rows = [r for r in ledger if r["tenant"] == tenant and r["period"] == period]
                spent = [await store.spent(Account(tenant, key_id(k)), period) for k in KEYS[tenant]]
                assert spent[0][0] == sum(to_pico(Decimal(r["cost_usd"])) for r in rows), f"{tenant}; {replay}"
                assert spent[0][0] <= to_pico(TENANT_BUDGET), f"{tenant} past its budget; {replay}"
                for key, (_, key_spent) in zip(KEYS[tenant], spent, strict=True):
                    mine = sum(to_pico(Decimal(r["cost_usd"])) for r in rows if r["key"] == key_id(key))
                    assert key_spent == mine, f"{tenant}/{key}: spend {key_spent}, ledger {mine}; {replay}"
                    assert key_spent <= to_pico(KEY_BUDGET), f"{tenant}/{key} past its budget; {replay}"
    mix = Counter(r["outcome"] for r in ledger) + Counter(
        kind for r in ledger for kind in ("cache_hit", "escalated", "fallback") if r.get(kind)
    )
    print(f"ledger lines {len(ledger)} {dict(mix)}; told {len(told.charged)} charges, {len(told.pending)} pending")
    print(f"refusals {dict(told.refused)}")
    return sum(r["outcome"] == "reconciled" for r in ledger)
