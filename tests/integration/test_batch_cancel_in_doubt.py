"""A batch cancelled after its edge died with a line in flight: the router admitted the line and charged it, its
result lost with the edge (in doubt). The run that ends the cancelled batch must not leave it out of the files, the
ledger charging a line the batch's files do not have: the lines in flight finish on a cancel, and a line in doubt was
in flight, so it is sent again (the router's answer decides its result) as a batch past its window sends it. A line
never sent stays unsent. An edge process SIGKILLed on the chain's router and Redis; the next edge in process."""

from __future__ import annotations

import secrets
from decimal import Decimal

import pytest
import redis.asyncio as redis

from services.batches import runner
from services.batches.store import PREFIX, results_key, sent_key
from services.router.store import Account, RedisStore, key_id
from tests.conftest import ledger_records
from tests.integration.conftest import Chain
from tests.integration.test_batch_cost_pending import counted
from tests.integration.test_batch_edge_crash import (
    charged,
    died_with_a_line_in_flight,
    edge_env,
    next_edge,
    recorded_cost,
    refused_as_duplicates,
)
from tests.integration.test_batch_revoked_key import created_where_no_line_goes_out, edge_keyed
from tests.integration.test_provider_batches import finished, lines_of
from tests.waiting import eventually

pytestmark = pytest.mark.heavy  # make test-heavy: an edge process SIGKILLed

COST, COST_PENDING = "llmrouter_edge_batch_cost_usd_total", "llmrouter_edge_batch_cost_pending_lines_total"


async def test_a_line_in_flight_when_the_edge_died_is_in_the_files_of_its_cancelled_batch(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "LEASE_S", 2)  # the next edge adopts the cancelled batch within a second
    tenant, key = f"cancel-doubt-{secrets.token_hex(4)}", f"sk-cancel-doubt-{secrets.token_urlsafe(12)}"
    env = edge_env(chain, tenant, key)
    db = redis.from_url(chain.redis_url)
    try:
        batch = await died_with_a_line_in_flight(chain, env, key, delay_s=2)
        ledger_cost = await charged(db, tenant, f"{batch.id}:doomed-0")  # the router ran it to its end

        # The dead edge's lease still holds the batch as the next edge starts and it is cancelled.
        async with next_edge(env, key) as client:
            await client.batches.cancel(batch.id)
            await db.delete(f"{PREFIX}lease:{batch.id}")  # the dead edge's lease lapses (30 s), sooner
            batch = await finished(client, batch.id, timeout_s=30)
            output = await lines_of(client, batch.output_file_id)
            errors = await lines_of(client, batch.error_file_id)
        ledger = [r for r in await ledger_records(db) if r["tenant"] == tenant]
        line_cost = await recorded_cost(db, batch.id, 0)
    finally:
        await db.aclose()

    assert batch.status == "cancelled", batch
    # The line in flight, charged, is in the files (the router refuses it again as a duplicate: it ran); the line
    # never sent is not, and nothing of it is charged.
    assert [r["request_id"] for r in ledger] == [f"{batch.id}:doomed-0"]
    assert not output and set(errors) == {"doomed-0"}, (output, errors)
    in_doubt = errors["doomed-0"]["response"]
    assert in_doubt["status_code"] == 409 and in_doubt["body"]["error"]["code"] == "duplicate_request", in_doubt
    # At what the ledger charged it, not 0, and counted so in the batch's cost.
    assert ledger_cost > 0 and Decimal(in_doubt["body"]["x_router"]["cost_usd"]) == ledger_cost == line_cost, in_doubt
    assert batch.request_counts is not None and batch.request_counts.failed == 1


async def test_a_line_whose_charge_is_pending_when_its_batch_is_cancelled_is_written_pending(chain: Chain) -> None:
    """Resumed while the router still runs the line's first attempt, the line is asked again until that attempt is
    charged; but not past a cancel: sent once more then, it is written as its refusal says (pending, at its hold), and
    the batch ends `cancelled` at once, its charge still open, not when that charge settles."""
    tenant, key = f"cancel-pending-{secrets.token_hex(4)}", f"sk-cancel-pending-{secrets.token_urlsafe(12)}"
    env = edge_env(chain, tenant, key)
    db = redis.from_url(chain.redis_url)
    store = RedisStore(chain.redis_url)
    try:
        batch = await died_with_a_line_in_flight(chain, env, key, delay_s=10)
        line = f"{batch.id}:doomed-0"
        await db.delete(f"{PREFIX}lease:{batch.id}")  # the dead edge's lease lapses (30 s), sooner
        refused = refused_as_duplicates()
        async with next_edge(env, key) as client:
            await eventually(lambda: refused_as_duplicates() >= refused + 2, "the line asked again while pending")
            assert await db.hget(results_key(batch.id), "0") is None, "written while its charge was open"
            await client.batches.cancel(batch.id)
            batch = await finished(client, batch.id, timeout_s=20)
            errors = await lines_of(client, batch.error_file_id)
            output = await lines_of(client, batch.output_file_id)
        assert await store.pending_charge(Account(tenant, key_id(key)), line) is not None, "its charge was settled"
        ledger_cost = await charged(db, tenant, line)  # once the first attempt ends
    finally:
        await store.close()
        await db.aclose()

    assert batch.status == "cancelled", batch
    assert not output and set(errors) == {"doomed-0"}, (output, errors)  # the line never sent is not in the files
    response = errors["doomed-0"]["response"]
    assert response["status_code"] == 409 and response["body"]["error"]["code"] == "duplicate_request", response
    told = response["body"]["x_router"]
    assert told["cost_pending"] is True and "cost_usd" not in told, told
    assert Decimal(told["held_usd"]) >= ledger_cost > 0, (told, ledger_cost)


async def test_a_revoked_keys_line_in_doubt_is_in_the_files_of_its_cancelled_batch(chain: Chain) -> None:
    """Ended by an edge that does not serve its key, a cancelled batch sends its line in doubt no more than a batch
    past its window does (a line that never reached the router would run on the revoked key): its outcome is unknown,
    and the error file says so, rather than leaving out a line the ledger may have charged."""
    tenant = f"revoked-{secrets.token_hex(4)}"
    old_key, new_key = f"sk-old-{secrets.token_urlsafe(12)}", f"sk-new-{secrets.token_urlsafe(12)}"
    db = redis.from_url(chain.redis_url)
    try:
        batch = await created_where_no_line_goes_out(chain, tenant, old_key)
        await db.delete(f"{PREFIX}lease:{batch.id}")
        await db.hset(sent_key(batch.id), "0", "sent")  # its first line sent, its edge gone before its result
        cost, pending = counted(COST), counted(COST_PENDING)
        async with edge_keyed(chain, tenant, new_key) as new:
            await new.batches.cancel(batch.id)
            ended = await finished(new, batch.id, timeout_s=20)
            errors = await lines_of(new, ended.error_file_id)
        assert ended.status == "cancelled"
        # It may have been charged, by an amount the edge does not know: pending, not 0 in the edge's cost counter.
        assert (ended.model_extra or {})["x_router"] == {"cost_pending_lines": 1}
        assert (counted(COST), counted(COST_PENDING)) == (cost, pending + 1)
        assert {custom_id: e["error"]["code"] for custom_id, e in errors.items()} == {"revoked-0": "outcome_unknown"}
        # What happened: the batch was cancelled (its window never expired).
        assert errors["revoked-0"]["error"]["message"] == (
            "This request was sent before the batch was cancelled and its result was lost; it was not sent again, as "
            "the batch's API key is no longer served. Whether it ran, and what it cost, is in the ledger under its id."
        )
    finally:
        await db.aclose()
