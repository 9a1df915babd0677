"""A stream's failed attempt and a caller leaving before the next one: what the failed attempt cost is owed
once, and no attempt is left 'in progress' for the clean-up to charge again at its worst case."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from llmrouter.v1 import provider_pb2
from services.router.routed import Routed
from services.router.serving import Serving, StreamState, worst_usd
from services.router.store import Account, Allowance, Hold, MemoryStore
from tests.router.servicer_kit import NoDeadline
from tests.router.test_admission import request, routed


class SlowExtend(MemoryStore):
    """The in-process store, with a hold that grows only once `grown` is set (a loaded Redis, for as long as the test
    needs); `growing` is set as it starts to."""

    def __init__(self) -> None:
        super().__init__()
        self.growing, self.grown = asyncio.Event(), asyncio.Event()

    async def extend(self, account: Account, allowance: Allowance, hold: Hold, pico: int, moves: str = "") -> str:
        self.growing.set()
        await self.grown.wait()
        return await super().extend(account, allowance, hold, pico, moves)


class TimedOutCall:
    """A provider stream (GenerateStreamOnCue) that is ready to send at once, then, once told to, fails with
    DEADLINE_EXCEEDED: the upstream may have generated anything."""

    def __init__(self) -> None:
        self.sent = False

    def __aiter__(self) -> TimedOutCall:
        return self

    async def write(self, message: provider_pb2.CuedRequest) -> None:
        self.sent |= message.send

    async def done_writing(self) -> None:
        pass

    async def __anext__(self) -> Any:
        if not self.sent:
            return provider_pb2.GenerateChunk(ready_to_send=True)
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "late")

    def cancel(self) -> None:
        pass


class TimingOutProviders:
    def GenerateStreamOnCue(self, timeout: float | None = None) -> TimedOutCall:
        return TimedOutCall()


async def test_a_caller_leaving_while_the_hold_grows_for_a_fallback_leaves_no_attempt_to_charge_again() -> None:
    gate, r = await routed(request(max_tokens=50))
    gate.store = store = SlowExtend()
    await gate.admit(r)
    serving = Serving(TimingOutProviders(), gate)  # type: ignore[arg-type]
    stream = StreamState(r.plan.order[0].model)

    async def consume(routed_request: Routed) -> None:
        async for _ in serving.generate_stream(routed_request, NoDeadline(), stream):
            pass

    leaving = asyncio.create_task(consume(r))
    await asyncio.wait_for(store.growing.wait(), 10)  # the first attempt timed out; the hold grows for the fallback
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # The timed-out attempt is owed at its worst case, once; the fallback was never made.
    first = worst_usd(r, r.plan.order[0].model)
    assert r.owed == first
    assert stream.worst == 0  # what the servicer adds for an attempt cut before its first token
