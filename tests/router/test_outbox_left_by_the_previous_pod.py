"""A router starting on a data dir that holds the outbox of a router gone before it (a StatefulSet's pod deleted and
made again on its volume claim: the chart's router.outbox.persistence) lands what was left there before it serves
(its first upkeep round, in services.router.build, replays the outbox before the server starts): each charge at what
its caller was told, whether or not another router's reconciler charged the request its hold meanwhile. Started on
an empty data dir (the pod's emptyDir, deleted with it), the request stays charged its hold. A real Redis behind a
proxy that goes down (the router gone was cut off from it), and a router built as its process builds it
(services.router.build), serving on loopback."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from llmrouter.redis_url import RedisUrl
from llmrouter.server import start_server
from services import router
from services.router import admission, charging
from services.router.outbox import Outbox, OutboxUndo
from services.router.settings import RouterSettings
from services.router.store import RedisStore, StoreUnavailable, period_id, to_pico
from tests.conftest import ledger_records
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed
from tests.router.test_charge_counted_once import served
from tests.router.test_undone_admissions import proxied_store
from tests.waiting import eventually

DAY = period_id("day")


async def router_built_on(data_dir: Path, redis_url: str, store: RedisStore) -> tuple[int, tuple[int, int], list]:
    """A router built on `data_dir` and the store, as its process builds it before it serves (its upkeep loop not
    started yet, nor its shutdown's last replay run): what its outbox holds then, the tenant's spend, and the ledger.
    It then serves, and stops."""
    settings = RouterSettings(
        port=0,
        redis_url=RedisUrl(redis_url),
        data_dir=data_dir,
        classifier_addr="127.0.0.1:1",  # never called: the router only starts
        providers_addr="127.0.0.1:1",
        metrics_port=0,
    )
    built = await router.build(settings)
    seen = len(Outbox(data_dir)), await store.spent(ACCOUNT, DAY), await ledger_records(store.redis)
    server = await start_server("router", settings, *built)
    await server.stop(1)
    return seen


@pytest.mark.parametrize("reconciled_first", [False, True], ids=["back-before-the-reconciler", "after-it"])
@pytest.mark.parametrize("volume", ["claim kept", "emptyDir lost"])
async def test_a_router_started_on_the_outbox_of_one_gone_lands_what_it_left(
    charger: charging.Charger,
    proxy: LossyProxy,
    redis_url: str,
    tmp_path: Path,
    reconciled_first: bool,
    volume: str,
) -> None:
    r, response = await served(charger)
    assert r.hold is not None
    proxy.go_down()  # the store out of reach as the router charges, and still at its shutdown: the charge is left
    await charger.settle(r, response)
    assert len(charger.outbox) == 1 and charger.outbox.path.parent == tmp_path / "data"
    told = to_pico(Decimal(response.cost_usd))
    assert 0 < told < r.hold.pico
    store = RedisStore(redis_url)
    try:
        if reconciled_first:  # the pod gone past its heartbeat: another router's reconciler charges the hold
            await eventually(lambda: store.reconcile("router-alive", 0.2, 3600), "the request reconciled")
            assert await store.spent(ACCOUNT, DAY) == (r.hold.pico, r.hold.pico)
        # The pod made again: on its claim, the same data dir; on a new emptyDir, an empty one.
        data_dir = tmp_path / "data" if volume == "claim kept" else tmp_path / "new-empty-dir"
        waiting, spent, ledger = await router_built_on(data_dir, redis_url, store)
        records = [x for x in ledger if x["request_id"] == r.request_id]
    finally:
        await store.close()
    assert waiting == 0
    if volume == "claim kept":
        assert spent == (told, told), "the charge left in the outbox did not land before the router served"
        assert sum(to_pico(Decimal(x["cost_usd"])) for x in records) == told
    elif reconciled_first:
        assert spent == (r.hold.pico, r.hold.pico)  # lost with the pod: the request costs its hold
    else:
        assert spent == (0, 0) and records == []  # not yet even that: the reconciler settles it later, at its hold


@pytest.mark.parametrize("volume", ["claim kept", "emptyDir lost"])
async def test_an_undo_left_by_a_router_gone_frees_what_the_reconciler_charged(
    redis_url: str, tmp_path: Path, volume: str
) -> None:
    """Worse than a charge at its hold: an admission whose reply was lost, its caller told nothing was admitted, its
    undo kept in the outbox. Lost with the pod, the reconciler charges the tenant the whole hold for a request that
    never ran; on a kept claim, the router made again gives it all back before it serves."""
    async with proxied_store(redis_url) as money:
        outbox = Outbox(tmp_path / "data")
        gate, r = await routed(request(), admission.Admission(SETTINGS, REGISTRY, money.store, outbox))
        await money.store.ping()  # connected: the admission is the next command
        money.proxy.lose_next_reply(then_down=True)
        with pytest.raises(StoreUnavailable):
            await gate.admit(r)  # the caller is told nothing was admitted
        (undo,) = outbox.waiting()
        assert isinstance(undo, OutboxUndo)
        store = RedisStore(redis_url)
        try:
            await eventually(lambda: store.reconcile("router-alive", 0.2, 3600), "the request reconciled")
            hold = undo.hold.pico
            assert await store.spent(ACCOUNT, DAY) == (hold, hold)
            data_dir = tmp_path / "data" if volume == "claim kept" else tmp_path / "new-empty-dir"
            waiting, spent, _ = await router_built_on(data_dir, redis_url, store)
        finally:
            await store.close()
    assert waiting == 0
    assert spent == ((0, 0) if volume == "claim kept" else (hold, hold))
