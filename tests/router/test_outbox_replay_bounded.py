"""A router started on a long outbox (the charges a long money store outage left) serves within a bound, and lands
the rest once it serves, each charge once. Its first upkeep round runs before it serves gRPC health (services.router
build), and replayed the whole outbox: past the chart's startupProbe budget (2 minutes) the kubelet killed it
mid-replay, and the outbox, rewritten only as a replay ended, held the same entries at the next start: a crash loop
that never landed them. A replay is bounded (upkeep.REPLAY_SLICE_S, made short here for an outbox of a few thousand
charges) and drops what it landed from the file as it stops: the next one goes on from there. A real Redis, a router
built as its process builds it (services.router.build) and serving on loopback."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from llmrouter.redis_url import RedisUrl
from llmrouter.server import start_server
from services import router
from services.router import upkeep
from services.router.outbox import Outbox, OutboxCharge
from services.router.settings import RouterSettings
from services.router.store import Allowance, Hold, RedisStore, period_id, to_pico
from services.router.store.keys import alive_key
from tests.conftest import ledger_records
from tests.router.test_admission import ACCOUNT
from tests.waiting import eventually

DAY = period_id("day")
CHARGES = 3_000  # about a second to replay on loopback, some 0.4 MB
PICO = 1_234
SLICE_S = 0.1


async def outbox_left_by_an_outage(store: RedisStore, data_dir: Path, charges: int) -> list[str]:
    """An outbox of `charges` charges of admitted requests (each pending at its hold), as routers cut off from the
    store keep them; their request ids, in the file's order."""
    lines, ids = [], []
    for i in range(charges):
        hold = Hold(f"r-{i}", 7_000, DAY, "router-gone", f"n-{i}")
        assert (await store.admit(ACCOUNT, Allowance("day"), hold)).refused == ""
        record = {"request_id": hold.request_id, "cost_usd": "0.000000001234"}
        lines.append(OutboxCharge(ACCOUNT, hold, PICO, record, f"charge-{i}").to_json())
        ids.append(hold.request_id)
    Outbox(data_dir).path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return ids


def waiting_ids(data_dir: Path) -> list[str]:
    return [entry.hold.request_id for entry in Outbox(data_dir).waiting()]


async def test_a_bounded_replay_drops_what_it_landed_and_the_next_goes_on_from_there(
    redis_url: str, tmp_path: Path
) -> None:
    store = RedisStore(redis_url)
    try:
        ids = await outbox_left_by_an_outage(store, tmp_path / "data", CHARGES)
        outbox = Outbox(tmp_path / "data")
        landed = await outbox.replay(store, SLICE_S)
        assert 0 < landed < CHARGES
        # On disk now, as a router killed next would leave it: the entries not landed, in order, and none that did.
        assert waiting_ids(tmp_path / "data") == ids[landed:]
        assert await store.spent(ACCOUNT, DAY) == (landed * PICO, landed * PICO)
        replays = 1
        while len(outbox):
            assert await outbox.replay(store, SLICE_S) > 0
            replays += 1
        assert replays > 2
        assert await store.spent(ACCOUNT, DAY) == (CHARGES * PICO, CHARGES * PICO)  # each charge once
        assert sorted(record["request_id"] for record in await ledger_records(store.redis)) == sorted(ids)
    finally:
        await store.close()


async def test_a_router_started_on_a_long_outbox_serves_within_the_bound_and_lands_the_rest(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "REPLAY_SLICE_S", SLICE_S)
    data_dir = tmp_path / "data"
    settings = RouterSettings(
        port=0,
        redis_url=RedisUrl(redis_url),
        data_dir=data_dir,
        classifier_addr="127.0.0.1:1",  # never called: the router only starts
        providers_addr="127.0.0.1:1",
        metrics_port=0,
        upkeep_interval_s=0.05,
        heartbeat_ttl_s=30,  # beaten in the first round, then by the loop once serving: no expiry in between
        ledger_sql_sink=False,  # the ledger's streams read here, as the charges left them
    )
    store = RedisStore(redis_url)
    try:
        ids = await outbox_left_by_an_outage(store, data_dir, CHARGES)
        began = time.monotonic()
        built = await router.build(settings)
        took_s = time.monotonic() - began
        try:
            left = waiting_ids(data_dir)
            assert 0 < len(left) < CHARGES, "the first round replayed the whole outbox before the router served"
            assert left == ids[CHARGES - len(left) :]  # the landed prefix is off the file already
            assert took_s < 5  # the bound, and the router's other work at its start
            assert await store.redis.exists(alive_key(settings.router_name))  # its heartbeat came first
        except BaseException:
            for close in built[1]:  # its upkeep and budget watch, never served
                await close()
            raise
        server = await start_server("router", settings, *built)
        everything = (CHARGES * PICO, CHARGES * PICO)  # each charge once, none lost

        async def all_landed() -> bool:  # read from the store: parsing the file at each poll would hold up the loop
            return await store.spent(ACCOUNT, DAY) == everything

        try:
            await eventually(all_landed, "the rest of the outbox landed once serving")
        finally:
            await server.stop(1)
        assert waiting_ids(data_dir) == []
        assert await store.spent(ACCOUNT, DAY) == everything
        # The router gone may be taken for dead meanwhile: the reconciler charges its requests their holds, and each
        # charge landing later gives back what it did not cost. Each request's ledger sums to its charge.
        costs: dict[str, int] = {}
        for record in await ledger_records(store.redis):
            costs[record["request_id"]] = costs.get(record["request_id"], 0) + to_pico(Decimal(record["cost_usd"]))
        assert costs == dict.fromkeys(ids, PICO)
    finally:
        await store.close()
