"""A providers poll's reply that leaves out the first line asked for (the providers' partial reply never does: it keeps
the first whatever its size) reads nothing. The collect failed UNAVAILABLE on it, as a passing failure, even near its
lines' window's end and after it: such a reply, given each time, kept the batch from ever ending, and the line's hold
was charged unseen by the caller. Now it is taken as a batch no try reads: before the window's end the caller is told
to collect again, nothing charged; near it the lines are given up on, each charged its hold once; after it, each is
told at the charge it took. The router's servicer over Redis; a real providers gRPC server; the money's clock held."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.deferred import GAVE_UP, SETTLED_UNREAD
from services.router.store import PICO, RedisStore
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider
from tests.router.test_collect_passing_failures import COLLECT, HOLD_S, WaitingClock, sent_line, spent
from tests.router.test_collect_settled_lines import sent_and_reconciled


class LeavingOutTheFirst(BatchProvider):
    """A batch that has ended, whose poll's reply reads none of the lines asked for: all named unread."""

    def __init__(self) -> None:
        self.polls = 0

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.polls += 1
        return provider_pb2.PollBatchResponse(status="completed", ended=True, unread_ids=request.request_ids)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> WaitingClock:
    return WaitingClock(monkeypatch)


async def test_before_the_window_ends_the_caller_is_told_to_collect_again_nothing_charged(
    redis_store: RedisStore, tmp_path: Path
) -> None:
    provider = LeavingOutTheFirst()
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        with acting_as(TENANT_CALLER):
            await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
            with pytest.raises(ServiceError) as failed:
                await router.CollectBatch(COLLECT, NoDeadline())
    assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
    assert await spent(redis_store) == 0
    assert await redis_store.pending_charge(ACCOUNT, "line-1") is not None


async def test_near_the_windows_end_the_lines_are_given_up_at_their_hold_once(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    provider = LeavingOutTheFirst()
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        await sent_line(router, redis_store, clock, 100.0)
        held = (await redis_store.pending_charge(ACCOUNT, "line-1")).hold_pico  # type: ignore[union-attr]
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, NoDeadline())
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{GAVE_UP} (request id line-1)"), reply
    assert Decimal(line.charged_usd) == Decimal(held) / PICO and await spent(redis_store) == held
    assert provider.polls == 1 and clock.waits == []


async def test_after_the_window_the_lines_are_told_at_their_charge(
    redis_store: RedisStore, tmp_path: Path, clock: WaitingClock
) -> None:
    provider = LeavingOutTheFirst()
    async with router_servicer(tmp_path, redis_store, provider, REGISTRY, provider_batch_hold_s=HOLD_S) as router:
        held = await sent_and_reconciled(router, redis_store, clock)
        with acting_as(TENANT_CALLER):
            reply = await router.CollectBatch(COLLECT, NoDeadline())
    (line,) = reply.lines
    assert (reply.ended, line.error) == (True, f"{SETTLED_UNREAD} (request id line-1)"), reply
    assert Decimal(line.charged_usd) == Decimal(held) / PICO and await spent(redis_store) == held
