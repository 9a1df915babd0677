"""A request refused STORE_UNAVAILABLE (its admission's reply lost, its undo kept in the outbox) and sent again once
the store is back, before the outbox's replay lands the undo: told STORE_UNAVAILABLE again (nothing admitted, send the
same request id again), never DUPLICATE_REQUEST with the hold of an admission being undone ("charged its cost when
served, or that hold"), which a batch runner takes for the line's end. Once the undo lands, the retry is admitted. A
real Redis behind a proxy that loses exactly the admission's reply."""

from __future__ import annotations

import pytest

from llmrouter.errors import ServiceError
from services.router import admission
from services.router.outbox import Outbox, OutboxUndo
from services.router.store import StoreUnavailable
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox
from tests.router.test_undone_admissions import proxied_store


async def test_a_retry_before_its_undo_lands_is_told_to_send_again_not_that_it_is_a_duplicate(redis_url: str) -> None:
    async with proxied_store(redis_url) as money:
        outbox = scratch_outbox()
        gate, first = await routed(request(), admission.Admission(SETTINGS, REGISTRY, money.store, outbox))
        await money.store.ping()  # connected: the admission is the next command
        money.proxy.lose_next_reply(then_down=True)
        with pytest.raises(StoreUnavailable):
            await gate.admit(first)
        (undo,) = outbox.waiting()
        assert isinstance(undo, OutboxUndo) and undo.hold.request_id == first.request_id

        money.proxy.come_back()
        gate.undoing.answered()  # the upkeep's ping found the store back; its replay has not run yet
        _, retry = await routed(request(), gate)
        retry.request_id = first.request_id
        with pytest.raises(StoreUnavailable) as refused:
            await gate.admit(retry)
        assert refused.value.reason == "STORE_UNAVAILABLE" and retry.hold is None
        assert first.request_id in refused.value.message
        # So does a router started on that outbox (the undo read from its file), and no other request id is held back.
        restarted = Outbox(outbox.path.parent)
        assert restarted.undo_waiting(ACCOUNT.tenant, first.request_id)
        assert not restarted.undo_waiting(ACCOUNT.tenant, "another") and not restarted.undo_waiting(
            "t2", first.request_id
        )

        assert await outbox.replay(money.store) == 1  # the undo lands: the id is free
        await gate.admit(retry)
        assert retry.hold is not None
        pending = await money.store.pending_charge(ACCOUNT, first.request_id)
        assert pending is not None and pending.nonce == retry.hold.nonce


async def test_an_undo_landed_by_another_router_sharing_the_outbox_holds_back_no_later_duplicate(
    redis_url: str,
) -> None:
    """Once the undo lands, the id is a request id like any: its retry admitted, a resend of that one is a duplicate
    (told its hold), never STORE_UNAVAILABLE again, as if an undo still waited. So when another router sharing the
    outbox landed it: this router learns so at its next replay, which lands nothing (the file is read again each
    replay). Had it forgotten only the undos it landed, the id would be held back until it restarted."""
    async with proxied_store(redis_url) as money:
        outbox = scratch_outbox()
        gate, first = await routed(request(), admission.Admission(SETTINGS, REGISTRY, money.store, outbox))
        await money.store.ping()
        money.proxy.lose_next_reply(then_down=True)
        with pytest.raises(StoreUnavailable):
            await gate.admit(first)
        money.proxy.come_back()
        gate.undoing.answered()

        assert await Outbox(outbox.path.parent).replay(money.store) == 1  # another router lands the undo
        _, retry = await routed(request(), gate)
        retry.request_id = first.request_id
        await gate.admit(retry)  # the id is free
        assert retry.hold is not None

        assert await outbox.replay(money.store) == 0  # this router's next upkeep round: nothing left to land
        _, resent = await routed(request(), gate)
        resent.request_id = first.request_id
        with pytest.raises(ServiceError) as refused:
            await gate.admit(resent)
        assert refused.value.reason == "DUPLICATE_REQUEST" and "held_usd" in refused.value.metadata
