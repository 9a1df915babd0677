"""A caller's max_cost_usd is a decimal of any length: converting it to pico-dollars must round it down exactly. Decimal
arithmetic rounds a product to 28 significant digits (half-even) first, so a cap just under a whole pico-dollar
amount, written with more digits than that, became that amount: a request could then write, and be charged, more
than its cap. The router's servicer over real Redis and a real providers gRPC server that writes all it may."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.ledger.db import LedgerDB
from services.router.admission import Admission
from services.router.costs import floor_pico, worst_pico
from services.router.operations import ALL, Operations
from services.router.settings import RouterSettings
from services.router.store import PICO, Account, Allowance, MemoryStore, RedisStore, period_id, to_pico
from tests.router.servicer_kit import NoDeadline, router_servicer, store_on
from tests.router.test_admission import REGISTRY, SETTINGS, scratch_outbox


class WritingAll(provider_pb2_grpc.ProviderServicer):
    """A providers service whose upstream bills the prompt at `input_tokens` and writes every token it may."""

    def __init__(self, input_tokens: int) -> None:
        self.input_tokens = input_tokens

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=self.input_tokens, output_tokens=request.max_tokens)
        return provider_pb2.GenerateResponse(
            content="word " * request.max_tokens, usage=usage, model=request.model, finish_reason="length"
        )


def test_a_cap_in_more_digits_than_decimal_precision_is_rounded_down() -> None:
    cap = Decimal("0." + "9" * 40)  # the product with 10**12 rounds (half-even, 28 digits) up to exactly 10**12
    assert floor_pico(cap) == 10**12 - 1
    assert floor_pico(Decimal("0.5")) == 5 * 10**11 and floor_pico(Decimal(0)) == 0


async def test_a_request_is_never_charged_past_a_cap_written_with_many_digits(tmp_path: Path, redis_url: str) -> None:
    message = common_pb2.ChatMessage(role="user", content="Hello there")
    probe = router_pb2.CompleteRequest(messages=[message], model="cheap")
    cheap = REGISTRY.get("cheap")
    assert cheap is not None
    billed = (await Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox()).limits(probe)).billed_input(cheap)
    # 40 output tokens after the prompt cost exactly this many pico-dollars; the cap is a hair under it.
    exact = worst_pico(cheap, billed, 40)
    # Built exactly (arithmetic would round it back to `exact`), within an amount's 30 digits, none below 1e-30.
    cap = Decimal(f"{exact * 10**16 - 1}E-28")
    assert cap < Decimal(exact) / PICO
    async with store_on(redis_url) as store:
        async with router_servicer(tmp_path, store, WritingAll(billed)) as servicer:
            request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_cost_usd=str(cap))
            with acting_as(ANONYMOUS):
                reply = await servicer.Complete(request, NoDeadline())
        assert Decimal(reply.cost_usd) <= cap, f"charged {reply.cost_usd} over the cap {cap}"
        spent, _ = await store.spent(Account("t", "anonymous"), period_id(servicer.settings.budget_period))
        assert spent == to_pico(Decimal(reply.cost_usd)) and Decimal(spent) / PICO <= cap
        assert reply.usage.output_tokens == 39  # all the cap pays for


async def test_a_budget_limit_is_rounded_down_to_the_pico_dollar(tmp_path: Path, redis_url: str) -> None:
    """A limit set by an operator, or in the settings, is never rounded up: spend reaching it would pass it."""
    store = RedisStore(redis_url)
    operations = Operations(store, Allowance("day"), LedgerDB(path=tmp_path / "ledger.sqlite3"))
    try:
        view = await operations.set_budget(ALL, "tenant", "t", "0.0000000000015")  # 1.5 pico-dollars
        assert view.limit_pico == 1
        await operations.set_budget(ALL, "tenant", "u", "0." + "9" * 30)  # the most digits an amount may have
        assert await store.limit_overrides() == {("tenant", "t"): 1, ("tenant", "u"): 10**12 - 1}
    finally:
        await store.close()
    settings = RouterSettings(tenant_budget_usd=Decimal("0.0000000000015"), key_budget_usd=Decimal("0." + "9" * 40))
    gate = Admission(settings, REGISTRY, MemoryStore(), scratch_outbox())
    assert (gate.allowance.tenant_pico, gate.allowance.key_pico) == (1, 10**12 - 1)


class Recording(WritingAll):
    """WritingAll, keeping the max_tokens each call was sent."""

    def __init__(self, input_tokens: int) -> None:
        super().__init__(input_tokens)
        self.sent: list[int] = []

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self.sent.append(request.max_tokens)
        return await super().Generate(request, context)


async def test_a_model_is_eligible_under_a_cap_only_when_its_charge_of_a_short_answer_fits(
    tmp_path: Path, redis_url: str
) -> None:
    """A price of more than six decimals per 1M tokens is a fraction of a pico-dollar per token. A cap at the exact
    cost of the prompt and one token is under that cost rounded up to the pico-dollar, as it is held and charged: the
    model cannot write one token within it. Judged eligible on the exact decimal cost, it was sent max_tokens 0, which
    the gateways read as none (Anthropic's sends its default of thousands, the local model 256): an answer held and
    charged for no output at all."""
    fractional = REGISTRY.model_copy(deep=True)
    fractional.models[0] = fractional.models[0].model_copy(update={"output_usd_per_mtok": Decimal("1.5000005")})
    cheap = fractional.get("cheap")
    assert cheap is not None
    message = common_pb2.ChatMessage(role="user", content="Hello there")
    probe = router_pb2.CompleteRequest(messages=[message], model="cheap", max_tokens=1)
    billed = (await Admission(SETTINGS, fractional, MemoryStore(), scratch_outbox()).limits(probe)).billed_input(cheap)
    exact = cheap.worst_cost_usd(billed, 1)  # half a pico-dollar past a whole number of them
    assert to_pico(exact) > floor_pico(exact)
    provider = Recording(billed)
    async with store_on(redis_url) as store, router_servicer(tmp_path, store, provider, fractional) as servicer:
        request = router_pb2.CompleteRequest(
            messages=[message], tenant="t", model="cheap", max_tokens=1, max_cost_usd=format(exact, "f")
        )
        with acting_as(ANONYMOUS), pytest.raises(ServiceError) as refused:
            await servicer.Complete(request, NoDeadline())
    assert provider.sent == [], f"the providers were sent max_tokens {provider.sent}"
    assert refused.value.reason == "NO_ELIGIBLE_MODEL" and refused.value.metadata.get("field") == "max_cost_usd"
