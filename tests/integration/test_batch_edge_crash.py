"""An edge process SIGKILLed with a batch line in flight, and the batch's window over before another edge resumes
it: the line may have been admitted and charged, so it is sent again (the router's answer decides its result),
never reported as a line that was never sent."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmrouter import channels
from services.batches.store import PREFIX, results_key
from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from services.router.store import Account, AccountKeys, RedisStore, key_id
from tests.conftest import ROOT, ledger_records
from tests.fakes import Fault
from tests.integration.conftest import Chain, free_port, start_edge
from tests.integration.test_batches import small_file
from tests.integration.test_money_faults import RouterProcess
from tests.integration.test_provider_batches import finished

WINDOW_S = 3


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


@pytest.mark.parametrize("router_away_first", [False, True], ids=["resumed", "resumed-without-router-first"])
async def test_a_line_in_flight_when_the_edge_dies_is_not_reported_never_sent_after_the_window(
    chain: Chain, router_away_first: bool
) -> None:
    tenant, key = f"crashing-{secrets.token_hex(4)}", f"sk-crashing-{secrets.token_urlsafe(12)}"
    port = free_port()
    env = {
        "EDGE_PORT": str(port),
        "EDGE_ROUTER_ADDR": chain.router_addr,
        "EDGE_API_KEYS": key_line(tenant, key),
        "EDGE_BATCH_REDIS_URL": chain.redis_url,
        "EDGE_BATCH_CONCURRENCY": "1",  # the first line in flight, the second waiting behind it
        "EDGE_BATCH_WINDOW_S": str(WINDOW_S),
    }
    doomed = subprocess.Popen(
        [sys.executable, "-m", "services.edge"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = redis.from_url(chain.redis_url)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    seen = len(chain.budget.requests)
    try:
        await healthy(port)
        uploaded = await client.files.create(file=("doomed.jsonl", small_file("doomed", 2)), purpose="batch")
        chain.budget.enqueue(Fault.delay(2))  # the first line is at the upstream when the edge dies
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await reached_upstream(chain, seen)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        line = f"{batch.id}:doomed-0"
        ledger_cost = await charged(db, tenant, line)  # the router ran the line to its end: charged, its answer lost
        assert batch.expires_at is not None
        await asyncio.sleep(max(0.0, batch.expires_at + 0.5 - time.time()))  # the window is over
        await db.delete(f"{PREFIX}lease:{batch.id}")  # the dead edge's lease lapses (30 s), sooner
        await client.close()

        settings = EdgeSettings(**{k.removeprefix("EDGE_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
        if router_away_first:  # the next edge finds no router: the line, refused unsent, is still in doubt after
            away = settings.model_copy(update={"router_addr": f"127.0.0.1:{free_port()}"})
            edge, task, channel = await start_edge(away)
            deadline = time.monotonic() + 20
            while not await db.exists(f"{PREFIX}lease:{batch.id}"):  # it runs the batch
                assert time.monotonic() < deadline, "the batch was not resumed"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # its line refused (the router unreachable), parked
            edge.should_exit = True
            await task
            await channel.close()
            await db.delete(f"{PREFIX}lease:{batch.id}")
        edge, task, channel = await start_edge(settings)
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
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
        doomed.kill()
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
        batch_redis_url=chain.redis_url,
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
