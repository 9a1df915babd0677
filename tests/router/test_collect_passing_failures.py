"""A provider batch collected near the end of its lines' holds (within give_up_s of it) was given up on at the first
failure of its poll: one OVERLOADED from the providers, one provider's 503, one poll past its deadline, and every line
was charged its hold, its answer unread though the provider batch had ended. A passing failure is now tried again,
after a bounded wait (at least the delay its RetryInfo asks), until the lines' holds end; only then are the lines
charged their hold; so too when the caller's deadline comes first: its next collect could come after the reconciler
charged the holds, and a batch unreadable for good would never end. A line is charged once, its answer's cost or its
hold, also when the reconciler charges its hold while its poll is under way. The router's servicer over Redis; a
real providers gRPC server (behind its own interceptors where it refuses OVERLOADED at its limit of calls in flight);
the money's clock held by the test, the collect's waits moving it instead of taking time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError, invalid, overloaded
from llmrouter.server import start_server
from llmrouter.settings import GrpcServiceSettings
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.deferred import GAVE_UP, POLL_IDS
from services.router.servicer import RouterServicer
from services.router.store import PICO, RedisStore, money_now, period_id
from tests.conftest import ledger_records
from tests.router.money_time import HeldMoneyClock
from tests.router.servicer_kit import NoDeadline, router_servicer, router_servicer_to
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider, batch_cost, send_line

HOLD_S = 1000.0  # ROUTER_PROVIDER_BATCH_HOLD_S: give_up_s is a quarter of it, 250 s
COLLECT = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])


class WaitingClock(HeldMoneyClock):
    """The money's clock held (at 08:00 UTC, so a line's hold and its charge share a budget day); the collect's
    waits (Deferred.wait) move it on, recorded in `waits`. `on_wait` runs at each wait first (a test frees the
    providers then)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(monkeypatch)
        self.waits: list[float] = []
        self.on_wait: Callable[[], Awaitable[None]] | None = None

    async def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.on_wait is not None:
            await self.on_wait()
        self.at += seconds
        return True


@asynccontextmanager
async def clocked_router(
    tmp_path: Path,
    store: RedisStore,
    provider: provider_pb2_grpc.ProviderServicer,
    clock: WaitingClock,
    **settings: Any,
) -> AsyncIterator[RouterServicer]:
    """The router's servicer over `store` and `provider` (REGISTRY, lines held HOLD_S), its collects' waits moving
    `clock`, for the block. settings: the router's others."""
    async with router_servicer(tmp_path, store, provider, REGISTRY, provider_batch_hold_s=HOLD_S, **settings) as router:
        router.deferred.wait = clock.wait
        yield router


def cut(code: grpc.StatusCode, message: str) -> ServiceError:
    """A failure as gRPC reports a call that broke on the way (no ErrorInfo): a connection lost, a poll past its
    deadline."""
    error = ServiceError(code, "", message)
    error.explained = False
    return error


class FailingFirst(BatchProvider):
    """Its first polls fail with `failures`, as the providers' server sends them; then every line is answered. The
    money's clock at each poll in `polled_at`, the time its caller gave it in `given_s`; `meanwhile` runs before the
    answer of the poll after the failures."""

    def __init__(self, *failures: ServiceError) -> None:
        self.failures = list(failures)
        self.polled = asyncio.Event()
        self.polled_at: list[float] = []
        self.given_s: list[float] = []
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.polled_at.append(money_now())
        self.polled.set()
        self.given_s.append(context.time_remaining())
        if self.failures:
            error = self.failures.pop(0)
            await context.abort(error.code, error.message, error.trailing_metadata() if error.explained else ())
        if self.meanwhile is not None:
            await self.meanwhile()
        return await super().PollBatch(request, context)


class Deadline:
    """A gRPC context whose caller's deadline is `seconds` away."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time_remaining(self) -> float:
        return self.seconds


async def sent_line(
    router: RouterServicer, store: RedisStore, clock: WaitingClock, before_end_s: float, waits_on_clock: bool = True
) -> float:
    """LINE sent in provider batch pbatch-1, the clock moved to `before_end_s` before its hold ends: when it ends.
    The collect's waits pass on the clock, unless `waits_on_clock` is False: then they take their time."""
    with acting_as(TENANT_CALLER):
        sent = await send_line(router)
    assert sent.deferred and sent.provider_batch_id == "pbatch-1", sent
    pending = await store.pending_charge(ACCOUNT, "line-1")
    assert pending is not None and pending.until
    if waits_on_clock:
        router.deferred.wait = clock.wait
    clock.at = pending.until - before_end_s
    assert before_end_s <= router.deferred.give_up_s  # the window is ending
    return pending.until


async def spent(store: RedisStore) -> int:
    return (await store.spent(ACCOUNT, period_id("day")))[0]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> WaitingClock:
    return WaitingClock(monkeypatch)


async def test_passing_failures_near_the_holds_end_are_tried_again_and_the_answer_charged(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    provider = FailingFirst(
        overloaded("providers", 7),  # the providers at their limit of calls in flight: RetryInfo 7 s
        ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "the provider batch could not be read"),
        cut(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        cut(grpc.StatusCode.UNAVAILABLE, "Connection reset by peer"),
    )
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        until = await sent_line(router, redis_store, clock, 100.0)
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, NoDeadline())
    (line,) = reply.lines
    assert (reply.ended, line.succeeded, line.response.content) == (True, True, "an answer"), reply
    assert Decimal(line.response.cost_usd) == Decimal(batch_cost("strong")) / PICO
    assert await spent(redis_store) == batch_cost("strong")  # its answer's cost, not its hold
    # The RetryInfo's delay, then waits doubling from 1 s; every try before the hold ends.
    assert clock.waits == [7.0, 2.0, 4.0, 8.0]
    assert len(provider.polled_at) == 5 and all(at < until for at in provider.polled_at)
    (record,) = [r for r in await ledger_records(redis_store.redis) if r["tenant"] == "acme"]
    assert record["outcome"] == "ok"


async def test_failures_lasting_to_the_holds_end_charge_the_hold_once(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    provider = FailingFirst(*[cut(grpc.StatusCode.UNAVAILABLE, "Connection refused")] * 100)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        until = await sent_line(router, redis_store, clock, 100.0)
        held = (await redis_store.pending_charge(ACCOUNT, "line-1")).hold_pico  # type: ignore[union-attr]
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, NoDeadline())
    (line,) = reply.lines
    assert (reply.status, reply.ended, line.succeeded) == ("window_ended", True, False), reply
    assert line.error == f"{GAVE_UP} (request id line-1)"
    assert Decimal(line.charged_usd) == Decimal(held) / PICO
    assert await spent(redis_store) == held and await redis_store.pending_charge(ACCOUNT, "line-1") is None
    # Tried until the hold's end drew near, each wait bounded, no try past the end.
    assert len(provider.polled_at) > 2 and max(clock.waits) <= 30.0
    assert all(at < until for at in provider.polled_at) and until - provider.polled_at[-1] <= 30.0


async def test_failures_outlasting_the_callers_deadline_give_the_batch_up_within_it(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """The caller's deadline (60 s) comes before the hold's end (200 s): the collect tries again within the caller's
    time, each try given no more than it leaves, then gives the batch up, its line charged its hold once, and its
    reply reaches the caller before its deadline (less 10 s for the reply)."""
    provider = FailingFirst(*[cut(grpc.StatusCode.UNAVAILABLE, "Connection refused")] * 100)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 200.0)
        held = (await redis_store.pending_charge(ACCOUNT, "line-1")).hold_pico  # type: ignore[union-attr]
        started = clock.at
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, Deadline(60.0))
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{GAVE_UP} (request id line-1)"), reply
    assert clock.at - started < 50.0 and len(provider.polled_at) > 1  # tried again within the caller's time
    # Each try given no more than the caller's time leaves, less 10 s for the reply: 50 s, then less as it runs
    # (as gRPC sends a deadline: rounded up, to within a second here).
    assert max(provider.given_s) <= 51.0 and provider.given_s[-1] < provider.given_s[0] - 20.0
    assert Decimal(line.charged_usd) == Decimal(held) / PICO and await spent(redis_store) == held


async def test_a_collect_whose_poll_outlasts_the_hold_is_charged_once(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A try started before the hold's end answers after it, the reconciler having charged the hold meanwhile: the
    answer is told at that charge, and nothing more is charged."""
    provider = FailingFirst(cut(grpc.StatusCode.UNAVAILABLE, "Connection refused"))
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        until = await sent_line(router, redis_store, clock, 100.0)
        held = (await redis_store.pending_charge(ACCOUNT, "line-1")).hold_pico  # type: ignore[union-attr]

        async def reconciled() -> None:
            clock.at = until + 1.0
            assert await redis_store.reconcile("another-router", 0.001, 3600) == 1

        provider.meanwhile = reconciled
        with acting_as(TENANT_CALLER):
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.succeeded and line.response.content == "an answer", line
    assert Decimal(line.response.cost_usd) == Decimal(held) / PICO  # told at what the ledger charged it
    assert await spent(redis_store) == held  # once
    records = [r for r in await ledger_records(redis_store.redis) if r["tenant"] == "acme"]
    assert [r["outcome"] for r in records] == ["reconciled"]


async def test_a_failure_no_try_can_pass_gives_the_batch_up_at_once(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A refusal of the poll as invalid is not tried again: the batch is given up on as before."""
    provider = FailingFirst(invalid("batch_id must be a provider's batch id", "batch_id"))
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 100.0)
        with acting_as(TENANT_CALLER):
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.error == f"{GAVE_UP} (request id line-1)" and Decimal(line.charged_usd) > 0
    assert clock.waits == [] and len(provider.polled_at) == 1


class FailingSecondPartOnce(BatchProvider):
    """The poll of the lines after the first POLL_IDS fails once (the providers out of reach), then answers."""

    def __init__(self) -> None:
        self.failed = False

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        if request.request_ids[0] != "line-1" and not self.failed:
            self.failed = True
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Connection refused")
        return await super().PollBatch(request, context)


async def test_a_collect_read_in_parts_charges_each_line_once_through_a_passing_failure(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A collect of more lines than one poll reads: the first part's lines are charged their answers, then the next
    part's poll fails once; tried again, its line is charged its answer too, not given up on at its hold."""
    lines = []
    for n in range(1, POLL_IDS + 2):
        line = router_pb2.CompleteRequest()
        line.CopyFrom(LINE)
        line.request_id = f"line-{n}"
        lines.append(line)
    async with router_servicer(
        tmp_path, redis_store, FailingSecondPartOnce(), REGISTRY, provider_batch_hold_s=HOLD_S
    ) as router:
        with acting_as(TENANT_CALLER):
            sent = await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=lines), NoDeadline())
            assert all(line.deferred for line in sent.lines)
            pending = await redis_store.pending_charge(ACCOUNT, "line-1")
            assert pending is not None and pending.until
            clock.at, router.deferred.wait = pending.until - 100.0, clock.wait
            ids = [line.request_id for line in lines]
            collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=ids)
            reply = await router.CollectBatch(collect, NoDeadline())
    assert [line.request_id for line in reply.lines] == ids and all(line.succeeded for line in reply.lines)
    assert await spent(redis_store) == len(ids) * batch_cost("strong") and clock.waits == [1.0]


async def test_a_stopping_router_tries_no_poll_again(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """The router's servicer closed (its drain over) while a collect waits to try its poll again: the collect fails at
    once, nothing charged, for its caller to collect again from another router, and the close does not wait out the
    retries (until the caller's deadline, or the hold's end)."""
    provider = FailingFirst(*[cut(grpc.StatusCode.UNAVAILABLE, "Connection refused")] * 100)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 100.0, waits_on_clock=False)  # the clock held: it never ends
        with acting_as(TENANT_CALLER):
            collecting = asyncio.ensure_future(router.CollectBatch(COLLECT, NoDeadline()))
        await provider.polled.wait()
        try:
            await asyncio.wait_for(router.close(), 10)
        finally:
            provider.failures.clear()  # a collect still trying ends with the next poll
        with pytest.raises(ServiceError) as failed:
            await collecting
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert await redis_store.spent(ACCOUNT, period_id("day")) == (0, 0)
    assert await redis_store.pending_charge(ACCOUNT, "line-1") is not None


class HeldGenerate(BatchProvider):
    """Each Generate waits for `release` once its handler runs (`reached` set): it takes the providers' one place."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.reached.set()
        await self.release.wait()
        return provider_pb2.GenerateResponse(content="done", usage=common_pb2.Usage(input_tokens=1, output_tokens=1))


@pytest.fixture
async def providers_with_one_place() -> AsyncIterator[tuple[HeldGenerate, int]]:
    servicer = HeldGenerate()
    settings = GrpcServiceSettings(port=0, auth="none", max_inflight_calls=1)
    add = provider_pb2_grpc.add_ProviderServicer_to_server
    running = await start_server("providers", settings, {"llmrouter.v1.Provider": lambda s: add(servicer, s)})
    try:
        yield servicer, running.port
    finally:
        await running.stop(0)


async def test_the_providers_refusing_overloaded_at_their_limit_are_waited_out(
    redis_store: RedisStore,
    tmp_path: Path,
    clock: WaitingClock,
    providers_with_one_place: tuple[HeldGenerate, int],
) -> None:
    """The providers' own server, its one place taken by a call, refuses the poll OVERLOADED (RetryInfo 1 s); the
    call ends while the collect waits, and the poll tried again reads the answer."""
    provider, port = providers_with_one_place
    address = f"127.0.0.1:{port}"
    async with (
        router_servicer_to(address, tmp_path, redis_store, REGISTRY, provider_batch_hold_s=HOLD_S) as router,
        grpc.aio.insecure_channel(address) as channel,
    ):
        await sent_line(router, redis_store, clock, 100.0)
        generate = provider_pb2.GenerateRequest(model="strong")
        holding = asyncio.ensure_future(provider_pb2_grpc.ProviderStub(channel).Generate(generate, timeout=30))
        await provider.reached.wait()

        async def call_ended() -> None:
            provider.release.set()
            await holding

        clock.on_wait = call_ended
        with acting_as(TENANT_CALLER):
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.succeeded and await spent(redis_store) == batch_cost("strong"), line
    assert clock.waits == [1.0]


async def test_a_batch_unreadable_for_good_ends_though_the_callers_deadline_comes_first(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A poll that fails for good as a passing failure (the provider no longer knows the batch: 404, told UNAVAILABLE)
    in the caller's last collect before the holds end, its deadline coming first: the lines are given up on then,
    charged their hold once, and the batch ends. Failed for the caller to collect again, its next collect could come
    after the reconciler charged the holds, no line pending any more, and fail with the same poll again and again."""
    unknown = ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "the provider batch could not be read")
    provider = FailingFirst(*[unknown] * 1000)
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        until = await sent_line(router, redis_store, clock, 200.0)
        held = (await redis_store.pending_charge(ACCOUNT, "line-1")).hold_pico  # type: ignore[union-attr]
        replies = []
        for _ in range(3):  # each collect 60 s from its caller's deadline; the next one after the hold's end
            with acting_as(TENANT_CALLER):
                try:
                    replies.append(await router.CollectBatch(COLLECT, Deadline(60.0)))
                except ServiceError as failed:
                    assert failed.code == grpc.StatusCode.UNAVAILABLE
            if replies:
                break
            clock.at = max(clock.at, until) + 1.0
            await redis_store.reconcile("another-router", 0.001, 3600)
    assert replies, "the batch never ended"
    (line,) = replies[0].lines
    assert (replies[0].ended, line.error) == (True, f"{GAVE_UP} (request id line-1)"), replies[0]
    assert Decimal(line.charged_usd) == Decimal(held) / PICO
    assert await spent(redis_store) == held
    assert all(at < until for at in provider.polled_at)


async def test_a_poll_shed_unhandled_is_tried_again(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A poll the providers' gRPC server dropped before any handler ran (CANCELLED, no ErrorInfo) set off nothing:
    tried again, its answer is read and charged, the line not given up on at its hold."""
    provider = FailingFirst(cut(grpc.StatusCode.CANCELLED, "Cancelled"))
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 100.0)
        with acting_as(TENANT_CALLER):
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.succeeded and await spent(redis_store) == batch_cost("strong"), line
    assert clock.waits == [1.0]


async def test_a_caller_with_little_time_left_still_gives_its_poll_the_least_try(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A caller whose deadline leaves 2 s past the 10 s for the reply: its poll is given LEAST_TRY_S (5 s), not a
    deadline that passes before the providers can answer."""
    provider = FailingFirst()
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 100.0)
        with acting_as(TENANT_CALLER):
            (line,) = (await router.CollectBatch(COLLECT, Deadline(12.0))).lines
    assert line.succeeded and await spent(redis_store) == batch_cost("strong"), line
    assert 4.0 < provider.given_s[0] <= 6.0  # as gRPC sends a deadline: rounded up


async def test_tries_end_before_the_earliest_of_the_lines_holds_ends(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """Two lines of one provider batch, the first's hold ending 150 s before the second's: failures tried again stop
    before the first's ends (the reconciler charges it then, unseen by the collect), and both are given up on, each
    charged its hold once."""
    provider = FailingFirst(*[cut(grpc.StatusCode.UNAVAILABLE, "Connection refused")] * 100)
    second = router_pb2.CompleteRequest()
    second.CopyFrom(LINE)
    second.request_id = "line-2"
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        until = await sent_line(router, redis_store, clock, 100.0)
        clock.at = until - HOLD_S + 150.0  # the second line admitted 150 s after the first
        with acting_as(TENANT_CALLER):
            (sent,) = (await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[second]), NoDeadline())).lines
        assert sent.provider_batch_id == "pbatch-1"
        clock.at = until - 100.0
        both = router_pb2.CollectBatchRequest(
            model="strong", provider_batch_id="pbatch-1", request_ids=["line-1", "line-2"]
        )
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(both, NoDeadline())
    assert reply.ended and [line.error for line in reply.lines] == [
        f"{GAVE_UP} (request id {i})" for i in ("line-1", "line-2")
    ]
    assert len(provider.polled_at) > 2 and all(at < until for at in provider.polled_at)
    assert await redis_store.pending_charge(ACCOUNT, "line-2") is None


async def test_a_retry_delay_past_the_longest_wait_is_waited_at_most_that(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    """A RetryInfo asking 600 s, past the hold's end: the collect waits MOST_WAIT_S (30 s) and reads the answer, not
    giving up on a line it could still read."""
    provider = FailingFirst(overloaded("providers", 600))
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 100.0)
        with acting_as(TENANT_CALLER):
            (line,) = (await router.CollectBatch(COLLECT, NoDeadline())).lines
    assert line.succeeded and await spent(redis_store) == batch_cost("strong"), line
    assert clock.waits == [30.0]
