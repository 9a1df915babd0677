"""A SubmitBatch line whose admission the store may have taken, and whose undo was then kept nowhere: a bug in the
admission and a bug undoing it (faults.HoldLeft), or the admission's reply lost with the store then out of reach and
the outbox unwritable (outbox.NotRecorded). Its hold may stand, charged its hold by the reconciler as it lapses. Told
not deferred, the edge sent it to Complete (run again, or refused as a duplicate whose charge stays open a day), or
reported it free; found held by the call's second look-up, the whole call failed BATCH_BEING_SENT, its other lines
withdrawn. Now it is answered as Complete answers such a request: deferred (never sent again), not sent, its charge
pending (`cost_pending`, at most `held_usd`), and the call's other lines are sent. A real router gRPC server over
Redis; a providers gRPC server creating batches."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.router import undoing
from services.router.store import PICO, Account, Hold, RedisStore, StoreUnavailable, lua
from services.router.undoing import Undoing
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_batch_line_fault import ACCOUNT, FAULTY, bug_in_admission, line
from tests.router.test_collect_model import REGISTRY, BatchProvider
from tests.router.test_drained_past_grace import outbox_unwritable
from tests.router.test_failure_after_admission import moved, router_faults


async def offered(store: RedisStore, tmp_path: Path, lines: list[router_pb2.CompleteRequest]) -> dict[str, Any]:
    """The lines offered to a router whose provider creates every batch: each line's reply, by request id."""
    async with (
        served_router(tmp_path, store, BatchProvider(), REGISTRY) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        reply = await router_pb2_grpc.RouterStub(channel).SubmitBatch(
            router_pb2.SubmitLinesRequest(lines=lines), timeout=20
        )
    return {each.request_id: each for each in reply.lines}


def told_pending(answer: router_pb2.DeferredLine, hold_pico: int) -> None:
    """Deferred (the edge never sends it again), in no provider batch, its charge pending at most its hold."""
    assert (answer.deferred, answer.cost_pending, answer.provider_batch_id) == (True, True, ""), answer
    assert answer.held_usd == format(Decimal(hold_pico) / PICO, "f")
    assert answer.model and answer.request_id in answer.error and "pending" in answer.error


async def test_a_line_whose_admission_and_its_undo_fail_by_bugs_is_told_pending(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bug_in_admission(monkeypatch)  # the store holds the faulty line, then reading its reply fails by a bug
    withdraw = Undoing.withdraw

    async def a_bug_undoing_the_faulty_line(self: Undoing, account: Account, hold: Hold) -> None:
        if hold.request_id == FAULTY:
            raise RuntimeError("a bug undoing the admission")
        await withdraw(self, account, hold)

    monkeypatch.setattr(Undoing, "withdraw", a_bug_undoing_the_faulty_line)
    before = router_faults()
    told = await offered(redis_store, tmp_path, [line(f"b:f{i}") for i in range(3)])
    assert moved(before) == {"pending": 1}  # as Complete's admission so failing is counted
    held = await redis_store.pending_charge(ACCOUNT, FAULTY)
    assert held is not None and held.provider_batch == ""  # left for the reconciler, sent in no batch
    told_pending(told[FAULTY], held.hold_pico)
    for sent in ("b:f0", "b:f2"):
        assert (told[sent].deferred, told[sent].provider_batch_id, told[sent].cost_pending) == (True, "pbatch-1", False)
    pending = [await redis_store.pending_charge(ACCOUNT, f"b:f{i}") for i in range(3)]
    total = sum(p.hold_pico for p in pending if p)
    assert await redis_store.held_pico(ACCOUNT) == (total, total)  # the faulty line's hold among them, as it stands


async def test_a_line_whose_admission_reply_is_lost_and_its_undo_kept_nowhere_is_told_pending(
    redis_url: str, proxy: LossyProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admission ran in the store, its reply lost and the store out of reach from then on; the undo, sent to the
    outbox, finds its file unwritable (MONEY_NOT_RECORDED, as Complete tells it)."""
    admit = RedisStore.admit

    async def reply_lost(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        outbox_unwritable(tmp_path)
        proxy.lose_next_reply(then_down=True)
        return await admit(self, *args, **kwargs)

    async with store_on(redis_url) as direct, store_on(proxy.url_for(redis_url)) as store:
        await direct.redis.script_load(lua.ADMIT)  # the admission itself is the reply lost, not a NOSCRIPT
        monkeypatch.setattr(RedisStore, "admit", reply_lost)
        told = await offered(store, tmp_path, [line(FAULTY)])
        held = await direct.pending_charge(ACCOUNT, FAULTY)
        assert held is not None and held.provider_batch == ""  # the hold the reply was lost of stands
        told_pending(told[FAULTY], held.hold_pico)


async def test_a_line_whose_admission_reply_is_lost_and_its_undo_fails_by_a_bug_is_told_pending(
    redis_store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store took the faulty line's hold and its reply was lost (the store out of reach, as the router sees it);
    its undo then failed by a bug."""
    admit, undo = RedisStore.admit, undoing.undo_or_give_back

    async def held_then_reply_lost(self: RedisStore, account: Account, allowance: Any, hold: Any, *args: Any) -> Any:
        verdict = await admit(self, account, allowance, hold, *args)
        if hold.request_id == FAULTY:
            raise StoreUnavailable()
        return verdict

    async def a_bug_undoing_the_faulty_line(store: RedisStore, account: Account, hold: Hold) -> bool:
        if hold.request_id == FAULTY:
            raise RuntimeError("a bug undoing the admission")
        return await undo(store, account, hold)

    monkeypatch.setattr(RedisStore, "admit", held_then_reply_lost)
    monkeypatch.setattr(undoing, "undo_or_give_back", a_bug_undoing_the_faulty_line)
    told = await offered(redis_store, tmp_path, [line(f"b:f{i}") for i in range(3)])
    held = await redis_store.pending_charge(ACCOUNT, FAULTY)
    assert held is not None and held.provider_batch == ""
    told_pending(told[FAULTY], held.hold_pico)
    assert [told[sent].provider_batch_id for sent in ("b:f0", "b:f2")] == ["pbatch-1"] * 2
