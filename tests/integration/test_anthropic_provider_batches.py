"""Batch lines through Anthropic's Message Batches API, at its batch price: the official OpenAI SDK's batch runs in
the real edge, router and providers services against a fake Anthropic speaking the exact Message Batches wire
format. Lines routed to a batch-priced Anthropic model go up as one Message Batch and are charged the batch price
from the usage it reports; lines of a model without one run realtime; errored, expired and canceled lines are
released; usage that is no count is held to the line's worst case; a batch whose creation's outcome is unknown is
held, never run again realtime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.registry import load_registry
from services.providers.gateways.anthropic_batch import custom_id
from services.router.store import to_pico
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.server import Fault
from tests.integration.test_provider_batches import (
    Stack,
    by_cue,
    costs_of,
    ledger_by_id,
    money,
    open_stack,
    registry,
    run_to_end,
)

BATCHED, REALTIME = "claude-batch", "claude-realtime"


def anthropic_registry(base_url: str) -> dict[str, Any]:
    return registry(base_url, "anthropic", ("3.00", "15.00", "1.50", "7.50"), ("0.80", "4.00"), (BATCHED, REALTIME))


@pytest.fixture
async def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack[FakeAnthropic]]:
    monkeypatch.setenv("ANTHROPIC_KEY", "sk-ant-batches")
    with FakeAnthropic() as upstream:
        upstream.api_key = "sk-ant-batches"
        async with open_stack(upstream, anthropic_registry(upstream.base_url), tmp_path, redis_url) as opened:
            yield opened


def realtime_calls(upstream: FakeAnthropic) -> list[dict[str, Any]]:
    return [r.json for r in upstream.requests if r.path == "/v1/messages"]


def prompt(params: dict[str, Any]) -> str:
    return str(params["messages"][0]["content"][0]["text"])


async def test_lines_of_a_batch_priced_anthropic_model_go_through_message_batches_at_the_batch_price(
    stack: Stack[FakeAnthropic],
) -> None:
    upstream: FakeAnthropic = stack.upstream
    bodies = [(BATCHED if i % 3 else REALTIME, f"line {i}") for i in range(9)]
    batch, output, errors = await run_to_end(stack, bodies)

    assert batch.status == "completed" and not errors, errors
    assert batch.request_counts.completed == 9 and sorted(output) == sorted(f"req-{i}" for i in range(9))
    # The batch-priced lines went up as one Message Batch, never realtime; the others realtime.
    assert len(upstream.batches.batches) == 1
    deferred = [f"{batch.id}:req-{i}" for i in range(9) if i % 3]
    assert sorted(upstream.batches.answered) == sorted(custom_id(request_id) for request_id in deferred)
    assert {c["model"] for c in realtime_calls(upstream)} == {REALTIME} and len(realtime_calls(upstream)) == 3

    models = load_registry(stack.registry_path)
    batched, realtime = models.get(BATCHED), models.get(REALTIME)
    assert batched is not None and realtime is not None
    batch_priced = models.batch_priced(batched)
    assert batch_priced is not None
    prices = {BATCHED: batch_priced, REALTIME: realtime}
    for name, entry in output.items():
        body = entry["response"]["body"]
        tokens = (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        assert all(t > 0 for t in tokens), name
        expected = prices[body["model"]].cost_usd(*tokens)
        assert Decimal(body["x_router"]["cost_usd"]) == expected, name
        if body["model"] == BATCHED:  # the batch price is half the realtime one here
            assert expected * 2 == batched.cost_usd(*tokens)
            assert entry["response"]["request_id"] in deferred
    charged, spend, held, pending = await money(stack)
    costs = costs_of(output)
    assert charged == costs  # each line charged once, at what its output says
    assert spend == sum(to_pico(c) for c in costs.values()) and held == 0 and not pending


async def test_errored_expired_and_canceled_lines_are_released_not_charged(stack: Stack[FakeAnthropic]) -> None:
    upstream: FakeAnthropic = stack.upstream
    fates = {"EXPIRE": "expire", "REFUSE": "error", "CANCEL": "cancel"}
    upstream.batches.fate = lambda params: next((fate for cue, fate in fates.items() if cue in prompt(params)), "ok")
    cues = ["ok", "EXPIRE", "ok", "REFUSE", "CANCEL", "ok"]
    batch, output, errors = await run_to_end(stack, [(BATCHED, cue) for cue in cues])

    assert set(by_cue(cues, output).values()) == {"ok"} and len(output) == 3
    assert sorted(by_cue(cues, errors).values()) == ["CANCEL", "EXPIRE", "REFUSE"]
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 3
    assert all(e["response"]["status_code"] == 502 for e in errors.values())
    assert "processing window expired" in errors["req-1"]["response"]["body"]["error"]["message"]
    assert "fake refusal" not in errors["req-3"]["response"]["body"]["error"]["message"]
    charged, spend, held, pending = await money(stack)
    costs = costs_of(output)
    failed = {e["response"]["request_id"] for e in errors.values()}
    assert charged == {**costs, **dict.fromkeys(failed, Decimal(0))}  # the others were released, on record at nothing
    assert spend == sum(to_pico(c) for c in costs.values()) and held == 0 and not pending


async def test_usage_anthropic_reports_that_is_no_count_is_never_charged_beyond_the_hold(
    stack: Stack[FakeAnthropic],
) -> None:
    upstream: FakeAnthropic = stack.upstream
    usages: dict[str, dict[str, Any]] = {
        "NEGATIVE": {"input_tokens": -5_000_000, "output_tokens": -1_000},
        "HUGE": {"input_tokens": 10**9, "output_tokens": 10**9},
        "OVERFLOW": {"input_tokens": 2**70, "output_tokens": 3},
        "BOOL": {"input_tokens": True, "output_tokens": True},
        "CACHE": {"input_tokens": 5, "cache_read_input_tokens": -1_000_000, "output_tokens": 5},
    }
    message = upstream.batches.message

    def hostile(params: dict[str, Any]) -> dict[str, Any]:
        reply = message(params)
        for cue, usage in usages.items():
            if cue in prompt(params):
                reply["usage"] = usage
        return reply

    upstream.batches.message = hostile
    cues = ["ok", *usages, "ok"]
    batch, output, errors = await run_to_end(stack, [(BATCHED, cue) for cue in cues])

    assert batch.status == "completed" and set(by_cue(cues, output).values()) == {"ok"}, errors
    assert set(by_cue(cues, errors).values()) == set(usages)
    ledger = await ledger_by_id(stack)
    charged, spend, held, pending = await money(stack)
    assert all(cost >= 0 for cost in charged.values()) and spend == sum(to_pico(c) for c in charged.values())
    assert held == 0 and not pending and len(charged) == len(cues)
    for entry in errors.values():  # the usage is not believed: the line's worst case, no more
        record = ledger[entry["response"]["request_id"]]
        assert record["outcome"] == "batch_unknown" and Decimal(record["cost_usd"]) > 0, record
        # At most: 8192 tokens of prompt at 1.50 and 4096 written at 7.50 per 1M, under 5 cents.
        assert Decimal(record["cost_usd"]) < Decimal("0.05"), record
    assert {ledger[i]["outcome"] for i in costs_of(output)} == {"ok"} and charged.items() >= costs_of(output).items()


async def test_a_message_batch_whose_creation_outcome_is_unknown_is_held_never_run_realtime(
    stack: Stack[FakeAnthropic],
) -> None:
    upstream: FakeAnthropic = stack.upstream
    upstream.enqueue(Fault.reset())  # the creation's reply is lost: the batch may run
    batch, output, errors = await run_to_end(stack, [(BATCHED, f"line {i}") for i in range(3)])

    assert batch.status == "completed" and not output and len(errors) == 3
    assert all(e["response"]["body"]["error"]["code"] == "provider_batch_outcome_unknown" for e in errors.values())
    assert not realtime_calls(upstream)  # never sent again realtime: the provider may be running them
    charged, spend, held, pending = await money(stack)
    assert not charged and spend == 0  # held at the batch price until the provider's window is over
    assert len(pending) == 3 and held == sum(p.hold_pico for p in pending) > 0
    assert all(p.until > time.time() + 24 * 3600 for p in pending)
