"""A charge capped at its hold is counted: the usage a provider reported cost more than the request's worst case, the
tenant is charged the hold and the operator pays the rest, so llmrouter_router_charges_capped_total counts the charge
and llmrouter_router_capped_usd_total the USD absorbed (the reported cost less the hold), by model (alert
LLMRouterChargesCappedAtHold). A charge within its hold moves neither. An absurd report (int64 token counts) adds at
most MAX_ABSORBED_USD: counted whole, one such report left the counter useless to sum. A provider batch line whose
result reports usage past its hold is the same event, charged its hold: counted too, once, not again when the line is
collected again. The router's servicer over real Redis and a real providers gRPC server whose upstream reports the
usage the test gives it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY as METRICS

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.capped_charges import MAX_ABSORBED_USD
from services.router.deferred import OVER_REPORTED
from services.router.store import Account, MemoryStore, Pending, RedisStore
from tests.router import test_collect_model as batches
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_admission import REGISTRY
from tests.router.test_collect_again_tells_charge import EndedBatch
from tests.router.test_prompt_cache_prices import ledger_record

# test_admission.REGISTRY's cheap model, USD per 1M tokens.
INPUT_PRICE, OUTPUT_PRICE = Decimal("0.50"), Decimal("1.50")
MESSAGE = common_pb2.ChatMessage(role="user", content="Hello there, tell me about the sea")


class Reporting(provider_pb2_grpc.ProviderServicer):
    """Answers with the usage it is given, whatever the request could have cost."""

    def __init__(self, input_tokens: int, output_tokens: int) -> None:
        self.usage = common_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens)

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        return provider_pb2.GenerateResponse(
            content="an answer", usage=self.usage, model=request.model, finish_reason="stop"
        )


def capped(model: str = "cheap") -> tuple[float, float]:
    """Charges capped at their hold, and USD absorbed, the router's metrics have counted for `model`."""
    labels = {"model": model}
    return (
        METRICS.get_sample_value("llmrouter_router_charges_capped_total", labels) or 0.0,
        METRICS.get_sample_value("llmrouter_router_capped_usd_total", labels) or 0.0,
    )


def past_max_tokens() -> float:
    return METRICS.get_sample_value("llmrouter_router_batch_output_past_max_tokens_total", {"model": "strong"}) or 0.0


async def charge(tmp_path: Path, redis_url: str, provider: Reporting) -> Decimal:
    request = router_pb2.CompleteRequest(messages=[MESSAGE], tenant="t", model="cheap", max_tokens=20, request_id="r")
    async with store_on(redis_url) as store, router_servicer(tmp_path, store, provider) as servicer:
        with acting_as(ANONYMOUS):
            return Decimal((await servicer.Complete(request, NoDeadline())).cost_usd)


async def test_a_charge_capped_at_its_hold_counts_the_charge_and_the_usd_absorbed(
    tmp_path: Path, redis_url: str
) -> None:
    """A million input tokens reported for a prompt of a dozen: past any worst case the hold could price."""
    before = capped()
    charged = await charge(tmp_path, redis_url, Reporting(1_000_000, 20))
    reported = (INPUT_PRICE * 1_000_000 + OUTPUT_PRICE * 20) / 1_000_000
    record = await ledger_record(redis_url, "r")
    assert "charged the hold" in record["reason_detail"] and Decimal(record["cost_usd"]) == charged < reported
    count, absorbed = capped()
    assert count == before[0] + 1
    assert absorbed == before[1] + float(reported - charged)  # as the counter adds it: exactly


async def test_a_charge_within_its_hold_moves_neither_counter(tmp_path: Path, redis_url: str) -> None:
    before = capped()
    charged = await charge(tmp_path, redis_url, Reporting(10, 5))
    assert charged == (INPUT_PRICE * 10 + OUTPUT_PRICE * 5) / 1_000_000  # charged what was reported
    assert capped() == before


async def test_an_absurd_report_adds_at_most_its_bound_to_the_usd_absorbed(tmp_path: Path, redis_url: str) -> None:
    """int64's most input tokens: $4.6e12 at the cheap model's price, which would swamp every honest overage."""
    before = capped()
    charged = await charge(tmp_path, redis_url, Reporting(2**63 - 1, 20))
    count, absorbed = capped()
    assert charged < 1 and count == before[0] + 1
    assert absorbed == before[1] + float(MAX_ABSORBED_USD)


async def test_a_batch_line_over_reported_is_a_capped_charge_counted_once(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    before, past_before = capped("strong"), past_max_tokens()
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
    async with router_servicer(tmp_path, redis_store, EndedBatch(over_reported=True), batches.REGISTRY) as router:
        with acting_as(batches.TENANT_CALLER):
            await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[batches.LINE]), NoDeadline())
            (first,) = (await router.CollectBatch(collect, NoDeadline())).lines
            after_first = capped("strong")
            await router.CollectBatch(collect, NoDeadline())  # its reply lost, say: collected again
    assert first.error == OVER_REPORTED
    priced = batches.REGISTRY.get("strong").at_batch_price()  # type: ignore[union-attr]
    # Its output at the max_tokens it was sent (the report's, ten times that, is no more than it), as a realtime call's,
    # whose providers count it past max_tokens: here the router, once.
    reported = priced.cost_usd(100, batches.LINE.max_tokens)  # type: ignore[union-attr]
    count, absorbed = after_first
    assert count == before[0] + 1
    assert absorbed == before[1] + float(reported - Decimal(first.charged_usd))
    assert capped("strong") == after_first  # not counted again
    assert past_max_tokens() == past_before + 1


class ChargedMeanwhile(MemoryStore):
    """Once armed, its next read of a line's pending charge is followed at once by another collect's charge of it (a
    collect sent twice at once): the collect that read it finds it charged when it charges."""

    armed = False

    async def pending_charge(self, account: Account, request_id: str) -> Pending | None:
        pending = await super().pending_charge(account, request_id)
        if self.armed and pending is not None:
            self.armed = False
            held_account, hold = pending.account_and_hold()
            assert await self.charge(held_account, hold, pending.hold_pico, {"request_id": request_id}, late=True)
        return pending


class OverReportingArming(EndedBatch):
    """The provider batch's result reports usage past the line's hold; read, the collect's next read of the line is
    the one its charge follows."""

    def __init__(self, store: ChargedMeanwhile) -> None:
        super().__init__(over_reported=True)
        self.store = store

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        self.store.armed = True
        return await super().PollBatch(request, context)


async def test_a_batch_line_over_reported_and_charged_meanwhile_is_not_counted(tmp_path: Path) -> None:
    """Counted by the collect that charges it alone: one that finds it charged already (by another collect of it)
    made no capped charge."""
    before = capped("strong")
    store = ChargedMeanwhile()
    collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=["line-1"])
    async with router_servicer(tmp_path, store, OverReportingArming(store), batches.REGISTRY) as router:
        with acting_as(batches.TENANT_CALLER):
            await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[batches.LINE]), NoDeadline())
            (line,) = (await router.CollectBatch(collect, NoDeadline())).lines
    assert not store.armed and line.error == OVER_REPORTED  # its charge refused: charged meanwhile
    assert capped("strong") == before
