"""A provider batch line is charged at the batch prices it was admitted with, as every other request is charged at
its admission's prices (README): its hold was sized at them, and a price change within the provider's 24 h window
must not change what a line sent before it costs. The collect priced a line at the registry's batch price of the
collect's moment instead (within the hold). A line admitted by a router of the version before (no prices beside its
pending charge) is still charged, at the collect's prices, as that version did. The router's servicer over Redis; a
real providers gRPC server whose one provider (a Batch API) answers every line with the same usage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.registry import Registry
from llmrouter.v1 import router_pb2
from services.router.servicer import RouterServicer
from services.router.store import (
    Account,
    AccountKeys,
    Allowance,
    Hold,
    Prices,
    RedisStore,
    Store,
    pending_field,
    period_id,
    to_pico,
)
from tests.conftest import ledger_records
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, USAGE, BatchProvider, send_line

COLLECT = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])


def batch_cost(registry: Registry) -> Decimal:
    priced = registry.get("strong").at_batch_price()  # type: ignore[union-attr]
    return priced.cost_usd(USAGE.input_tokens, USAGE.output_tokens)  # type: ignore[union-attr]


def repriced() -> Registry:
    """The registry with the strong model's batch prices raised by half (the line's charge stays within its hold)."""
    raw = REGISTRY.model_dump(mode="json", exclude_none=True)
    for model in raw["models"]:
        if model["name"] == "strong":
            model["batch_input_usd_per_mtok"], model["batch_output_usd_per_mtok"] = "3.75", "11.25"
    return Registry.model_validate(raw)


@pytest.fixture
async def router(redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[tuple[RouterServicer, RedisStore, Path]]:
    async with router_servicer(tmp_path, redis_store, BatchProvider(), REGISTRY) as servicer:
        yield servicer, redis_store, tmp_path / "models.yaml"


def without_batch_price() -> Registry:
    """The registry with the strong model's batch price gone (its provider stopped offering it, say)."""
    raw = REGISTRY.model_dump(mode="json", exclude_none=True)
    for model in raw["models"]:
        if model["name"] == "strong":
            del model["batch_input_usd_per_mtok"], model["batch_output_usd_per_mtok"]
    return Registry.model_validate(raw)


def reprice(servicer: RouterServicer, registry_path: Path, registry: Registry | None = None) -> None:
    registry = registry or repriced()
    registry_path.write_text(yaml.safe_dump(registry.model_dump(mode="json", exclude_none=True)))
    assert servicer.deferred.registry.check()  # type: ignore[attr-defined]  # the router reloads it


async def test_a_line_is_charged_at_the_batch_prices_it_was_admitted_with(
    router: tuple[RouterServicer, RedisStore, Path],
) -> None:
    servicer, store, registry_path = router
    with acting_as(TENANT_CALLER):
        sent = await send_line(servicer)
        assert sent.deferred and sent.provider_batch_id == "pbatch-1"
        reprice(servicer, registry_path)  # a price change within the provider's window
        collected = await servicer.CollectBatch(COLLECT, NoDeadline())
    admitted = batch_cost(REGISTRY)
    assert batch_cost(repriced()) == admitted * Decimal("1.5")
    (line,) = collected.lines
    assert line.succeeded and Decimal(line.response.cost_usd) == admitted
    assert (await store.spent(ACCOUNT, period_id("day")))[0] == to_pico(admitted)
    (record,) = [r for r in await ledger_records(store.redis) if r["tenant"] == "acme"]
    assert Decimal(record["cost_usd"]) == admitted
    # Nothing is left beside the settled charge.
    assert not await store.redis.hexists(AccountKeys.of(ACCOUNT).prices, pending_field(ACCOUNT, "line-1"))


async def test_a_line_admitted_without_prices_by_the_version_before_is_charged_at_the_collects_prices(
    router: tuple[RouterServicer, RedisStore, Path],
) -> None:
    servicer, store, registry_path = router
    with acting_as(TENANT_CALLER):
        await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
        keys, field = AccountKeys.of(ACCOUNT), pending_field(ACCOUNT, "line-1")
        assert await store.redis.hdel(keys.prices, field) == 1  # as a router of the version before admitted it
        pending = await store.pending_charge(ACCOUNT, "line-1")
        assert pending is not None and pending.prices is None
        reprice(servicer, registry_path)
        collected = await servicer.CollectBatch(COLLECT, NoDeadline())
    assert collected.lines[0].succeeded
    assert (await store.spent(ACCOUNT, period_id("day")))[0] == to_pico(batch_cost(repriced()))


async def test_a_line_whose_model_lost_its_batch_price_is_collected_at_the_prices_it_was_admitted_with(
    router: tuple[RouterServicer, RedisStore, Path],
) -> None:
    """The provider's Batch API ran the line: its collect was refused (NO_BATCH_PRICE) until its window's end, and the
    line then charged its whole hold, although the prices it was admitted at were kept beside its pending charge."""
    servicer, store, registry_path = router
    with acting_as(TENANT_CALLER):
        await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
        reprice(servicer, registry_path, without_batch_price())
        collected = await servicer.CollectBatch(COLLECT, NoDeadline())
    admitted = batch_cost(REGISTRY)
    (line,) = collected.lines
    assert collected.ended and line.succeeded and Decimal(line.response.cost_usd) == admitted
    assert (await store.spent(ACCOUNT, period_id("day")))[0] == to_pico(admitted)


async def test_a_line_without_prices_whose_model_lost_its_batch_price_waits_for_its_windows_end(
    router: tuple[RouterServicer, RedisStore, Path],
) -> None:
    """A line admitted by a router of the version before (no prices kept) has nothing to be charged at: its collect is
    refused, as before, and the line is charged its hold at its window's end."""
    servicer, store, registry_path = router
    with acting_as(TENANT_CALLER):
        await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())
        await store.redis.hdel(AccountKeys.of(ACCOUNT).prices, pending_field(ACCOUNT, "line-1"))
        reprice(servicer, registry_path, without_batch_price())
        with pytest.raises(ServiceError) as refused:
            await servicer.CollectBatch(COLLECT, NoDeadline())
    assert refused.value.reason == "NO_BATCH_PRICE"
    assert await store.pending_charge(ACCOUNT, "line-1") is not None


async def test_the_store_keeps_a_lines_prices_beside_its_pending_charge_until_it_settles(store: Store) -> None:
    """Both stores; and on Redis, a prices field left by another admission of the request id (a router of the version
    before settles a line without dropping it, then admits the id again) is not taken for this admission's."""
    account, day = Account("t", "k"), period_id("day")
    prices = Prices(Decimal("2.5"), Decimal("7.5"), Decimal("0.25"), Decimal("3.125"))
    line = Hold("line", 1_000, day, "router-1", nonce="0a", until=time.time() + 3600)
    assert (await store.admit(account, Allowance("day"), line, "strong", prices)).refused == ""
    assert (pending := await store.pending_charge(account, "line")) is not None and pending.prices == prices
    assert await store.charge(account, line, 500, {"request_id": "line", "cost_usd": "0.0000000005"}, late=True)
    plain = Hold("plain", 1_000, day, "router-1", nonce="0b")
    assert (await store.admit(account, Allowance("day"), plain, "strong")).refused == ""
    assert (pending := await store.pending_charge(account, "plain")) is not None and pending.prices is None
    if isinstance(store, RedisStore):
        assert not await store.redis.hexists(AccountKeys.of(account).prices, pending_field(account, "line"))
        left = "ff 2.5 7.5"  # another admission's, by its nonce
        await store.redis.hset(AccountKeys.of(account).prices, pending_field(account, "plain"), left)
        assert (pending := await store.pending_charge(account, "plain")) is not None and pending.prices is None
        # A value of the version before (no cache prices): its line was held with every input token at the input price.
        await store.redis.hset(AccountKeys.of(account).prices, pending_field(account, "plain"), "0b 2.5 7.5")
        assert (pending := await store.pending_charge(account, "plain")) is not None
        assert pending.prices == Prices(Decimal("2.5"), Decimal("7.5"), Decimal("2.5"), Decimal("2.5"))
