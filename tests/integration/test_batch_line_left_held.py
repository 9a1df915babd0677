"""A batch line whose admission may have left its hold standing (a bug reading the store's reply, and a bug undoing
the admission), end to end: the real edge, router and providers service over Redis, the provider's Batch API a fake.
Its SubmitBatch failed whole (BATCH_BEING_SENT, its other lines withdrawn), the batch backing off for minutes; now the
line ends in the error file, its cost pending (at most its hold, which the reconciler charges as it lapses), counted
apart as pending lines are, never run, neither in the provider batch nor through Complete, and the other lines are
collected at once."""

from __future__ import annotations

from typing import Any

import pytest

from services.router.store import Account, Hold, RedisStore
from services.router.undoing import Undoing
from tests.integration.test_provider_batches import (
    BATCHED,
    Stack,
    batch_file,
    chat_calls,
    finished,
    lines_of,
    money,
    run_batch,
    serving,
    stack,
)

__all__ = ["stack"]  # the fixture, shared


def faulty(request_id: str) -> bool:
    return request_id.endswith(":req-1")


def bugs_admitting_and_undoing_the_faulty_line(monkeypatch: pytest.MonkeyPatch) -> None:
    admit, withdraw = RedisStore.admit, Undoing.withdraw

    async def held_then_a_bug(self: RedisStore, account: Account, allowance: Any, hold: Hold, *args: Any) -> Any:
        verdict = await admit(self, account, allowance, hold, *args)
        if faulty(hold.request_id):
            raise RuntimeError("a bug reading the store's reply")
        return verdict

    async def a_bug_undoing(self: Undoing, account: Account, hold: Hold) -> None:
        if faulty(hold.request_id):
            raise RuntimeError("a bug undoing the admission")
        await withdraw(self, account, hold)

    monkeypatch.setattr(RedisStore, "admit", held_then_a_bug)
    monkeypatch.setattr(Undoing, "withdraw", a_bug_undoing)


async def test_a_batch_line_whose_hold_may_stand_ends_pending_never_run(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    bugs_admitting_and_undoing_the_faulty_line(monkeypatch)
    async with serving(stack) as client:
        batch_id = await run_batch(client, batch_file([(BATCHED, f"line {i}") for i in range(3)]))
        batch = await finished(client, batch_id, timeout_s=30)
        output = await lines_of(client, batch.output_file_id)
        errors = await lines_of(client, batch.error_file_id)
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 2, 1)
    assert sorted(output) == ["req-0", "req-2"] and sorted(errors) == ["req-1"]
    body = errors["req-1"]["response"]["body"]
    assert body["x_router"] == {"cost_pending": True}, body  # not its hold, nor 0
    assert body["error"]["code"] == "provider_batch_outcome_unknown"
    assert (batch.model_extra or {})["x_router"] == {"cost_pending_lines": 1}
    # Never run: not in the provider batch, not through Complete.
    assert sorted(stack.upstream.batches.answered) == [f"{batch_id}:req-0", f"{batch_id}:req-2"]
    assert not chat_calls(stack.upstream)
    # Its hold stands, for the reconciler to charge as it lapses; the others were charged.
    charged, _, held, pending = await money(stack)
    assert [p.request_id for p in pending] == [f"{batch_id}:req-1"]
    assert held == pending[0].hold_pico
    assert sorted(charged) == [f"{batch_id}:req-0", f"{batch_id}:req-2"]
