"""A completion a draining router (SIGTERM) is still serving as its grace period ends. gRPC cancelled every call then
("Cancelling all calls": UNAVAILABLE without details), while the router charged a stream what it delivered and ran a
unary call's generation to its end, charging it whole: its caller, told nothing of either, could only guess whether a
retry would be charged again. Now the router ends such calls itself just before: UNAVAILABLE with ErrorInfo
SHUTTING_DOWN, retryable false, and what the stream was charged (charged_usd), or the unary call's charge still to come
(cost_pending); charged once, as the ledger says. A real router (router.build) on loopback over real Redis, its
providers a gRPC server of the test's whose generations hold until released."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY as METRICS

from llmrouter.errors import ServiceError
from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2, router_pb2_grpc
from services import router
from services.router import servicer
from services.router.admission import Admission
from services.router.faults import AT_HOLD
from services.router.models import AvailableModels
from services.router.outbox import Outbox
from services.router.routed import Served
from services.router.sessions import Sessions
from services.router.settings import RouterSettings
from services.router.shutdown_cut import AdmittedCalls
from services.router.store import PICO, Account, AccountKeys, StoreUnavailable, key_id, period_id
from services.router.store.redis_store import RedisStore
from tests.conftest import ledger_records
from tests.router.servicer_kit import registry_file, serve_providers
from tests.router.test_admission import REGISTRY
from tests.router.test_duplicate_across_keys import Answering
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: routers drained past their grace period

GRACE_S = 2.0


class Held(Answering):
    """Each generation reaches its upstream, then holds (a stream after its first delta) until `release`."""

    first_delta = "the first words of a long answer"  # a stream's, sent before it holds ("": none)

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached = 0

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.reached += 1
        await self.release.wait()
        return await super().Generate(request, context)

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        await anext(messages)  # the request
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(messages)  # the word to send it
        self.reached += 1
        if self.first_delta:
            yield provider_pb2.GenerateChunk(delta=self.first_delta)
        await self.release.wait()
        raise AssertionError("a stream cut by the shutdown is not read on")


@asynccontextmanager
async def draining_router(
    tmp_path: Path, redis_url: str, provider: Held, channel_options: list[tuple[str, Any]] | None = None
) -> AsyncIterator[tuple[RunningServer, router_pb2_grpc.RouterStub]]:
    """A router over `provider`, and a stub calling it (over a channel with `channel_options`)."""
    providers, providers_port = await serve_providers(provider, None)
    settings = RouterSettings(
        port=0,
        registry_path=registry_file(tmp_path, REGISTRY),
        classifier_addr="127.0.0.1:1",
        providers_addr=f"127.0.0.1:{providers_port}",
        redis_url=RedisUrl(redis_url),
        data_dir=tmp_path / "data",
        ledger_sql_path=tmp_path / "ledger.sqlite3",
        verifier=False,
        auth="none",
    )
    running = await start_server("router", settings, *await router.build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=channel_options) as channel:
            yield running, router_pb2_grpc.RouterStub(channel)
    finally:
        provider.release.set()
        await running.stop(0)  # stopped already by the test: a no-op then
        await providers.stop(0)


async def stopping_once_cut(running: RunningServer) -> asyncio.Task[None]:
    """The router's stop past its grace, under way, returned once its cut has run (not before, as cut_at would)."""
    cut, landed = running.cut, asyncio.Event()
    assert cut is not None

    def cut_and_note() -> None:
        cut()
        landed.set()

    running.cut = cut_and_note
    stopping = asyncio.create_task(running.stop(GRACE_S))
    await landed.wait()
    return stopping


class CutByHand:
    """The router's cut, taken from its stop (which would run it at cut_at) for a patch of the test's to run, called,
    at the moment it chooses."""

    def __init__(self) -> None:
        self.taken: list[Callable[[], None]] = []

    def take(self, running: RunningServer) -> None:
        assert running.cut is not None
        self.taken.append(running.cut)
        running.cut = lambda: None

    def __call__(self) -> None:
        self.taken.pop()()


def cut_as_the_charge_lands(monkeypatch: pytest.MonkeyPatch) -> CutByHand:
    """RedisStore.charge patched to run the cut the test takes (CutByHand.take) as each charge lands."""
    the_cut, charge = CutByHand(), RedisStore.charge

    async def cut_as_it_lands(self: RedisStore, *args: Any, **kwargs: Any) -> bool:
        charged = await charge(self, *args, **kwargs)
        the_cut()
        return charged

    monkeypatch.setattr(RedisStore, "charge", cut_as_it_lands)
    return the_cut


def held_in(monkeypatch: pytest.MonkeyPatch, owner: type, method: str) -> tuple[asyncio.Event, asyncio.Event]:
    """`owner.method` (a coroutine's) patched to hold each call: the first event set as it is called, the call run on
    once the test sets the second."""
    reached, goes_on = asyncio.Event(), asyncio.Event()
    run = getattr(owner, method)

    async def holding(self: Any, *args: Any, **kwargs: Any) -> Any:
        reached.set()
        await goes_on.wait()
        return await run(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, holding)
    return reached, goes_on


async def store_down(self: RedisStore, *args: Any, **kwargs: Any) -> bool:
    """RedisStore.charge of a store out of reach."""
    raise StoreUnavailable()


def shutting_down(error: grpc.aio.AioRpcError) -> ServiceError:
    """The status a call the drain cut ends with, read as a ServiceError."""
    told = ServiceError.from_rpc_error(error)
    assert (told.code, told.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    return told


def ask() -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="Write a long essay")
    return router_pb2.CompleteRequest(
        messages=[message], model="cheap", tenant="acme", request_id=uuid.uuid4().hex, max_tokens=64
    )


async def charges_of(redis_url: str, request_id: str) -> list[dict]:
    db: Any = redis.from_url(redis_url)
    try:
        return [r for r in await ledger_records(db) if r["request_id"] == request_id]
    finally:
        await db.aclose()


async def ledger_is_spend(redis_url: str, tenant: str = "acme") -> None:
    """The tenant's spend is what its ledger lines charged, and nothing stays held."""
    db: Any = redis.from_url(redis_url)
    try:
        keys = AccountKeys.of(Account(tenant, key_id("")))
        spent = Decimal(int(await db.get(keys.spend(period_id("day"))[0]) or 0)) / PICO
        charged = sum((Decimal(r["cost_usd"]) for r in await ledger_records(db) if r["tenant"] == tenant), Decimal(0))
        assert spent == charged
        assert await db.zcard(keys.held()[0]) == 0
    finally:
        await db.aclose()


async def answered_whole(stub: router_pb2_grpc.RouterStub, request: router_pb2.CompleteRequest) -> Any:
    """A stream of Streamed's answer, read up to its whole answer (the decision, then the one delta): its call."""
    chunks = stub.CompleteStream(request, timeout=30)
    assert (await chunks.read()).HasField("decision")
    assert (await chunks.read()).delta == "an answer"
    return chunks


async def cut_by_the_stop(running: RunningServer, call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The router stopped with its grace, the call (a unary call, or a stream's next read) then awaited: the error it
    ends with."""
    stopping = asyncio.create_task(running.stop(GRACE_S))
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await call
    await stopping
    return cut.value


async def cut_as_the_charge_goes_on(running: RunningServer, call: Any, charge_goes_on: asyncio.Event) -> Any:
    """The drain's cut run while the stream's charge is held (held_in), that charge then let go on: the error the
    stream reads next."""
    stopping = await stopping_once_cut(running)
    charge_goes_on.set()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    await stopping
    return ended.value


async def cut_by_hand_once_released(
    running: RunningServer, provider: Held, call: Any, the_cut: CutByHand
) -> grpc.aio.AioRpcError:
    """The router's stop under way, its cut taken for `the_cut` to run (not at cut_at), and the held generation
    released: the error the unary call ends with."""
    the_cut.take(running)
    stopping = asyncio.create_task(running.stop(GRACE_S))
    provider.release.set()
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await call
    await stopping
    return cut.value


async def sent_again_elsewhere(
    tmp_path: Path, redis_url: str, request: router_pb2.CompleteRequest, streamed: bool
) -> router_pb2.CompleteResponse:
    """`request` sent again, as its caller was told it may be, to another router over the same store: its answer."""
    (tmp_path / "elsewhere").mkdir()
    answering = Streamed()
    answering.release.set()
    async with draining_router(tmp_path / "elsewhere", redis_url, answering) as (_, stub):
        if streamed:
            return [chunk async for chunk in stub.CompleteStream(request, timeout=30)][-1].final
        return await stub.Complete(request, timeout=30)


async def test_a_stream_cut_by_the_drain_tells_its_caller_what_it_was_charged(tmp_path: Path, redis_url: str) -> None:
    provider, request = Held(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        assert (await chunks.read()).delta == "the first words of a long answer"
        cut = await cut_by_the_stop(running, chunks.read())
    told = shutting_down(cut)
    assert told.metadata["retryable"] == "false" and "cost_pending" not in told.metadata
    (charge,) = await charges_of(redis_url, request.request_id)
    assert charge["outcome"] == "cancelled"
    assert Decimal(told.metadata["charged_usd"]) == Decimal(charge["cost_usd"]) > 0  # what was delivered, once


async def test_a_unary_call_cut_by_the_drain_is_told_its_charge_is_pending(tmp_path: Path, redis_url: str) -> None:
    provider, request = Held(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        stopping = asyncio.create_task(running.stop(GRACE_S))
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await call
        assert await charges_of(redis_url, request.request_id) == []  # still generating
        provider.release.set()  # the generation ends as the router drains: charged then
        await stopping
    told = shutting_down(cut.value)
    assert told.metadata == {"cost_pending": "true", "retryable": "false"}
    assert request.request_id in told.message
    (charge,) = await charges_of(redis_url, request.request_id)  # once
    # The whole answer: 12 tokens in at $0.50 per million, 34 out at $1.50.
    assert (charge["outcome"], charge["output_tokens"], charge["cost_usd"]) == ("ok", 34, "0.000057")


class Streamed(Held):
    """A stream answered whole at once (Answering's answer, one delta and its final chunk)."""

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        first = await anext(messages)
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(messages)
        reply = await Answering.Generate(self, first.request, context)
        yield provider_pb2.GenerateChunk(delta=reply.content)
        yield provider_pb2.GenerateChunk(final=reply)


async def test_a_stream_cut_while_its_answer_is_charged_is_told_that_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut landing while the whole answer's charge is on its way to the store (it runs on, shielded): the caller
    was told the stream cost 0, the charge not yet known, while the ledger charged it whole."""
    charging, charge_goes_on = held_in(monkeypatch, RedisStore, "charge")
    provider, request = Streamed(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = await answered_whole(stub, request)
        await charging.wait()
        ended = await cut_as_the_charge_goes_on(running, chunks, charge_goes_on)
    told = shutting_down(ended)
    (charge_record,) = await charges_of(redis_url, request.request_id)
    assert charge_record["outcome"] == "ok"
    assert Decimal(told.metadata["charged_usd"]) == Decimal(charge_record["cost_usd"]) > 0


class HeldBeforeItsFirstToken(Held):
    """The upstream reached (the word to send it given), holding before its first token."""

    first_delta = ""


async def test_a_stream_cut_before_its_first_token_is_told_its_worst_case_charged(
    tmp_path: Path, redis_url: str
) -> None:
    """Nothing delivered, its upstream reached: charged its worst case as the cut ends it (settled then, not after its
    status went), and told that, not 0."""
    provider, request = HeldBeforeItsFirstToken(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        cut = await cut_by_the_stop(running, chunks.read())
    told = shutting_down(cut)
    assert told.metadata["retryable"] == "false"  # released at its worst case, which a retry would be charged again
    (charge,) = await charges_of(redis_url, request.request_id)
    assert charge["outcome"] == "cancelled"
    assert Decimal(told.metadata["charged_usd"]) == Decimal(charge["cost_usd"]) > 0


class HeldBeforeItsUpstream(Held):
    """The providers hold before asking for the word to send: no upstream has the request."""

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        await anext(aiter(requests))
        await self.release.wait()
        raise AssertionError("a stream cut by the shutdown is not read on")
        yield  # an async generator, as the servicer method it stands for


async def test_a_stream_cut_before_its_upstream_was_reached_is_told_it_may_be_sent_again(
    tmp_path: Path, redis_url: str
) -> None:
    """Nothing served and nothing charged, its id released: told `retryable` true, not false, and a retry of the same
    request on another router is served."""
    provider, request = HeldBeforeItsUpstream(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        cut = await cut_by_the_stop(running, chunks.read())
    told = shutting_down(cut)
    assert told.metadata == {"charged_usd": "0", "retryable": "true"}
    (charge,) = await charges_of(redis_url, request.request_id)
    assert (charge["outcome"], Decimal(charge["cost_usd"])) == ("cancelled", 0)
    assert (await sent_again_elsewhere(tmp_path, redis_url, request, streamed=True)).cost_usd == "0.000057"
    await ledger_is_spend(redis_url)


def call_of(stub: router_pb2_grpc.RouterStub, streamed: bool, request: router_pb2.CompleteRequest) -> Any:
    """The call's outcome as an awaitable: a unary call's answer, a stream's first chunk."""
    if streamed:
        return stub.CompleteStream(request, timeout=30).read()
    return stub.Complete(request, timeout=30)


async def admitted_as_the_cut_ran(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    provider: Held,
    request: router_pb2.CompleteRequest,
    streamed: bool,
) -> grpc.aio.AioRpcError:
    """The call admitted as the drain's cut runs (its admission held until the cut began): the error it ends with."""
    admitting, admit_goes_on = held_in(monkeypatch, Admission, "admit")
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = asyncio.ensure_future(call_of(stub, streamed, request))
        await admitting.wait()
        stopping = await stopping_once_cut(running)
        admit_goes_on.set()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        await stopping
    return refused.value


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_a_call_admitted_after_the_cut_is_refused_at_once_holding_nothing(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """Being admitted as the cut ran, it was not cut, and gRPC cancelled it at the grace's end with no details (a unary
    call's generation run and charged meanwhile). Now it is refused before it is served: nothing charged, its hold
    released, and told it may be sent again."""
    admit = Admission.admit
    provider, request = Held(), ask()
    refused = await admitted_as_the_cut_ran(tmp_path, redis_url, monkeypatch, provider, request, streamed)
    told = shutting_down(refused)
    assert told.metadata == {"charged_usd": "0", "retryable": "true"}
    assert provider.reached == 0
    (charge,) = await charges_of(redis_url, request.request_id)
    assert (charge["outcome"], Decimal(charge["cost_usd"])) == ("cancelled", 0)
    # Sent again, as told it may be, to another router: served, and charged once.
    monkeypatch.setattr(Admission, "admit", admit)
    assert (await sent_again_elsewhere(tmp_path, redis_url, request, streamed)).cost_usd == "0.000057"
    assert [c["cost_usd"] for c in await charges_of(redis_url, request.request_id)] == ["0", "0.000057"]
    await ledger_is_spend(redis_url)


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_call_admitted_after_the_cut_whose_charge_fails_unexpectedly_is_told_it_pending(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """Refused as the cut ran, settled at nothing, and that charge failing by a bug of the router's: the refusal read it
    (Charger.charged) and the bug came back a bare INTERNAL, which the edge lets the SDKs retry as costing nothing,
    while its hold is left to the reconciler. Told as any failure after admission (services/router/faults.py)."""

    def a_bug(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(AvailableModels, "baseline", a_bug)  # read as the charge's record is made
    provider, request = Held(), ask()
    refused = await admitted_as_the_cut_ran(tmp_path, redis_url, monkeypatch, provider, request, streamed)
    told = ServiceError.from_rpc_error(refused)
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"cost_pending": "true", "retryable": "false"})
    assert provider.reached == 0
    assert await still_pending(redis_url, request.request_id)


async def test_a_unary_call_whose_charge_landed_as_the_cut_ran_is_told_that_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut running as the answer's charge lands (its clean-up, the cache and the session, still to run): told
    `cost_pending`, as if still generating; now the charge the ledger has."""
    the_cut = cut_as_the_charge_lands(monkeypatch)
    provider, request = Held(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        cut = await cut_by_hand_once_released(running, provider, call, the_cut)  # cut as the charge lands
    told = shutting_down(cut)
    (charge_record,) = await charges_of(redis_url, request.request_id)
    assert charge_record["outcome"] == "ok"
    assert told.metadata == {"charged_usd": charge_record["cost_usd"], "retryable": "false"}
    await ledger_is_spend(redis_url)


class HeldThenRefused(Held):
    """Its generation, once released, refused by the upstream (a 400): the attempt cost nothing, and no fallback
    follows a refusal of the request itself."""

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.reached += 1
        await self.release.wait()
        refused = ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_ERROR", "p: refused", {"upstream_status": "400"}
        )
        await context.abort(refused.code, refused.message, refused.trailing_metadata())
        raise AssertionError("abort raises")


async def test_a_unary_call_released_at_nothing_as_the_cut_ran_is_told_it_may_be_sent_again(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut running as the charge of a failed attempt lands at nothing, its request id released (its failure still
    to reach the caller): told `retryable` true with `charged_usd` 0, as a stream nothing reached is, and a retry of
    the same request on another router is served and charged once. Told `retryable` false, a caller that could safely
    send it again was told it must not."""
    charge = RedisStore.charge
    the_cut = cut_as_the_charge_lands(monkeypatch)
    provider, request = HeldThenRefused(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        cut = await cut_by_hand_once_released(running, provider, call, the_cut)  # cut as the charge lands
    assert the_cut.taken == []  # the cut ran
    assert shutting_down(cut).metadata == {"charged_usd": "0", "retryable": "true"}
    monkeypatch.setattr(RedisStore, "charge", charge)
    assert (await sent_again_elsewhere(tmp_path, redis_url, request, streamed=False)).cost_usd == "0.000057"
    assert [c["cost_usd"] for c in await charges_of(redis_url, request.request_id)] == ["0", "0.000057"]
    await ledger_is_spend(redis_url)


async def test_a_unary_call_done_as_the_cut_ran_gets_its_answer(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut running in the turn its work ended (its session recorded last): its answer, not `cost_pending`."""
    the_cut = CutByHand()
    record = Sessions.record

    async def cut_once_recorded(self: Sessions, *args: Any, **kwargs: Any) -> None:
        await record(self, *args, **kwargs)
        the_cut()

    monkeypatch.setattr(Sessions, "record", cut_once_recorded)
    provider, request = Held(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        the_cut.take(running)  # cut as the work ends, not at cut_at
        stopping = asyncio.create_task(running.stop(GRACE_S))
        provider.release.set()
        answer = await call
        await stopping
    (charge_record,) = await charges_of(redis_url, request.request_id)
    assert (charge_record["outcome"], answer.content) == ("ok", "an answer")
    assert answer.cost_usd == charge_record["cost_usd"] == "0.000057"
    await ledger_is_spend(redis_url)


# No BDP probing: a stream's window stays at 64 KiB while its caller reads nothing.
SLOW_READER = [("grpc.http2.bdp_probe", 0)]


def noting_the_second_send(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set as a stream's second chunk (the decision's, then the first delta) goes to gRPC's send."""
    sends, second = 0, asyncio.Event()
    sending = AdmittedCalls.sending

    @contextmanager
    def noted(self: AdmittedCalls, cut_after: bool = True) -> Iterator[None]:
        nonlocal sends
        with sending(self, cut_after):
            sends += 1
            if sends == 2:
                second.set()
            yield

    monkeypatch.setattr(AdmittedCalls, "sending", noted)
    return second


class HeldAfterALongDelta(Held):
    """Its first delta longer than a reader's HTTP/2 window, then holding."""

    first_delta = "word " * 200_000


async def test_a_stream_cut_while_its_chunk_waits_for_a_slow_reader_is_told_its_charge_once_read(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC sends a chunk from its own loop, where a cancellation is dropped without a status: the cut, landing in the
    send of a chunk its caller had not read, left the caller gRPC's reset at the grace's end. It now waits for the
    send, and the caller reading on is told SHUTTING_DOWN and what it was charged."""
    delta_in_send = noting_the_second_send(monkeypatch)
    provider, request = HeldAfterALongDelta(), ask()
    async with draining_router(tmp_path, redis_url, provider, SLOW_READER) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        await delta_in_send.wait()
        stopping = await stopping_once_cut(running)
        assert (await chunks.read()).delta.startswith("word word")  # read at last, after the cut
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await chunks.read()
        await stopping
    told = shutting_down(ended.value)
    (charge,) = await charges_of(redis_url, request.request_id)
    assert charge["outcome"] == "cancelled"
    assert told.metadata == {"charged_usd": charge["cost_usd"], "retryable": "false"}
    assert Decimal(charge["cost_usd"]) > 0
    await ledger_is_spend(redis_url)


async def test_a_stream_whose_caller_reads_nothing_by_the_graces_end_is_charged_what_it_delivered_once(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of the cut's reach (no status passes the unread chunk): reset by gRPC at the grace's end, its handler closed
    then, and charged once what it delivered, before the router's charges are waited for."""
    delta_in_send = noting_the_second_send(monkeypatch)
    provider, request = HeldAfterALongDelta(), ask()
    async with draining_router(tmp_path, redis_url, provider, SLOW_READER) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        await delta_in_send.wait()
        await running.stop(GRACE_S)
        with pytest.raises(grpc.aio.AioRpcError) as reset:
            while await chunks.read() is not grpc.aio.EOF:
                pass
    assert reset.value.code() == grpc.StatusCode.UNAVAILABLE and not ServiceError.from_rpc_error(reset.value).explained
    (charge,) = await charges_of(redis_url, request.request_id)
    assert charge["outcome"] == "cancelled" and Decimal(charge["cost_usd"]) > 0
    await ledger_is_spend(redis_url)


def outbox_unwritable(tmp_path: Path) -> None:
    """The router's outbox file replaced by a directory: every write to it fails (as on a full disk), so a charge the
    store fails is kept nowhere. (Not /dev/full: the upkeep's replay would read its endless zeros.)"""
    outbox = tmp_path / "data" / "charges-outbox.jsonl"
    outbox.unlink(missing_ok=True)
    outbox.mkdir()


async def still_pending(redis_url: str, request_id: str, tenant: str = "acme") -> bool:
    """Whether the request is held, its pending charge left for the reconciler to charge at its hold."""
    db: Any = redis.from_url(redis_url)
    try:
        keys = AccountKeys.of(Account(tenant, key_id("")))
        held = await db.zrange(keys.held()[0], 0, -1)
        return any(request_id.encode() in member for member in held)
    finally:
        await db.aclose()


async def test_a_stream_cut_while_its_answers_charge_fails_is_not_told_it_was_charged_nothing(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut landing while the whole answer's charge is on its way, and that charge kept neither by the store (down)
    nor the outbox (its file unwritable): the ledger will hold its hold (the reconciler's), yet the caller was told
    SHUTTING_DOWN, `charged_usd` 0 and not retryable (Charger.charged read the charge it waited for as if it had
    landed). Told MONEY_NOT_RECORDED, as a stream whose charge so fails uncut is."""
    monkeypatch.setattr(RedisStore, "charge", store_down)
    charging, charge_goes_on = held_in(monkeypatch, RedisStore, "charge")
    provider, request = Streamed(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        outbox_unwritable(tmp_path)
        chunks = await answered_whole(stub, request)
        await charging.wait()
        ended = await cut_as_the_charge_goes_on(running, chunks, charge_goes_on)
    told = ServiceError.from_rpc_error(ended)
    assert told.reason == "MONEY_NOT_RECORDED" and "charged_usd" not in told.metadata
    assert told.metadata.get("cost_pending") == "true"  # the reconciler charges its hold: the edge lets no SDK retry it
    assert await charges_of(redis_url, request.request_id) == []
    assert await still_pending(redis_url, request.request_id)


async def test_a_stream_cut_while_its_charge_fails_unexpectedly_is_told_its_charge_pending(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut landing while the answer's charge is on its way, and that charge failing by a bug of the router's: the
    cut's own handling read it (Charger.charged) and the bug came back a bare INTERNAL, which the edge lets the SDKs
    retry as costing nothing. Told as any failure after admission (services/router/faults.py): pending, no retry."""

    def a_bug(record: dict[str, Any]) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("services.router.metrics.count_charge", a_bug)  # as the charge has landed in the store
    charging, charge_goes_on = held_in(monkeypatch, RedisStore, "charge")
    provider, request = Streamed(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = await answered_whole(stub, request)
        await charging.wait()
        ended = await cut_as_the_charge_goes_on(running, chunks, charge_goes_on)
    told = ServiceError.from_rpc_error(ended)
    assert (told.reason, told.metadata) == ("INTERNAL_ERROR", {"cost_pending": "true", "retryable": "false"})
    (charge,) = await charges_of(redis_url, request.request_id)  # once, whole
    assert charge["outcome"] == "ok"


async def test_a_unary_call_cut_while_its_answer_is_charged_is_told_its_charge_is_pending(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut landing while the answer's charge is on its way to the store: not yet landed, so `cost_pending`, and
    charged once as it lands."""
    charging, charge_goes_on = held_in(monkeypatch, RedisStore, "charge")
    provider, request = Held(), ask()
    provider.release.set()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        call = stub.Complete(request, timeout=30)
        await charging.wait()
        stopping = asyncio.create_task(running.stop(GRACE_S))
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await call
        charge_goes_on.set()
        await stopping
    told = shutting_down(cut.value)
    assert told.metadata == {"cost_pending": "true", "retryable": "false"}
    (charge_record,) = await charges_of(redis_url, request.request_id)
    assert (charge_record["outcome"], charge_record["cost_usd"]) == ("ok", "0.000057")
    await ledger_is_spend(redis_url)


async def test_a_unary_call_cut_as_its_charge_failed_is_told_its_charge_is_pending(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut running as the answer's charge fails, kept neither by the store (down) nor the outbox (its file
    unwritable): that charge did not land (the reconciler charges the hold), so `cost_pending`, not `charged_usd` 0."""
    the_cut = CutByHand()
    add = Outbox.add

    async def cut_as_it_fails(self: Outbox, *args: Any, **kwargs: Any) -> None:
        try:
            await add(self, *args, **kwargs)
        finally:
            the_cut()

    monkeypatch.setattr(RedisStore, "charge", store_down)
    monkeypatch.setattr(Outbox, "add", cut_as_it_fails)
    provider, request = Held(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        outbox_unwritable(tmp_path)
        call = stub.Complete(request, timeout=30)
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        cut = await cut_by_hand_once_released(running, provider, call, the_cut)  # cut as the charge fails
    told = shutting_down(cut)
    assert told.metadata == {"cost_pending": "true", "retryable": "false"}
    assert await charges_of(redis_url, request.request_id) == []
    assert await still_pending(redis_url, request.request_id)


async def test_a_stream_cut_as_its_final_chunk_is_sent_ends_whole(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut running while the stream's final chunk is in gRPC's send: nothing is left to cut, so the caller, who has
    the whole answer and its cost, is not told SHUTTING_DOWN after it."""
    the_cut = CutByHand()
    sends, sending = 0, AdmittedCalls.sending

    @contextmanager
    def cut_in_the_last_send(self: AdmittedCalls, cut_after: bool = True) -> Iterator[None]:
        nonlocal sends
        with sending(self, cut_after):
            sends += 1
            if sends == 3:  # the decision's, the answer's delta, then its final chunk
                the_cut()
            yield

    monkeypatch.setattr(AdmittedCalls, "sending", cut_in_the_last_send)
    provider, request = Streamed(), ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        the_cut.take(running)  # cut as the final chunk is sent, not at cut_at
        answered = [chunk async for chunk in stub.CompleteStream(request, timeout=30)]
        await running.stop(GRACE_S)
    assert the_cut.taken == []  # the cut ran
    (charge,) = await charges_of(redis_url, request.request_id)
    assert answered[-1].final.cost_usd == charge["cost_usd"] == "0.000057"
    await ledger_is_spend(redis_url)


class AnsweringLong(Held):
    """A unary generation answering at once with more words than a reader's HTTP/2 window."""

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        return provider_pb2.GenerateResponse(content="word " * 200_000, usage=usage, model=request.model)


async def test_a_buffered_stream_cut_while_its_answer_waits_for_a_slow_reader_ends_whole(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffered stream's answer, generated and charged, in gRPC's send to a caller slow to read it as the cut runs:
    nothing is left to cut. Cancelled in that send, gRPC dropped it without a status and reset the stream at the
    grace's end, the caller left without its answer's end or its cost."""
    answering = asyncio.Event()
    chunks_of = servicer.answer_chunks

    def noted(response: router_pb2.CompleteResponse) -> list[router_pb2.CompleteChunk]:
        answering.set()
        return chunks_of(response)

    monkeypatch.setattr(servicer, "answer_chunks", noted)
    provider, request = AnsweringLong(), ask()
    request.buffer_stream = True
    async with draining_router(tmp_path, redis_url, provider, SLOW_READER) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        await answering.wait()
        stopping = await stopping_once_cut(running)
        answered = [await chunks.read(), await chunks.read()]
        assert await chunks.read() is grpc.aio.EOF
        await stopping
    assert answered[0].delta.startswith("word word")
    (charge,) = await charges_of(redis_url, request.request_id)
    assert answered[-1].final.cost_usd == charge["cost_usd"]
    await ledger_is_spend(redis_url)


class StreamRefused(Held):
    """Its stream refused by the upstream (a 400) once sent, before any token: the attempt cost nothing."""

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        messages = aiter(requests)
        await anext(messages)
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(messages)
        refused = ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_ERROR", "p: refused", {"upstream_status": "400"}
        )
        await context.abort(refused.code, refused.message, refused.trailing_metadata())


async def cut_while_settling(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, provider: Held
) -> tuple[grpc.aio.AioRpcError, list[dict]]:
    """A stream of `provider`'s ending in a failure or a fault, the drain's cut landing while that ending's charge is
    on its way to the store: the status the stream ended with, and the request's ledger lines."""
    charging, charge_goes_on = held_in(monkeypatch, RedisStore, "charge")
    request = ask()
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        await charging.wait()
        stopping = await stopping_once_cut(running)
        charge_goes_on.set()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await chunks.read() != grpc.aio.EOF:
                pass
        await stopping
    return ended.value, await charges_of(redis_url, request.request_id)


async def test_a_stream_cut_while_its_fault_is_settled_is_told_its_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug after the stream's answer was read settles it at its hold (faults.py); the cut landing while that charge
    was on its way ended the call with gRPC's bare cancellation, its caller told nothing of what it was charged. Told
    as every cut call is: SHUTTING_DOWN, the hold it was charged, no retry. The fault is counted all the same (the
    alert LLMRouterRouterFaults): the cut cancelling its settling skipped the count."""

    def a_bug(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Served, "add", a_bug)  # pricing the stream's final chunk
    at_hold = {"charge": "hold"}  # llmrouter_router_faults_total's series of faults charged their hold
    before = METRICS.get_sample_value("llmrouter_router_faults_total", at_hold) or 0.0
    ended, charges = await cut_while_settling(tmp_path, redis_url, monkeypatch, Streamed())
    assert METRICS.get_sample_value("llmrouter_router_faults_total", at_hold) == before + 1
    told = shutting_down(ended)
    (charge,) = charges
    assert told.metadata == {"charged_usd": charge["cost_usd"], "retryable": "false"}
    assert Decimal(charge["cost_usd"]) == Decimal(charge["owed_usd"]) > 0  # its hold, owed whole
    assert AT_HOLD in charge["reason_detail"], charge
    await ledger_is_spend(redis_url)


async def test_a_stream_cut_while_its_failure_is_settled_is_told_it_may_be_sent_again(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream refusing the stream before any token: settled at nothing, its id released. The cut landing while
    that charge was on its way ended the call with gRPC's bare cancellation: the caller could not know a retry was
    safe. Told as a cut call nothing reached is: charged 0, retryable."""
    ended, charges = await cut_while_settling(tmp_path, redis_url, monkeypatch, StreamRefused())
    (charge,) = charges
    assert shutting_down(ended).metadata == {"charged_usd": charge["cost_usd"], "retryable": "true"}
    assert Decimal(charge["cost_usd"]) == 0
    await ledger_is_spend(redis_url)


async def test_a_buffered_stream_cut_while_its_fault_is_told_is_told_its_charge(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffered stream's answer, generated and charged, failing by a bug as it is made a stream's chunks, the cut
    landing as that fault is told (its charge read): ended with gRPC's bare cancellation, its caller told nothing of
    the charge. Told as every cut call is: SHUTTING_DOWN, what it was charged."""
    the_cut = CutByHand()

    def cut_then_a_bug(response: router_pb2.CompleteResponse) -> list[router_pb2.CompleteChunk]:
        the_cut()
        raise RuntimeError("a bug")

    monkeypatch.setattr(servicer, "answer_chunks", cut_then_a_bug)
    provider, request = Held(), ask()
    request.buffer_stream = True
    async with draining_router(tmp_path, redis_url, provider) as (running, stub):
        chunks = stub.CompleteStream(request, timeout=30)
        assert (await chunks.read()).HasField("decision")
        await eventually(lambda: provider.reached == 1, "the generation reached its upstream")
        the_cut.take(running)  # cut as the fault is told, not at cut_at
        stopping = asyncio.create_task(running.stop(GRACE_S))
        provider.release.set()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await chunks.read()
        await stopping
    told = shutting_down(ended.value)
    (charge,) = await charges_of(redis_url, request.request_id)
    assert charge["outcome"] == "ok"
    assert told.metadata == {"charged_usd": charge["cost_usd"], "retryable": "false"}
    await ledger_is_spend(redis_url)
