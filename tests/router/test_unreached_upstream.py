"""A stream whose caller leaves before its first token is charged the attempt's worst case only when its upstream may
have had the request: one still waiting for the providers' concurrency slot (the router's word to send never given)
is charged nothing, its hold released and its ledger line saying why. The real providers service on loopback (its
gRPC server, interceptor included) before a fake OpenAI upstream speaking the wire format, the router's servicer over
the money store on the test's Redis; and a providers service of the version before, without GenerateStreamOnCue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis
import yaml

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.providers import ProvidersSettings, build
from services.router.servicer import RouterServicer
from services.router.store import Account, RedisStore, period_id
from tests.conftest import ledger_records
from tests.fakes import FakeOpenAI, Fault
from tests.router.servicer_kit import NoDeadline, router_servicer, router_servicer_to
from tests.router.test_admission import REGISTRY
from tests.waiting import eventually, inflight

ACCOUNT = Account("t", "anonymous")


def one_slot_registry(base_url: str) -> Registry:
    """test_admission.REGISTRY, its provider the fake upstream, one call at a time and never retried."""
    spec = REGISTRY.model_dump(mode="json", exclude_none=True)
    spec["providers"]["p"].update(base_url=base_url, max_concurrency=1, max_retries=0, total_timeout_s=30)
    return Registry.model_validate(spec)


@asynccontextmanager
async def served(
    tmp_path: Path, store: RedisStore, upstream: FakeOpenAI
) -> AsyncIterator[tuple[RunningServer, RouterServicer]]:
    """For the block: the real providers service on a free loopback port before `upstream` (one_slot_registry), and the
    router's servicer over it and `store`."""
    registry = one_slot_registry(upstream.base_url)
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump(registry.model_dump(mode="json", exclude_none=True)))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    running = await start_server("providers", settings, *await build(settings))
    try:
        async with router_servicer_to(f"127.0.0.1:{running.port}", tmp_path, store, registry) as servicer:
            yield running, servicer
    finally:
        await running.stop(0)


@asynccontextmanager
async def slot_taken(running: RunningServer, upstream: FakeOpenAI) -> AsyncIterator[None]:
    """The provider's only concurrency slot held, for the block, by a call its upstream never answers."""
    upstream.enqueue(Fault.hang())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        blocker = provider_pb2_grpc.ProviderStub(channel).GenerateStream(
            provider_pb2.GenerateRequest(model="cheap", messages=streamed().messages, max_tokens=5)
        )
        blocking = asyncio.ensure_future(blocker.read())
        await asyncio.wait_for(upstream_asked(upstream, 1), 5)
        try:
            yield
        finally:
            blocker.cancel()
            await asyncio.gather(blocking, return_exceptions=True)


def streamed(content: str = "Tell me a story") -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content=content)
    return router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)


async def leave_when(servicer: RouterServicer, moment: Awaitable[Any]) -> None:
    """Stream a request, and leave (cancel) before its first token once `moment` came."""

    async def read() -> None:
        with acting_as(ANONYMOUS):
            async for chunk in servicer.CompleteStream(streamed(), NoDeadline()):
                assert not chunk.HasField("delta"), "a token arrived: the test wanted the caller gone before it"

    reading = asyncio.create_task(read())
    await asyncio.wait_for(moment, 5)
    assert not reading.done()
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    await servicer.charger.close()  # the charge, shielded, runs to its end


async def behind_the_slots_holder(serving: float) -> None:
    """Returns once the router's call has reached the providers (serving `serving` calls before it), where it waits
    behind the slot's holder."""
    await eventually(lambda: inflight("providers") > serving, "the router's call reaches the providers")


async def upstream_asked(upstream: FakeOpenAI, times: int) -> None:
    while len(upstream.requests) < times:
        await asyncio.sleep(0.01)


async def only_record(redis_url: str) -> dict:
    db = redis.from_url(redis_url)
    try:
        records = await ledger_records(db)
    finally:
        await db.aclose()
    assert len(records) == 1
    return records[0]


def worst_case(record: dict) -> Decimal:
    """What the routing estimated the attempt could cost at most: max_tokens written, the prompt at its bound."""
    return Decimal(next(c["estimated_cost_usd"] for c in record["candidates"] if c["model"] == "cheap"))


async def test_a_caller_leaving_while_the_providers_wait_for_a_slot_is_charged_nothing(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    with FakeOpenAI() as upstream:
        async with served(tmp_path, redis_store, upstream) as (running, servicer):
            async with slot_taken(running, upstream):
                await leave_when(servicer, behind_the_slots_holder(inflight("providers")))
            await asyncio.sleep(0.5)  # the slot free: a call that had the word to send would reach the upstream now
        assert len(upstream.requests) == 1, "the left request reached the upstream"
    record = await only_record(redis_url)
    assert record["outcome"] == "cancelled"
    assert Decimal(record["cost_usd"]) == 0 and Decimal(record["owed_usd"]) == 0
    assert "the caller left before the upstream was reached" in record["reason_detail"]
    period = period_id(servicer.settings.budget_period)
    assert await redis_store.spent(ACCOUNT, period) == (0, 0)
    assert await redis_store.held_pico(ACCOUNT) == (0, 0)  # the hold released


async def test_a_providers_service_gone_while_it_waited_for_a_slot_owes_nothing(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    """A call cut between the services is an unknown outcome (the upstream may have had it), unless the router never
    gave the word to send."""

    async def read(servicer: RouterServicer) -> None:
        with acting_as(ANONYMOUS):
            async for _ in servicer.CompleteStream(streamed(), NoDeadline()):
                pass

    with FakeOpenAI() as upstream:
        async with served(tmp_path, redis_store, upstream) as (running, servicer), slot_taken(running, upstream):
            serving = inflight("providers")
            reading = asyncio.create_task(read(servicer))
            await behind_the_slots_holder(serving)
            await running.stop(0)  # the providers service goes, mid-call
            failed = (await asyncio.gather(reading, return_exceptions=True))[0]
            await servicer.charger.close()
    assert isinstance(failed, ServiceError), failed
    record = await only_record(redis_url)
    assert record["outcome"] == "failed"
    assert Decimal(record["cost_usd"]) == 0
    assert await redis_store.held_pico(ACCOUNT) == (0, 0)


async def test_a_caller_leaving_once_the_upstream_has_the_request_is_charged_the_worst_case(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    with FakeOpenAI() as upstream:
        upstream.enqueue(Fault.hang())  # the request sent, no token yet
        async with served(tmp_path, redis_store, upstream) as (_, servicer):
            await leave_when(servicer, upstream_asked(upstream, 1))
        assert upstream.wait_disconnect(), "the upstream call ran on after the caller left"
    record = await only_record(redis_url)
    assert record["outcome"] == "cancelled"
    assert Decimal(record["cost_usd"]) == worst_case(record) > 0
    period = period_id(servicer.settings.budget_period)
    charged, _ = await redis_store.spent(ACCOUNT, period)
    assert Decimal(charged) / 10**12 == worst_case(record)


class WordOnItsWay:
    """The router's providers stub whose GenerateStreamOnCue calls send the word to send through gRPC's core, the
    providers get it, and the router's write of it never completes (its completion not yet told, as on a loaded loop):
    the caller leaves while the word is on its way."""

    def __init__(self, stub: provider_pb2_grpc.ProviderStub) -> None:
        self.stub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def GenerateStreamOnCue(self, *args: Any, **kwargs: Any) -> Any:
        call = self.stub.GenerateStreamOnCue(*args, **kwargs)
        call._cython_call = _WordNeverDone(call._cython_call)
        return call


class _WordNeverDone:
    """A grpc.aio call's core call whose write of the word to send sends it and then never returns."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    async def send_serialized_message(self, message: bytes) -> None:
        await self.core.send_serialized_message(message)
        if provider_pb2.CuedRequest.FromString(message).send:
            await asyncio.Event().wait()


async def test_a_caller_leaving_as_the_word_to_send_goes_is_charged_the_worst_case(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    """The word's write not yet done is no proof that it did not reach the providers: here their upstream has the
    request when the caller leaves."""
    with FakeOpenAI() as upstream:
        upstream.enqueue(Fault.hang())  # the request sent, no token yet
        async with served(tmp_path, redis_store, upstream) as (_, servicer):
            servicer.serving.providers = WordOnItsWay(servicer.serving.providers)  # type: ignore[assignment]
            await leave_when(servicer, upstream_asked(upstream, 1))
        assert upstream.wait_disconnect(), "the upstream call ran on after the caller left"
    record = await only_record(redis_url)
    assert record["outcome"] == "cancelled"
    assert Decimal(record["cost_usd"]) == worst_case(record) > 0
    charged, _ = await redis_store.spent(ACCOUNT, period_id(servicer.settings.budget_period))
    assert Decimal(charged) / 10**12 == worst_case(record)


class PreviousVersion(provider_pb2_grpc.ProviderServicer):
    """A providers service of the version before: GenerateStream alone (GenerateStreamOnCue is UNIMPLEMENTED), whose
    upstream is reached at once; it has the request and sends nothing back."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        self.asked.set()
        await asyncio.Event().wait()
        yield provider_pb2.GenerateChunk()  # never reached


async def test_a_caller_leaving_a_providers_service_of_the_version_before_is_charged_the_worst_case(
    tmp_path: Path, redis_store: RedisStore, redis_url: str
) -> None:
    previous = PreviousVersion()
    async with router_servicer(tmp_path, redis_store, previous) as servicer:
        await leave_when(servicer, previous.asked.wait())
    record = await only_record(redis_url)
    assert record["outcome"] == "cancelled"
    assert Decimal(record["cost_usd"]) == worst_case(record) > 0
    assert "upstream was reached" not in record["reason_detail"]
