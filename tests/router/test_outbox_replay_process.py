"""A router process (`python -m services.router`, as the chart runs it) started on an outbox longer than its startup
round's replay (upkeep.REPLAY_SLICE_S, the real 10 s) says READY (its gRPC health served: the chart's startupProbe)
before the outbox has landed, lands the rest once serving, and, SIGKILLed mid-way (as the kubelet kills a container),
has left on disk only what had not landed: the router started again on it goes on from there, and every charge lands
once. Before, the first round replayed the whole outbox before serving and the file was rewritten only as a replay
ended: killed at the probe's budget, the next start replayed the same entries again. A real Redis, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from services.router.outbox import Outbox
from services.router.store import RedisStore, period_id, to_pico
from tests.conftest import ROOT, ledger_records
from tests.integration.conftest import free_ports
from tests.router.test_admission import ACCOUNT
from tests.router.test_outbox_replay_bounded import PICO, outbox_left_by_an_outage, waiting_ids
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: an outbox of tens of thousands of charges, a router process killed

DAY = period_id("day")
CHARGES = 60_000  # 20 s and more of replay on loopback: twice the startup round's bound
STARTUP_BUDGET_S = 120  # the chart's startupProbe: 60 x 2 s


def start_router(data_dir: Path, redis_url: str) -> subprocess.Popen[str]:
    port, metrics_port = free_ports(2)
    settings = {
        "ROUTER_PORT": str(port),
        "ROUTER_METRICS_PORT": str(metrics_port),
        "ROUTER_REDIS_URL": redis_url,
        "ROUTER_DATA_DIR": str(data_dir),
        "ROUTER_CLASSIFIER_ADDR": "127.0.0.1:1",  # never called: no request is sent
        "ROUTER_PROVIDERS_ADDR": "127.0.0.1:1",
        "ROUTER_LEDGER_SQL_SINK": "false",  # the ledger's streams read here, as the charges left them
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.router"],
        cwd=ROOT,
        env={**os.environ, **settings},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=STARTUP_BUDGET_S)
    assert line.startswith("READY router"), f"router did not start: {line!r}"


def killed(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


async def test_a_router_killed_mid_replay_leaves_only_what_had_not_landed(redis_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = RedisStore(redis_url)
    processes = []
    try:
        ids = await outbox_left_by_an_outage(store, data_dir, CHARGES)
        path = Outbox(data_dir).path
        size = path.stat().st_size
        began = time.monotonic()
        processes.append(first := start_router(data_dir, redis_url))
        await ready(first)
        assert time.monotonic() - began < STARTUP_BUDGET_S / 2
        spent, _ = await store.spent(ACCOUNT, DAY)
        assert 0 < spent < CHARGES * PICO, "the whole outbox was replayed before the router served"
        # A round once serving lands its slice and drops it from the file; killed after that, mid-way through the next.
        await eventually(lambda: path.stat().st_size < size * 3 // 4, "a slice landed once serving", timeout_s=60)
        killed(first)
        spent, _ = await store.spent(ACCOUNT, DAY)
        left = waiting_ids(data_dir)
        assert 0 < len(left) < CHARGES * 3 // 4, "the router's progress was not on disk as it was killed"
        assert left == ids[CHARGES - len(left) :]  # what had landed is off the file: not sent again
        assert spent >= (CHARGES - len(left)) * PICO

        processes.append(second := start_router(data_dir, redis_url))
        await ready(second)

        async def all_landed() -> bool:
            return await store.spent(ACCOUNT, DAY) == (CHARGES * PICO, CHARGES * PICO)

        await eventually(all_landed, "the router started again landed the rest", timeout_s=120)
        # Landed in the store before its replay drops the slice from the file (its rewrite, fsynced, then renamed in):
        # killed in between, the router started next would land them again, once each by their charge ids.
        await eventually(lambda: waiting_ids(data_dir) == [], "the last slice left the file")
        killed(second)
        # Each request's ledger sums to its charge: none charged twice, none lost (the holds of the routers killed
        # charged by the reconciler meanwhile, their difference given back as the charge landed).
        costs: dict[str, int] = {}
        for record in await ledger_records(store.redis):
            costs[record["request_id"]] = costs.get(record["request_id"], 0) + to_pico(Decimal(record["cost_usd"]))
        assert costs == dict.fromkeys(ids, PICO)
    finally:
        for process in processes:
            killed(process)
        await store.close()
