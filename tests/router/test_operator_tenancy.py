"""The Operator service as a hostile caller meets it: a real router (router.build) on loopback, bearer tokens naming
its callers (the edge, trusted to act for tenants; `svc`, bound to tenant acme; `rival`, bound to globex), real
Redis, and real charges (Complete, answered by a providers gRPC server). A caller that is no admin sees its tenant's
budget and its own key's, never another key's spend (README: another key of the tenant learns nothing of a request
it did not send), nor anything of another tenant, and sets no budget, whatever its request says."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import token_digest
from llmrouter.errors import ServiceError
from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import (
    classifier_pb2_grpc,
    common_pb2,
    operator_pb2,
    operator_pb2_grpc,
    provider_pb2,
    provider_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from services import router
from services.router.settings import RouterSettings
from services.router.store import PICO, key_id
from tests.router.servicer_kit import NearScores, registry_file, serve_providers, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_duplicate_across_keys import Answering

# LONG: a caller whose name is as long as a caller's may be (llmrouter.auth: 128 characters), paying as acme.
LONG = "l" * 128
TOKENS = {
    "edge": "edge-token-0123456789",
    "svc": "svc-token-0123456789",
    "rival": "rival-token-0123456789",
    LONG: "long-token-0123456789",
}
KEY_A, KEY_B, KEY_G = "sk-acme-a", "sk-acme-b", "sk-globex"


@dataclass
class Served:
    address: str
    operator: operator_pb2_grpc.OperatorStub
    router: router_pb2_grpc.RouterStub


def as_(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


@asynccontextmanager
async def serving(
    tmp_path: Path,
    redis_url: str,
    provider: provider_pb2_grpc.ProviderServicer,
    classifier: classifier_pb2_grpc.ClassifierServicer | None = None,
) -> AsyncIterator[Served]:
    """The router (router.build) on loopback over `redis_url`, its providers (and classifier, when given: else every
    request names its model) a gRPC server of the test's."""
    providers, providers_port = await serve_providers(provider, classifier)
    registry_path = registry_file(tmp_path, REGISTRY)
    settings = RouterSettings(
        port=0,
        registry_path=registry_path,
        classifier_addr=f"127.0.0.1:{providers_port if classifier else 1}",
        providers_addr=f"127.0.0.1:{providers_port}",
        redis_url=RedisUrl(redis_url),
        data_dir=tmp_path / "data",
        ledger_sql_path=tmp_path / "ledger.sqlite3",
        verifier=False,
        auth="token",
        auth_tokens=",".join(f"{token_digest(token)}={name}" for name, token in TOKENS.items()),
        callers=f"edge=*,svc=acme,rival=globex,{LONG}=acme",
    )
    running: RunningServer = await start_server("router", settings, *await router.build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Served(
                f"127.0.0.1:{running.port}",
                operator_pb2_grpc.OperatorStub(channel),
                router_pb2_grpc.RouterStub(channel),
            )
    finally:
        await running.stop(1)
        await providers.stop(0)


@pytest.fixture
async def served(tmp_path: Path, redis_url: str) -> AsyncIterator[Served]:
    async with serving(tmp_path, redis_url, Answering()) as made:
        yield made


def ask(tenant: str = "", api_key: str = "") -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="Hello")
    return router_pb2.CompleteRequest(
        messages=[message], model="cheap", request_id=uuid.uuid4().hex, tenant=tenant, api_key=api_key
    )


async def spend_everywhere(served: Served) -> list[Decimal]:
    """acme's keys A and B and globex's key, through the edge; svc (acme) and rival (globex) as themselves: their
    answers' costs, in that order."""
    costs = []
    for fields, caller in (
        ({"tenant": "acme", "api_key": KEY_A}, "edge"),
        ({"tenant": "acme", "api_key": KEY_B}, "edge"),
        ({"tenant": "globex", "api_key": KEY_G}, "edge"),
        ({"tenant": "globex", "api_key": KEY_G}, "svc"),  # pays as acme, key caller:svc, whatever it says
        ({}, "rival"),
    ):
        answer = await served.router.Complete(ask(**fields), metadata=as_(caller), timeout=10)
        costs.append(Decimal(answer.cost_usd))
    # The SQL sink copies the charges about a second later: an admin's view lists every account once it has.
    deadline = time.monotonic() + 20
    while True:
        admin = await served.operator.Budgets(operator_pb2.BudgetsRequest(admin=True), metadata=as_("edge"))
        if len([b for b in admin.budgets if b.scope == "key"]) >= 5 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    names = {(b.scope, b.name) for b in admin.budgets}
    assert {("key", key_id(KEY_A)), ("key", key_id(KEY_B)), ("key", "caller:svc"), ("key", "caller:rival")} <= names
    return costs


def rows(reply: operator_pb2.BudgetsResponse) -> set[tuple[str, str, str]]:
    return {(b.tenant, b.scope, b.name) for b in reply.budgets}


async def test_a_plain_key_sees_its_tenant_and_its_own_key_not_its_colleagues(served: Served) -> None:
    a, b, _, svc, _ = await spend_everywhere(served)
    request = operator_pb2.BudgetsRequest(tenant="acme", api_key=KEY_A)
    mine = await served.operator.Budgets(request, metadata=as_("edge"), timeout=10)
    assert rows(mine) == {("acme", "tenant", "acme"), ("acme", "key", key_id(KEY_A))}
    spent = {b.scope: Decimal(b.spent_usd) for b in mine.budgets}
    assert spent == {"tenant": a + b + svc, "key": a}  # the tenant's budget, every key's sum, is every key's to see


async def stats_of(served: Served, caller: str, request: operator_pb2.StatsRequest) -> operator_pb2.StatsResponse:
    return await served.operator.Stats(request, metadata=as_(caller), timeout=10)


async def test_stats_of_a_caller_that_is_no_admin_are_its_own_keys_alone(served: Served) -> None:
    """As its budgets: a plain key's stats (requests, cost, cache hits, models) are its own requests', never its
    colleagues' of the tenant; a tenant-bound caller's its own key's (caller:svc), whatever its request says; an
    admin's every tenant's. Every account's row is in the SQL ledger once spend_everywhere returns."""
    a, b, g, svc, rival = await spend_everywhere(served)
    seen = {
        "key A": await stats_of(served, "edge", operator_pb2.StatsRequest(tenant="acme", api_key=KEY_A)),
        "key B": await stats_of(served, "edge", operator_pb2.StatsRequest(tenant="acme", api_key=KEY_B)),
        "svc": await stats_of(served, "svc", operator_pb2.StatsRequest(tenant="acme", api_key=KEY_B, admin=True)),
        "admin": await stats_of(served, "edge", operator_pb2.StatsRequest(admin=True, group_by="tenant")),
    }
    totals = {who: (reply.total.requests, Decimal(reply.total.cost_usd)) for who, reply in seen.items()}
    assert totals == {"key A": (1, a), "key B": (1, b), "svc": (1, svc), "admin": (5, a + b + g + svc + rival)}
    by_tenant = {group.key: Decimal(group.cost_usd) for group in seen["admin"].groups}
    assert by_tenant == {"acme": a + b + svc, "globex": g + rival}


async def test_a_tenant_bound_caller_sees_its_tenant_and_its_own_key_whatever_it_asks(served: Served) -> None:
    await spend_everywhere(served)
    for request in (
        operator_pb2.BudgetsRequest(),
        operator_pb2.BudgetsRequest(tenant="globex", admin=True, api_key=KEY_G),
    ):
        own = await served.operator.Budgets(request, metadata=as_("svc"), timeout=10)
        assert rows(own) == {("acme", "tenant", "acme"), ("acme", "key", "caller:svc")}, request
    stats = await served.operator.Stats(
        operator_pb2.StatsRequest(tenant="globex", admin=True, group_by="tenant"), metadata=as_("svc"), timeout=10
    )
    assert [g.key for g in stats.groups] in ([], ["acme"])  # the sink may not have copied it yet; never globex
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        request_ = operator_pb2.SetBudgetRequest(scope="tenant", name="globex", limit_usd="0", admin=True)
        await served.operator.SetBudget(request_, metadata=as_("svc"), timeout=10)
    assert ServiceError.from_rpc_error(refused.value).reason == "PERMISSION_DENIED"
    admin = await served.operator.Budgets(operator_pb2.BudgetsRequest(admin=True), metadata=as_("edge"))
    assert not any(b.overridden for b in admin.budgets)


async def test_an_admin_caps_the_key_of_a_caller_whose_name_is_as_long_as_may_be(served: Served) -> None:
    """A caller pays with key id caller:<name>, and a name may be 128 characters long: SetBudget refused the 135
    characters of its key id as no name, so no admin could cap that caller's key budget."""
    request = operator_pb2.SetBudgetRequest(scope="key", name=f"caller:{LONG}", limit_usd="0", admin=True)
    capped = await served.operator.SetBudget(request, metadata=as_("edge"), timeout=10)
    assert (capped.name, capped.limit_usd, capped.overridden) == (f"caller:{LONG}", "0", True)
    assert capped.tenant == "acme"  # the tenant the caller pays as (ROUTER_CALLERS), where it answered ''
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.router.Complete(ask(), metadata=as_(LONG), timeout=10)
    assert ServiceError.from_rpc_error(refused.value).reason == "BUDGET_EXCEEDED"
    own = await served.operator.Budgets(operator_pb2.BudgetsRequest(), metadata=as_(LONG), timeout=10)
    assert [(b.name, b.limit_usd) for b in own.budgets if b.scope == "key"] == [(f"caller:{LONG}", "0")]


@pytest.mark.parametrize("tenant", ["Acme Corp", "acme/eu", "t" * 256])
async def test_an_admin_caps_any_tenant_a_trusted_caller_may_name(served: Served, tenant: str) -> None:
    """A caller that may act for tenants (docs/conventions.md: `name=*`) may name any tenant of up to 256 characters
    without a NUL, as admission.check_id reads it; SetBudget took only names of 128 letters, digits and '_.:@-', so a
    tenant with a space, a '/' or a longer name was charged with no limit an admin could set."""
    capped = await served.operator.SetBudget(
        operator_pb2.SetBudgetRequest(scope="tenant", name=tenant, limit_usd="0", admin=True),
        metadata=as_("edge"),
        timeout=10,
    )
    assert (capped.name, capped.limit_usd, capped.overridden) == (tenant, "0", True)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.router.Complete(ask(tenant, KEY_A), metadata=as_("edge"), timeout=10)
        assert ServiceError.from_rpc_error(refused.value).reason == "BUDGET_EXCEEDED"
    finally:
        request = operator_pb2.SetBudgetRequest(scope="tenant", name=tenant, limit_usd="", admin=True)
        await served.operator.SetBudget(request, metadata=as_("edge"), timeout=10)


@pytest.mark.parametrize("name", ["", "a\x00b", "t" * 257])
async def test_no_budget_is_set_for_a_tenant_no_request_may_name(served: Served, name: str) -> None:
    request = operator_pb2.SetBudgetRequest(scope="tenant", name=name, limit_usd="1", admin=True)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.operator.SetBudget(request, metadata=as_("edge"), timeout=10)
    assert ServiceError.from_rpc_error(refused.value).metadata["field"] == "name"


@pytest.mark.parametrize("name", ["zz", "ABCDEF0123456789", "0123456789abcde", "caller:", "anonymous2", "sk-acme-a"])
async def test_no_budget_is_set_for_a_key_id_no_key_has(served: Served, name: str) -> None:
    """A key id is 16 lowercase hex digits (its SHA-256's first), 'anonymous' or a caller's caller:<name>: a budget
    under any other name (a typo, the key itself) could never match a request, and capped nothing while saying set."""
    request = operator_pb2.SetBudgetRequest(scope="key", name=name, limit_usd="1", admin=True)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.operator.SetBudget(request, metadata=as_("edge"), timeout=10)
    error = ServiceError.from_rpc_error(refused.value)
    assert (refused.value.code(), error.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "name")
    assert "16 lowercase hex digits" in error.message
    admin = await served.operator.Budgets(operator_pb2.BudgetsRequest(admin=True), metadata=as_("edge"))
    assert not any(b.overridden for b in admin.budgets)


async def test_a_key_budget_set_under_a_name_no_key_has_stays_readable_and_clearable(
    served: Served, redis_url: str
) -> None:
    """Set before key ids were checked: listed as it is, and an admin can still take it away."""
    async with store_on(redis_url) as store:
        await store.set_limit("key", "zz", int(5 * PICO))
    admin = await served.operator.Budgets(operator_pb2.BudgetsRequest(admin=True), metadata=as_("edge"))
    assert [(b.name, b.limit_usd) for b in admin.budgets if b.scope == "key"] == [("zz", "5")]
    cleared = operator_pb2.SetBudgetRequest(scope="key", name="zz", limit_usd="", admin=True)
    assert not (await served.operator.SetBudget(cleared, metadata=as_("edge"), timeout=10)).overridden
    admin = await served.operator.Budgets(operator_pb2.BudgetsRequest(admin=True), metadata=as_("edge"))
    assert not any(b.overridden for b in admin.budgets)


class CheapFailsLate(Answering):
    """The cheap model's calls wait for `release`, then fail after the request was sent (INTERNAL: an unknown outcome,
    owed its worst case), so the fallback to the strong model must grow the hold; the strong model answers."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        self.strong = 0

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        if request.model == "strong":
            self.strong += 1
            return await super().Generate(request, context)
        self.waiting += 1
        await self.release.wait()
        await context.abort(grpc.StatusCode.INTERNAL, "connection reset after the request was sent")
        raise AssertionError("unreachable")


def auto(key: str) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="Hello")
    return router_pb2.CompleteRequest(
        messages=[message], tenant="race", api_key=key, request_id=uuid.uuid4().hex, quality_target=0.5, max_tokens=64
    )


async def tenant_budget(served: Served) -> operator_pb2.Budget:
    reply = await served.operator.Budgets(operator_pb2.BudgetsRequest(tenant="race"), metadata=as_("edge"), timeout=10)
    (budget,) = [b for b in reply.budgets if b.scope == "tenant"]
    return budget


@pytest.mark.parametrize("lowered", ["no", "to what is held", "below it"])
async def test_a_budget_lowered_under_requests_in_flight_holds_them_to_what_was_admitted(
    tmp_path: Path, redis_url: str, lowered: str
) -> None:
    """README (Money): a request is admitted only when spend + holds + its own hold fit each limit, and a fallback's
    hold grows within the budgets or there is no fallback. Three requests in flight, their tenant's budget lowered to
    what they hold, or below it: none is let in after it, a fallback grows its hold only into room another request
    left by ending under its hold, and the spend ends within what was admitted (and within the budget lowered to
    it). Unlowered (the control), every fallback grows its hold and is served."""
    provider = CheapFailsLate()
    async with serving(tmp_path, redis_url, provider, NearScores()) as served:
        calls = [
            asyncio.ensure_future(served.router.Complete(auto(f"sk-{n}"), metadata=as_("edge"), timeout=20))
            for n in range(3)
        ]
        deadline = time.monotonic() + 10
        while provider.waiting < 3:
            assert time.monotonic() < deadline, "the requests never reached the provider"
            await asyncio.sleep(0.01)
        admitted = await tenant_budget(served)
        held = Decimal(admitted.held_usd)
        assert held > 0 and Decimal(admitted.spent_usd) == 0
        if lowered != "no":
            limit = str(held if lowered == "to what is held" else held / 2)
            request = operator_pb2.SetBudgetRequest(scope="tenant", name="race", limit_usd=limit, admin=True)
            await served.operator.SetBudget(request, metadata=as_("edge"), timeout=10)
            for n in range(5):  # the budget is full: nothing more is let in
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await served.router.Complete(auto(f"sk-late-{n}"), metadata=as_("edge"), timeout=10)
                assert ServiceError.from_rpc_error(refused.value).reason == "BUDGET_EXCEEDED"
            assert provider.waiting == 3
        provider.release.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        settled = await tenant_budget(served)
    spent = Decimal(settled.spent_usd)
    assert Decimal(settled.held_usd) == 0 and spent > 0
    if lowered == "no":
        assert provider.strong == 3 and not any(isinstance(o, BaseException) for o in outcomes), outcomes
        return
    assert spent <= held  # within what was admitted before the budget was lowered
    assert provider.strong < 3  # the fallbacks that found no room ended with their failed attempt's error
    if lowered == "to what is held":
        assert spent <= Decimal(settled.limit_usd)


async def test_the_reply_to_setting_a_key_budget_names_the_keys_tenant_and_its_spend(served: Served) -> None:
    """The reply to SetBudget (PUT /v1/router/budgets/key/<id> too) named tenant '' for a key: it now names the tenant
    the key is bound to, and its spend, read from that tenant's shard, is the key's."""
    answer = await served.router.Complete(ask("acme", KEY_A), metadata=as_("edge"), timeout=10)
    request = operator_pb2.SetBudgetRequest(scope="key", name=key_id(KEY_A), limit_usd="5", admin=True)
    capped = await served.operator.SetBudget(request, metadata=as_("edge"), timeout=10)
    assert (capped.tenant, capped.name, capped.limit_usd) == ("acme", key_id(KEY_A), "5")
    assert Decimal(capped.spent_usd) == Decimal(answer.cost_usd) > 0
    # A key never used is bound to no tenant: none to name.
    unused = operator_pb2.SetBudgetRequest(scope="key", name=key_id("sk-never-used"), limit_usd="5", admin=True)
    assert (await served.operator.SetBudget(unused, metadata=as_("edge"), timeout=10)).tenant == ""
