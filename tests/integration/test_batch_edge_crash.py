"""An edge process SIGKILLed with a batch line in flight, and the batch's window over before another edge resumes
it: the line may have been admitted and charged, so it is sent again (the router's answer decides its result),
never reported as a line that was never sent. Resumed while the router still runs the line's first attempt, the line
is asked again until that attempt is charged, and its result has that charge; unless its window ends first."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI
from openai.types import Batch
from prometheus_client import REGISTRY
from pydantic import SecretStr

from llmrouter import channels
from llmrouter.redis_url import RedisUrl
from services.batches.store import PREFIX, results_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.router.store import Account, AccountKeys, RedisStore, key_id
from tests.conftest import ROOT, ledger_records
from tests.fakes import Fault
from tests.integration.conftest import Chain, free_port, served_edge, start_edge
from tests.integration.test_batches import small_file
from tests.integration.test_money_faults import RouterProcess
from tests.integration.test_provider_batches import finished, lines_of
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: edge processes SIGKILLed and started again

WINDOW_S = 3
TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
BATCH_COST = "llmrouter_edge_batch_cost_usd_total"
BATCH_COST_PENDING = "llmrouter_edge_batch_cost_pending_lines_total"


async def charged(db: redis.Redis, tenant: str, request_id: str) -> Decimal:
    """What the ledger charged the request id, once it has: the line's error file must say as much."""
    deadline = time.monotonic() + 20
    while not (
        records := [r for r in await ledger_records(db) if (r["tenant"], r["request_id"]) == (tenant, request_id)]
    ):
        assert time.monotonic() < deadline, f"{request_id} was never charged"
        await asyncio.sleep(0.1)
    return sum((Decimal(r["cost_usd"]) for r in records), Decimal(0))


async def recorded_cost(db: redis.Redis, batch_id: str, index: int) -> Decimal:
    """What the batch's result of line `index` cost, as its batch counts it (llmrouter_edge_batch_cost_usd_total)."""
    result = await db.hget(results_key(batch_id), str(index))
    assert result is not None, f"line {index} of {batch_id} has no result"
    return Decimal(json.loads(result)["cost"])


async def reached_upstream(chain: Chain, seen: int) -> None:
    """Returns once the upstream has had a request past the first `seen`: the batch's first line is there."""
    deadline = time.monotonic() + 20
    while len(chain.budget.requests) == seen:
        assert time.monotonic() < deadline, "the first line never reached the upstream"
        await asyncio.sleep(0.02)


async def healthy(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the edge did not start")


def edge_env(chain: Chain, tenant: str, key: str, **extra: str) -> dict[str, str]:
    """An edge's settings as its process reads them, for one tenant's key on the chain's router and Redis."""
    return {
        "EDGE_PORT": str(free_port()),
        "EDGE_ROUTER_ADDR": chain.router_addr,
        "EDGE_API_KEYS": key_line(tenant, key),
        "EDGE_BATCH_REDIS_URL": chain.redis_url,
        "EDGE_BATCH_CONCURRENCY": "1",  # the first line in flight, the second waiting behind it
        **extra,
    }


def settings_of(env: dict[str, str]) -> EdgeSettings:
    return EdgeSettings(**{k.removeprefix("EDGE_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


async def died_with_a_line_in_flight(chain: Chain, env: dict[str, str], key: str, delay_s: float) -> Batch:
    """A batch of two lines (doomed-0, doomed-1) created on an edge process of `env`, SIGKILLed once its first line
    is at the upstream, which answers it delay_s later: the router runs that line on, its answer lost with the edge."""
    port = int(env["EDGE_PORT"])
    doomed = subprocess.Popen(
        [sys.executable, "-m", "services.edge"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    seen = len(chain.budget.requests)
    try:
        await healthy(port)
        uploaded = await client.files.create(file=("doomed.jsonl", small_file("doomed", 2)), purpose="batch")
        chain.budget.enqueue(Fault.delay(delay_s))  # the first line is at the upstream when the edge dies
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await reached_upstream(chain, seen)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    finally:
        doomed.kill()
        await client.close()
    return batch


@asynccontextmanager
async def next_edge(env: dict[str, str], key: str) -> AsyncIterator[AsyncOpenAI]:
    """An edge in this process with the dead one's settings, for the block: a client of its API."""
    async with (
        served_edge(settings_of(env)) as base_url,
        AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client,
    ):
        yield client


def batch_cost_counted() -> float:
    return REGISTRY.get_sample_value(BATCH_COST) or 0.0


def refused_as_duplicates() -> float:
    """The chain's router's refusals of a request id used before (a line sent again while its first attempt's charge
    is open is refused so, then asked again): counted before the edge has the refusal."""
    labels = {"service": "router", "method": "Complete", "code": "ALREADY_EXISTS", "reason": "DUPLICATE_REQUEST"}
    return REGISTRY.get_sample_value("llmrouter_grpc_requests_total", labels) or 0.0


@pytest.mark.parametrize("router_away_first", [False, True], ids=["resumed", "resumed-without-router-first"])
async def test_a_line_in_flight_when_the_edge_dies_is_not_reported_never_sent_after_the_window(
    chain: Chain, router_away_first: bool
) -> None:
    tenant, key = f"crashing-{secrets.token_hex(4)}", f"sk-crashing-{secrets.token_urlsafe(12)}"
    env = edge_env(chain, tenant, key, EDGE_BATCH_WINDOW_S=str(WINDOW_S))
    db = redis.from_url(chain.redis_url)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{env['EDGE_PORT']}/v1", api_key=key, max_retries=0)
    try:
        batch = await died_with_a_line_in_flight(chain, env, key, delay_s=2)
        line = f"{batch.id}:doomed-0"
        ledger_cost = await charged(db, tenant, line)  # the router ran the line to its end: charged, its answer lost
        assert batch.expires_at is not None
        await asyncio.sleep(max(0.0, batch.expires_at + 0.5 - time.time()))  # the window is over
        await db.delete(f"{PREFIX}lease:{batch.id}")  # the dead edge's lease lapses (30 s), sooner

        settings = settings_of(env)
        if router_away_first:  # the next edge finds no router: the line, refused unsent, is still in doubt after
            away = settings.model_copy(update={"router_addr": f"127.0.0.1:{free_port()}"})
            edge, task, channel = await start_edge(away)
            deadline = time.monotonic() + 20
            while not await db.exists(f"{PREFIX}lease:{batch.id}"):  # it runs the batch
                assert time.monotonic() < deadline, "the batch was not resumed"
                await asyncio.sleep(0.05)
            # Its line sent, to a router out of reach (the runner is the channel's only user): refused, parked.
            await eventually(lambda: channel.get_state() == TRANSIENT_FAILURE, "the line was sent to no router")
            edge.should_exit = True
            await task
            await channel.close()
            await db.delete(f"{PREFIX}lease:{batch.id}")
        edge, task, channel = await start_edge(settings)
        try:
            batch = await finished(client, batch.id, timeout_s=30)
            errors = [json.loads(e) for e in (await client.files.content(batch.error_file_id)).text.splitlines()]
            output = (await client.files.content(batch.output_file_id)).text if batch.output_file_id else ""
        finally:
            edge.should_exit = True
            await task
            await channel.close()
        ledger = [r for r in await ledger_records(db) if r["tenant"] == tenant]
        line_cost = await recorded_cost(db, batch.id, 0)
    finally:
        await client.close()
        await db.aclose()

    assert batch.status == "expired"
    by_line = {e["custom_id"]: e for e in errors}
    assert by_line["doomed-1"]["error"]["code"] == "batch_expired"  # never sent: failed, as OpenAI reports it
    # The line in flight was admitted and charged by the router: sent again, it is refused as a duplicate, with the
    # request id the ledger has it under and what the ledger charged it (not 0), counted in the batch's cost; never
    # reported as never sent.
    in_doubt = by_line["doomed-0"]
    assert in_doubt["error"] is None and in_doubt["response"]["status_code"] == 409, in_doubt
    body = in_doubt["response"]["body"]
    assert body["error"]["code"] == "duplicate_request"
    assert ledger_cost > 0 and Decimal(body["x_router"]["cost_usd"]) == ledger_cost, (body, ledger_cost)
    assert line_cost == ledger_cost
    assert output == ""
    assert [r["request_id"] for r in ledger] == [line]


@pytest.mark.parametrize("restarted", [False, True], ids=["resumed", "resumed-twice"])
async def test_a_line_resent_while_its_first_attempt_runs_has_what_that_attempt_was_charged(
    chain: Chain, restarted: bool
) -> None:
    """The next edge resumes the batch at once, the router still running the line's first attempt: refused as a
    duplicate whose charge is pending, the line is asked again (not written at cost 0) until that attempt is charged;
    its result then has that charge, counted once in the batch's cost. `restarted`: the edge asking stops meanwhile,
    and another resumes the batch, the line still in doubt."""
    tenant, key = f"pending-{secrets.token_hex(4)}", f"sk-pending-{secrets.token_urlsafe(12)}"
    env = edge_env(chain, tenant, key)  # a day's window
    db = redis.from_url(chain.redis_url)
    counted = batch_cost_counted()  # edges in this process count here: the next two, not the dead one
    try:
        batch = await died_with_a_line_in_flight(chain, env, key, delay_s=5)
        await db.delete(f"{PREFIX}lease:{batch.id}")  # the dead edge's lease lapses (30 s), sooner
        if restarted:
            refused = refused_as_duplicates()
            async with next_edge(env, key):
                await eventually(lambda: refused_as_duplicates() >= refused + 2, "the line asked again while pending")
                assert await db.hget(results_key(batch.id), "0") is None  # not written while its charge is open
        async with next_edge(env, key) as client:
            batch = await finished(client, batch.id, timeout_s=30)
            errors = await lines_of(client, batch.error_file_id)
            output = await lines_of(client, batch.output_file_id)
        ledger = [r for r in await ledger_records(db) if r["tenant"] == tenant]
        line_cost = await recorded_cost(db, batch.id, 0)
    finally:
        await db.aclose()
    counted = batch_cost_counted() - counted

    assert batch.status == "completed", batch
    assert set(errors) == {"doomed-0"} and set(output) == {"doomed-1"}, (errors, output)
    response = errors["doomed-0"]["response"]
    assert response["status_code"] == 409 and response["body"]["error"]["code"] == "duplicate_request", response
    told = response["body"]["x_router"]
    assert "cost_pending" not in told and "held_usd" not in told, told
    # Each line ran once (the first attempt's answer lost with its edge), and the line has what the ledger charged it.
    by_id = {r["request_id"]: Decimal(r["cost_usd"]) for r in ledger}
    assert sorted(by_id) == [f"{batch.id}:doomed-0", f"{batch.id}:doomed-1"] and len(ledger) == 2, ledger
    assert by_id[f"{batch.id}:doomed-0"] > 0 and Decimal(told["cost_usd"]) == by_id[f"{batch.id}:doomed-0"], told
    assert line_cost == by_id[f"{batch.id}:doomed-0"]
    # Counted once in the batch's cost, with the other line's: the ledger's total for the batch.
    assert counted == pytest.approx(float(sum(by_id.values())), rel=1e-9, abs=1e-12), (counted, by_id)


async def test_a_line_whose_charge_is_still_pending_when_the_window_ends_is_written_pending(chain: Chain) -> None:
    """The router runs the line's first attempt past the batch's window: asked again meanwhile (nothing written), the
    line is written when the window ends, as its refusal then says (pending, at its hold: x_router.cost_pending and
    held_usd, counted pending, not at 0), not sent until its charge settles; the batch ends `expired` with the charge
    still open, which the ledger has once that attempt ends."""
    window_s, delay_s = 5, 14  # the line sent again within the window, and still running a few seconds past it
    tenant, key = f"pending-late-{secrets.token_hex(4)}", f"sk-pending-late-{secrets.token_urlsafe(12)}"
    env = edge_env(chain, tenant, key, EDGE_BATCH_WINDOW_S=str(window_s))
    db = redis.from_url(chain.redis_url)
    store = RedisStore(chain.redis_url)
    counted, pending = batch_cost_counted(), REGISTRY.get_sample_value(BATCH_COST_PENDING) or 0.0
    try:
        batch = await died_with_a_line_in_flight(chain, env, key, delay_s=delay_s)
        line = f"{batch.id}:doomed-0"
        await db.delete(f"{PREFIX}lease:{batch.id}")  # the dead edge's lease lapses (30 s), sooner
        async with next_edge(env, key) as client:
            assert batch.expires_at is not None
            while time.time() < batch.expires_at - 0.5:  # sent again within the window, never written there
                assert await db.hget(results_key(batch.id), "0") is None, "written while its charge was open"
                await asyncio.sleep(0.1)
            batch = await finished(client, batch.id, timeout_s=20)
            errors = await lines_of(client, batch.error_file_id)
        # Ended without waiting for the charge: still open, the first attempt still at the upstream.
        assert await store.pending_charge(Account(tenant, key_id(key)), line) is not None, "its charge was settled"
        line_result = json.loads(await db.hget(results_key(batch.id), "0") or b"{}")
        ledger_cost = await charged(db, tenant, line)  # once the first attempt ends
    finally:
        await store.close()
        await db.aclose()
    counted = batch_cost_counted() - counted
    pending = (REGISTRY.get_sample_value(BATCH_COST_PENDING) or 0.0) - pending

    assert batch.status == "expired", batch
    assert errors["doomed-1"]["error"]["code"] == "batch_expired"  # never sent: the batch waited on its first line
    response = errors["doomed-0"]["response"]
    assert response["status_code"] == 409 and response["body"]["error"]["code"] == "duplicate_request", response
    told = response["body"]["x_router"]
    assert told["cost_pending"] is True and "cost_usd" not in told, told
    assert Decimal(told["held_usd"]) >= ledger_cost > 0, (told, ledger_cost)  # charged its cost, within its hold
    # What it costs is in the ledger, not yet known as the batch ended: counted pending, not at 0.
    assert (line_result["cost"], line_result["cost_pending"]) == ("", True), line_result
    assert (counted, pending) == (0, 1)
    assert (batch.model_extra or {})["x_router"] == {"cost_pending_lines": 1}


async def test_a_line_in_flight_when_the_router_dies_is_not_reported_never_sent_after_the_window(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router process is SIGKILLed with a line admitted and at the upstream: the edge's call breaks mid-way
    (UNAVAILABLE, no answer), which may follow an admission. The window ends before a router is back: the line is
    sent again then, refused as a duplicate (the reconciler charges its hold), never reported as never sent."""
    # The edge's channel tries to reconnect within half a second, not gRPC's back-off (1 s, 1.6 s, 2.6 s... apart):
    # with the router down for seconds, that back-off alone held the line's resending up to 4 s past its return.
    reconnect = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 500)]
    monkeypatch.setattr(channels, "CHANNEL_OPTIONS", [*channels.CHANNEL_OPTIONS, *reconnect])
    tenant, key = f"router-dies-{secrets.token_hex(4)}", f"sk-router-dies-{secrets.token_urlsafe(12)}"
    router_port = free_port()
    env = {"ROUTER_PORT": str(router_port), "ROUTER_REDIS_URL": chain.redis_url}
    doomed = RouterProcess(chain, tmp_path, **env)
    await doomed.ready()
    settings = EdgeSettings(
        port=free_port(),
        router_addr=f"127.0.0.1:{router_port}",
        api_keys=SecretStr(key_line(tenant, key)),
        batch_redis_url=RedisUrl(chain.redis_url),
        batch_concurrency=1,
        batch_window_s=WINDOW_S,
    )
    edge, task, channel = await start_edge(settings)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key, max_retries=0)
    seen = len(chain.budget.requests)
    revived: RouterProcess | None = None
    try:
        uploaded = await client.files.create(file=("doomed.jsonl", small_file("doomed", 2)), purpose="batch")
        chain.budget.enqueue(Fault.delay(3))
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await reached_upstream(chain, seen)
        doomed.kill()
        assert batch.expires_at is not None
        await asyncio.sleep(max(0.0, batch.expires_at + 0.5 - time.time()))  # the window ends with no router
        revived = RouterProcess(chain, tmp_path, **env)
        await revived.ready()
        batch = await finished(client, batch.id, timeout_s=30)
        errors = [json.loads(e) for e in (await client.files.content(batch.error_file_id)).text.splitlines()]
        # The dead router's charge is open, held, until the reconciler settles it at its hold (within the heartbeat
        # TTLs, 15 s and more: here at once, by the reconciler's own settlement of the record it sweeps).
        line = f"{batch.id}:doomed-0"
        store = RedisStore(chain.redis_url)
        try:
            account = Account(tenant, key_id(key))
            open_charge = await store.pending_charge(account, line)
            assert open_charge is not None, "the line's charge is not open"
            assert await store.settle_swept(await store.redis.hget(AccountKeys.of(account).pending, open_charge.field))
        finally:
            await store.close()
        db = redis.from_url(chain.redis_url)
        try:
            ledger_cost = await charged(db, tenant, line)
        finally:
            await db.aclose()
    finally:
        await client.close()
        edge.should_exit = True
        await task
        await channel.close()
        doomed.kill()
        if revived is not None:
            revived.kill()
    by_line = {e["custom_id"]: e for e in errors}
    assert batch.status == "expired" and by_line["doomed-1"]["error"]["code"] == "batch_expired"
    in_doubt = by_line["doomed-0"]
    assert in_doubt["error"] is None and in_doubt["response"]["status_code"] == 409, in_doubt
    body = in_doubt["response"]["body"]
    assert body["error"]["code"] == "duplicate_request"
    # Sent again while its charge was open: pending, at the hold the reconciler then charged, not a cost of 0.
    assert body["x_router"]["cost_pending"] is True and "cost_usd" not in body["x_router"], body
    assert ledger_cost > 0 and Decimal(body["x_router"]["held_usd"]) == ledger_cost, (body, ledger_cost)
