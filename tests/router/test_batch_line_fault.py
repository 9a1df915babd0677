"""A bug of the router's routing or admitting one line of a SubmitBatch. It failed the whole call (a bare INTERNAL)
while the call's other lines, admitted, stayed held and were never sent: no provider batch recorded for them, each was
charged its hold as it lapsed, for a line no provider ran. Now that line alone is not deferred (sent to Complete, which
says what became of it), its admission withdrawn should the store have taken it, and the other lines are sent. A real
router gRPC server over Redis; a providers gRPC server creating batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router import deferred
from services.router.sessions import Sessions
from services.router.store import Account, RedisStore
from tests.router.servicer_kit import served_router
from tests.router.test_collect_model import REGISTRY, BatchProvider
from tests.router.test_failure_after_admission import moved, router_faults

ACCOUNT = Account("acme", "anonymous")
FAULTY = "b:f1"


def line(request_id: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"Explain tides, {request_id}")],
        model="strong",
        tenant="acme",
        api_key_id="anonymous",
        request_id=request_id,
    )


def bug_in_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store takes the faulty line's hold, then reading its reply fails by a bug."""
    admit = RedisStore.admit

    async def held_then_a_bug(self: RedisStore, account: Account, allowance: Any, hold: Any, *args: Any) -> Any:
        verdict = await admit(self, account, allowance, hold, *args)
        if hold.request_id == FAULTY:
            raise RuntimeError("a bug reading the store's reply")
        return verdict

    monkeypatch.setattr(RedisStore, "admit", held_then_a_bug)


def bug_in_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the faulty line's session, as it is routed, fails by a bug: nothing of it held."""
    get = Sessions.get

    async def a_bug_for_the_faulty_line(self: Sessions, account: Account, request: Any) -> Any:
        if request.request_id == FAULTY:
            raise RuntimeError("a bug reading the session")
        return await get(self, account, request)

    monkeypatch.setattr(Sessions, "get", a_bug_for_the_faulty_line)


async def submitted(
    redis_store: RedisStore, tmp_path: Path, lines: list[router_pb2.CompleteRequest]
) -> dict[str, tuple[bool, str, str]]:
    """The lines offered to a router whose provider creates every batch: each line's reply (deferred, its provider
    batch, its error), by request id."""
    async with (
        served_router(tmp_path, redis_store, BatchProvider(), REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(
            router_pb2.SubmitLinesRequest(lines=lines), timeout=10
        )
    return {each.request_id: (each.deferred, each.provider_batch_id, each.error) for each in reply.lines}


@pytest.mark.parametrize("bug", [bug_in_admission, bug_in_routing])
async def test_a_bug_in_one_batch_lines_admission_leaves_it_unheld_and_sends_the_others(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: Any
) -> None:
    bug(monkeypatch)
    told = await submitted(redis_store, tmp_path, [line(f"b:f{i}") for i in range(3)])
    assert told == {"b:f0": (True, "pbatch-1", ""), FAULTY: (False, "", ""), "b:f2": (True, "pbatch-1", "")}
    assert await redis_store.pending_charge(ACCOUNT, FAULTY) is None  # withdrawn: nothing held, nothing owed
    sent = [await redis_store.pending_charge(ACCOUNT, f"b:f{i}") for i in (0, 2)]
    assert [p.provider_batch if p else None for p in sent] == ["pbatch-1"] * 2
    held = sum(p.hold_pico for p in sent if p)
    assert await redis_store.held_pico(ACCOUNT) == (held, held)  # the sent lines' holds alone


@pytest.mark.parametrize(("bug", "counted"), [(bug_in_admission, {"nothing": 1}), (bug_in_routing, {})])
async def test_a_bug_in_a_batch_lines_admission_is_counted_as_completes_is(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: Any, counted: dict[str, int]
) -> None:
    """In llmrouter_router_faults_total (alert LLMRouterRouterFaults), by how it was charged (nothing: withdrawn), as a
    bug in Complete's admission is; one in its routing, before any admission, is not."""
    bug(monkeypatch)
    before = router_faults()
    await submitted(redis_store, tmp_path, [line(f"b:f{i}") for i in range(3)])
    assert moved(before) == counted


async def test_a_bug_making_the_provider_batch_withdraws_its_lines(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing sent: the lines go to Complete, nothing held (they stayed held, the call failing, charged their holds as
    they lapsed)."""

    def a_bug(*args: Any) -> Any:
        raise RuntimeError("a bug making the provider's request")

    monkeypatch.setattr(deferred, "generate_request", a_bug)
    told = await submitted(redis_store, tmp_path, [line(f"b:f{i}") for i in range(3)])
    assert told == {f"b:f{i}": (False, "", "") for i in range(3)}
    for i in range(3):
        assert await redis_store.pending_charge(ACCOUNT, f"b:f{i}") is None
    assert await redis_store.held_pico(ACCOUNT) == (0, 0)


async def test_a_bug_recording_a_lines_provider_batch_is_taken_as_the_store_out_of_reach(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch created, one line's record of it failing by a bug: the call failed (a bare INTERNAL) though its batch
    ran. Answered as when the store is out of reach to record it: deferred, its hold charged when it lapses (no batch's
    results settle it); the others recorded."""
    record = RedisStore.record_provider_batch

    async def a_bug_for_the_faulty_line(self: RedisStore, account: Account, hold: Any, batch_id: str) -> bool:
        if hold.request_id == FAULTY:
            raise RuntimeError("a bug recording the batch")
        return await record(self, account, hold, batch_id)

    monkeypatch.setattr(RedisStore, "record_provider_batch", a_bug_for_the_faulty_line)
    told = await submitted(redis_store, tmp_path, [line(f"b:f{i}") for i in range(3)])
    assert told == {f"b:f{i}": (True, "pbatch-1", "") for i in range(3)}
    pending = [await redis_store.pending_charge(ACCOUNT, f"b:f{i}") for i in range(3)]
    assert [p.provider_batch if p else None for p in pending] == ["pbatch-1", "", "pbatch-1"]


async def test_a_bug_looking_the_lines_up_again_withdraws_every_admitted_line(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines admitted, the second look-up of a line not admitted (one another call of the same lines may have
    taken meanwhile) failing by a bug: the call fails, and its admitted lines, never sent, were left held, each charged
    its hold as it lapsed. Withdrawn, as when that look-up finds the store out of reach."""
    pending_charge = RedisStore.pending_charge
    looked_up: list[str] = []

    async def a_bug_the_second_time(self: RedisStore, account: Account, request_id: str) -> Any:
        if request_id in looked_up:
            raise RuntimeError("a bug reading a pending charge")
        looked_up.append(request_id)
        return await pending_charge(self, account, request_id)

    monkeypatch.setattr(RedisStore, "pending_charge", a_bug_the_second_time)
    refused = line("b:refused")
    refused.quality_target = 2  # refused as it is routed: not admitted, so looked up again
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await submitted(redis_store, tmp_path, [*(line(f"b:f{i}") for i in range(3)), refused])
    monkeypatch.setattr(RedisStore, "pending_charge", pending_charge)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    for i in range(3):
        assert await redis_store.pending_charge(ACCOUNT, f"b:f{i}") is None, i  # withdrawn: nothing owed
    assert await redis_store.held_pico(ACCOUNT) == (0, 0)
