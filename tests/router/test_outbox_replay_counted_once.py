"""A charge the outbox replays is counted in the router's metrics once, when it lands, even when that replay does not
finish, or meets an entry failing otherwise than by the store being out of reach (here a store error on that entry's
own keys; the replay goes on past it, test_outbox_poison.py): the charges it landed stayed in the file when the file
could not be rewritten (here its scratch file's path taken), and each later replay landed them again, the store
answering that each was this very charge, made before (its charge id): counted again, every upkeep round while the
fault lasted. Nor is one counted again by another router sharing the outbox file, which never saw it land: the
replay whose rewrite fails marks what landed in place (a byte over each line, needing no room). A real Redis behind a
proxy that goes down."""

from __future__ import annotations

import errno
import os
from decimal import Decimal

import pytest

from services.router import charging
from services.router.store import RedisStore, period_id, to_pico
from services.router.store.keys import AccountKeys
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import charger_on
from tests.router.test_admission import ACCOUNT
from tests.router.test_charge_counted_once import counted, served

DAY = period_id("day")


async def test_charges_landed_before_a_failing_entry_are_counted_once(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str
) -> None:
    first, first_answer = await served(charger)
    second, second_answer = await served(charger)
    proxy.go_down()  # both charges wait in the outbox
    await charger.settle(first, first_answer)
    await charger.settle(second, second_answer)
    assert len(charger.outbox) == 2
    proxy.come_back()
    direct = RedisStore(redis_url)
    try:
        # The second charge's marker key holds a value of another type: its charge fails (WRONGTYPE), not for want
        # of the store.
        await direct.redis.hset(AccountKeys.of(ACCOUNT).charged(second.request_id), "other", "1")
        model = first_answer.model
        before = counted(model)
        for _ in range(3):  # upkeep rounds: the failing entry is replayed on its own, the one that landed is gone
            await charger.outbox.replay(charger.store)
        requests, cost = counted(model)
        assert requests - before[0] == 1, "the charge that landed was counted again at each replay"
        assert cost - before[1] == pytest.approx(float(Decimal(first_answer.cost_usd)))
        assert [e.record["request_id"] for e in charger.outbox.waiting()] == [second.request_id]  # type: ignore[union-attr]
        charged = to_pico(Decimal(first_answer.cost_usd))
        assert await direct.spent(ACCOUNT, DAY) == (charged, charged)  # and it was charged once
    finally:
        await direct.close()


@pytest.mark.parametrize("marking_fails", [False, True], ids=["marked-landed", "marking-fails-too"])
async def test_charges_landed_by_a_replay_whose_file_was_not_rewritten_are_counted_once(
    charger: charging.Charger, proxy: LossyProxy, monkeypatch: pytest.MonkeyPatch, marking_fails: bool
) -> None:
    r, answer = await served(charger)
    proxy.go_down()
    await charger.settle(r, answer)
    proxy.come_back()
    outbox = charger.outbox
    if marking_fails:  # as on a copy-on-write file system out of room: the router's own memory is all that is left

        def no_room(charge_ids: set[str]) -> None:
            raise OSError(errno.ENOSPC, "no space left on device")

        monkeypatch.setattr(outbox, "_mark_landed", no_room)
    blocked = outbox.path.with_suffix(f".{os.getpid()}.tmp")  # as Outbox._rewrite names it
    blocked.mkdir()  # the rewrite's scratch file cannot be made: the file keeps the charge that landed
    before = counted(answer.model)
    with pytest.raises(OSError):
        await outbox.replay(charger.store)
    assert len(outbox) == (1 if marking_fails else 0)  # marked landed in place, when it can be
    assert len(outbox._landed) == (1 if marking_fails else 0)  # remembered only while no mark says it
    blocked.rmdir()
    assert await outbox.replay(charger.store) == (1 if marking_fails else 0)  # dropped, never landed again
    assert outbox.path.read_text(encoding="utf-8") == ""
    requests, cost = counted(answer.model)
    assert requests - before[0] == 1, "the charge was counted again when the next replay found it in the file"
    assert cost - before[1] == pytest.approx(float(Decimal(answer.cost_usd)))


@pytest.mark.parametrize("unwritable", ["scratch-file", "dead-letter-file"])
async def test_a_charge_one_router_landed_is_not_counted_again_by_another_sharing_its_outbox(
    charger: charging.Charger, proxy: LossyProxy, redis_url: str, unwritable: str
) -> None:
    """Two routers share a data dir (so one outbox file): the first lands the charge and counts it, but cannot
    rewrite the file (a full disk: no room for its scratch file, or for the dead letters it moves out first); the
    second, which never saw it land, must not land it, and count it, again."""
    r, answer = await served(charger)
    proxy.go_down()
    await charger.settle(r, answer)
    proxy.come_back()
    async with charger_on(proxy.url_for(redis_url), charger.outbox.path.parent) as other:
        outbox = charger.outbox
        if unwritable == "scratch-file":
            blocked = outbox.path.with_suffix(f".{os.getpid()}.tmp")  # as Outbox._rewrite names it
        else:
            with outbox.path.open("a", encoding="utf-8") as file:
                file.write('{"account": {"ten\n')  # cut short by a crash: dead-lettered by the replay
            blocked = outbox.dead_path
        blocked.mkdir()
        before = counted(answer.model)
        with pytest.raises(OSError):
            await outbox.replay(charger.store)
        blocked.rmdir()
        await other.outbox.replay(other.store)
        assert len(other.outbox) == 0
        requests, cost = counted(answer.model)
        assert requests - before[0] == 1, "the other router counted the charge again"
        assert cost - before[1] == pytest.approx(float(Decimal(answer.cost_usd)))
