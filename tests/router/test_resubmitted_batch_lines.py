"""Offering a batch's lines to provider batches again, after a SubmitBatch call whose reply the edge never got (its
deadline passed, or the connection was cut: the router's server closes connections MAX_CONNECTION_AGE after they
open), finds the lines the router sent meanwhile in their provider batch. Otherwise they are refused as duplicates,
end in the error file (duplicate_request, pending) and are charged their hold, the worst case, when it lapses a day
later: the tenant pays the most for answers it never gets. A real router gRPC server (its interceptor, auth none)
over Redis; a providers gRPC server whose Batch API is slow to create a batch; the edge's Deferral, which then collects
them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.server import RunningServer
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.batches import deferral, wire
from services.batches.deferral import Deferral, Unreached
from services.batches.store import MemoryStore as BatchStore
from services.batches.store import results_key
from services.router import deferred
from services.router.store import PICO, Account, Allowance, Hold, RedisStore, period_id
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_collect_model import REGISTRY

CREATE_S = 1.0  # the provider takes this long to create a batch
BATCH_ID = "batch_resubmitted"
BATCH = {"tenant": b"acme", "key_id": b"anonymous"}
LINE = {
    "custom_id": "c1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "strong", "max_tokens": 200, "messages": [{"role": "user", "content": "Explain tides"}]},
}
LINES = wire.Lines.index(json.dumps(LINE).encode() + b"\n")  # the input file's lines, as the edge indexes them


class SlowBatchProvider(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        await asyncio.sleep(CREATE_S)
        return provider_pb2.SubmitBatchResponse(batch_id="pbatch-1")

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        usage = common_pb2.Usage(input_tokens=10, output_tokens=20)
        answer = provider_pb2.GenerateResponse(content="the moon", usage=usage, finish_reason="stop")
        results = [
            provider_pb2.BatchLineResult(request_id=request_id, succeeded=True, response=answer)
            for request_id in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


@pytest.fixture
async def router(redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, RedisStore]]:
    async with served_router(tmp_path, redis_store, SlowBatchProvider(), REGISTRY) as running:
        yield running, redis_store


async def test_lines_offered_again_after_a_lost_reply_are_found_in_their_provider_batch(
    router: tuple[RunningServer, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, store = router
    files = BatchStore()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        edge = Deferral(files, router_pb2_grpc.RouterStub(channel), poll_s=0.1)
        monkeypatch.setattr(deferral, "CALL_S", CREATE_S / 4)  # the edge's call ends before the router's reply
        assert await edge.offer(BATCH_ID, dict(BATCH), LINES, set()) == Unreached()  # out of reach: resumed later
        monkeypatch.undo()
        # The router ran the call to its end (SubmitBatch is shielded): the line was admitted and sent.
        line = f"{BATCH_ID}:c1"
        for _ in range(100):
            pending = await store.pending_charge(Account("acme", "anonymous"), line)
            if pending is not None and pending.provider_batch == "pbatch-1":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the line was never sent in a provider batch")
        deferred = await edge.offer(BATCH_ID, dict(BATCH), LINES, set())
        assert deferred == {0: {"model": "strong", "provider_batch_id": "pbatch-1"}}
        # Collected as any deferred line: answered, and charged its answer rather than its hold.
        custom_ids: dict[int, str | None] = {0: "c1"}  # LINE's
        assert await edge.collect(BATCH_ID, dict(BATCH), custom_ids, deferred, lambda: True)
        result = json.loads((await files.get(results_key(BATCH_ID)))["0"])
        settled = await store.pending_charge(Account("acme", "anonymous"), line)
        spent, _ = await store.spent(Account("acme", "anonymous"), pending.period)
    assert (
        result["ok"]
        and json.loads(result["line"])["response"]["body"]["choices"][0]["message"]["content"] == "the moon"
    )
    assert settled is None and 0 < spent < pending.hold_pico and Decimal(result["cost"]) * PICO == spent


async def test_a_line_offered_again_with_no_provider_batch_recorded_is_answered_at_its_hold(
    router: tuple[RunningServer, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line pending with no batch recorded (its batch's creation had an unknown outcome) is deferred with its
    error and the hold it is charged when the hold lapses (no batch's results settle it), as its lost reply had it:
    refused as a duplicate, the caller's error file had it as pending. It stays held, as it was."""
    monkeypatch.setattr(deferred, "SENDING_S", 0.0)  # its creation is over
    running, store = router
    account = Account("acme", "anonymous")
    unrecorded = Hold("b:c2", 1_000, period_id("day"), "router-1", nonce="0e", until=time.time() + 3600)
    assert (await store.admit(account, Allowance("day"), unrecorded, "strong")).refused == ""
    line = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Explain tides")],
        model="strong",
        tenant="acme",
        api_key_id="anonymous",
        request_id="b:c2",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(
            router_pb2.SubmitLinesRequest(lines=[line]), timeout=10
        )
    (answer,) = reply.lines
    assert answer.deferred and answer.error and not answer.provider_batch_id, reply
    assert Decimal(answer.held_usd) * PICO == 1_000
    still = await store.pending_charge(account, "b:c2")
    assert still is not None and still.provider_batch == "" and still.nonce == "0e"


async def test_lines_looked_for_after_a_cancel_are_answered_as_sent_and_none_is_admitted(
    router: tuple[RunningServer, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FindDeferred, asked by a batch cancelled or past its window about the lines of an offer whose reply it lost:
    a line sent in a recorded provider batch is deferred in it (so it is collected); one pending with no batch
    recorded is deferred with its error and the hold it is charged (the error file then says what the ledger will);
    a line never admitted is not deferred, and is not admitted now: the batch sends no line any more."""
    running, store = router
    account = Account("acme", "anonymous")

    def line(request_id: str) -> router_pb2.CompleteRequest:
        return router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"Explain tides {request_id}")],
            model="strong",
            max_tokens=200,
            tenant="acme",
            api_key_id="anonymous",
            request_id=request_id,
        )

    unrecorded = Hold("b:c2", 1_000, period_id("day"), "router-1", nonce="0e", until=time.time() + 3600)
    assert (await store.admit(account, Allowance("day"), unrecorded, "strong")).refused == ""
    monkeypatch.setattr(deferred, "SENDING_S", 0.0)  # b:c2's creation is over
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        sent = await stub.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[line("b:c1")]), timeout=10)
        held_before = await store.held_pico(account)
        found = await stub.FindDeferred(
            router_pb2.SubmitLinesRequest(lines=[line("b:c1"), line("b:c2"), line("b:c3")]), timeout=10
        )
        held_after = await store.held_pico(account)
    first, second, third = found.lines
    assert sent.lines[0].deferred and sent.lines[0].provider_batch_id == "pbatch-1", sent
    assert (first.request_id, first.deferred, first.model, first.provider_batch_id, first.error) == (
        "b:c1",
        True,
        "strong",
        "pbatch-1",
        "",
    )
    assert first.held_usd == sent.lines[0].held_usd
    assert second.request_id == "b:c2" and second.deferred and not second.provider_batch_id and second.error
    assert Decimal(second.held_usd) * PICO == 1_000
    assert third.request_id == "b:c3" and not third.deferred and not third.error
    assert await store.pending_charge(account, "b:c3") is None and held_after == held_before  # nothing admitted


def strong_line(request_id: str, model: str = "strong") -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"Explain tides {request_id}")],
        model=model,
        max_tokens=200,
        tenant="acme",
        api_key_id="anonymous",
        request_id=request_id,
    )


async def test_a_line_whose_provider_batch_may_still_be_being_created_is_asked_for_again(
    router: tuple[RunningServer, RedisStore],
) -> None:
    """A line held with no batch recorded, admitted moments ago: its SubmitBatch may still be creating its batch (a
    slow upload), so neither SubmitBatch nor FindDeferred answers it unknown at its hold (that batch, recorded next,
    would never be collected): both fail, UNAVAILABLE (ask again later), and SubmitBatch admits none of its lines."""
    running, store = router
    account = Account("acme", "anonymous")
    sending = Hold("b:c2", 1_000, period_id("day"), "router-1", nonce="0e", until=time.time() + 3600)
    assert (await store.admit(account, Allowance("day"), sending, "strong")).refused == ""
    lines = router_pb2.SubmitLinesRequest(lines=[strong_line("b:c2"), strong_line("b:c3")])
    refused = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for call in (stub.SubmitBatch, stub.FindDeferred):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(lines, timeout=10)
            refused.append(ServiceError.from_rpc_error(raised.value))
    for error in refused:
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "BATCH_BEING_SENT"), error
        assert 0 < int(error.metadata["retry_after_s"]) <= deferred.SENDING_S
    assert await store.pending_charge(account, "b:c3") is None  # nothing admitted
    still = await store.pending_charge(account, "b:c2")
    assert still is not None and still.provider_batch == "" and still.nonce == "0e"


async def test_each_models_provider_batch_is_created_at_once(
    router: tuple[RunningServer, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines for two models: their provider batches are created side by side, not one after the other's upload, so
    both start within SEND_START_S of the call (the provider takes CREATE_S to create each)."""
    running, _ = router
    monkeypatch.setattr(deferred, "SEND_START_S", CREATE_S / 2)
    lines = router_pb2.SubmitLinesRequest(lines=[strong_line("b:c1"), strong_line("b:c2", "cheap")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(lines, timeout=10)
    assert [(a.deferred, a.model, a.provider_batch_id) for a in reply.lines] == [
        (True, "strong", "pbatch-1"),
        (True, "cheap", "pbatch-1"),
    ], reply


async def test_lines_admitted_past_the_send_start_are_withdrawn(
    router: tuple[RunningServer, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines whose admission took longer than SEND_START_S are not sent (their creation would end past SENDING_S,
    after a line asked about may have been answered unknown): withdrawn, nothing held, they go to Complete."""
    running, store = router
    monkeypatch.setattr(deferred, "SEND_START_S", 0.0)
    lines = router_pb2.SubmitLinesRequest(lines=[strong_line("b:c1")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(lines, timeout=10)
    account = Account("acme", "anonymous")
    assert not reply.lines[0].deferred and not reply.lines[0].provider_batch_id, reply
    assert await store.pending_charge(account, "b:c1") is None and await store.held_pico(account) == (0, 0)


async def test_a_line_offered_by_two_calls_at_once_is_not_sent_to_complete_while_the_other_sends_it(
    tmp_path: Path, pausable_redis_url: str
) -> None:
    """An edge that lost a SubmitBatch's reply (it crashed, its call cut) offers the lines again while the first call
    still runs: both may look a line up before either admits it (a slow store, or a slow classifier). The call whose
    admission of it was refused as a duplicate answered it not deferred, so its edge sent it to Complete, refused as a
    duplicate (the error file: pending), while the other call sent it in a provider batch no one collects (its hold
    charged when it lapses, its answer lost). Looked up again, it is answered as any line being sent: the call fails
    BATCH_BEING_SENT, and its caller asks again. Real Redis (a server of the test's own), paused while both calls look
    the line up."""
    lines = router_pb2.SubmitLinesRequest(lines=[strong_line("b:c1")])
    pauser = redis.from_url(pausable_redis_url)
    async with (
        store_on(pausable_redis_url) as store,
        served_router(tmp_path, store, SlowBatchProvider(), REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        await pauser.execute_command("CLIENT", "PAUSE", "500")
        calls = [asyncio.ensure_future(stub.SubmitBatch(lines, timeout=10)) for _ in range(2)]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        pending = await store.pending_charge(Account("acme", "anonymous"), "b:c1")
    await pauser.aclose()
    answered = [reply for reply in replies if isinstance(reply, router_pb2.SubmitLinesResponse)]
    failed = [ServiceError.from_rpc_error(r) for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert len(answered) == len(failed) == 1, replies
    assert [(a.deferred, a.provider_batch_id) for a in answered[0].lines] == [(True, "pbatch-1")], answered
    assert (failed[0].code, failed[0].reason) == (grpc.StatusCode.UNAVAILABLE, "BATCH_BEING_SENT"), failed
    assert pending is not None and pending.provider_batch == "pbatch-1"
