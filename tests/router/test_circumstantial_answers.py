"""An answer that owes itself to the request's circumstances rather than its prompt says so (Served.circumstance), and
the response cache keeps none: an identical request later would be served it, never escalated or routed again."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc

from llmrouter.registry import Registry
from llmrouter.v1 import common_pb2, provider_pb2
from services.router import policy, routing
from services.router.admission import Admission, output_caps
from services.router.costs import worst_pico
from services.router.escalation import Mode
from services.router.routed import Routed
from services.router.serving import Serving
from services.router.store import PICO, MemoryStore
from tests.router.servicer_kit import NoDeadline
from tests.router.test_admission import ACCOUNT, REGISTRY, SETTINGS, request, routed, scratch_outbox
from tests.router.test_escalation_signals import FixedVerifier

REFUSAL = "I'm sorry, but I can't help with that request."


class Unavailable(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        empty = grpc.aio.Metadata()
        super().__init__(grpc.StatusCode.UNAVAILABLE, empty, empty, "down")


class Providers:
    """Answers `answer` from every model but those in `down`, which fail UNAVAILABLE; the models asked, in order."""

    def __init__(self, answer: str, down: tuple[str, ...] = ()) -> None:
        self.answer, self.down, self.asked = answer, down, list[str]()

    async def Generate(self, request: provider_pb2.GenerateRequest, timeout: float | None = None) -> Any:
        self.asked.append(request.model)
        if request.model in self.down:
            raise Unavailable()
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        answer = provider_pb2.GenerateResponse(content=self.answer, usage=usage, model=request.model)
        answer.finish_reason = "stop"
        return answer


async def admitted(escalation: Mode = "auto") -> tuple[Serving, Routed]:
    gate, r = await routed(request("What is the capital of France?"))
    r.registry, r.escalation = REGISTRY, escalation  # as the servicer routes it
    await gate.admit(r)
    return Serving(None, gate), r  # type: ignore[arg-type]  # each test sets its providers


async def test_an_answer_the_verifier_kept_is_not_circumstantial() -> None:
    serving, r = await admitted(escalation="strict")
    serving.providers = Providers("Paris.")  # type: ignore[assignment]
    serving.verifier = FixedVerifier(0.9)
    served = await serving.generate(r, NoDeadline())
    assert served.model.name == "cheap" and served.circumstance == ""


async def test_an_answer_the_verifier_could_not_judge_with_time_to_spare_is_not_circumstantial() -> None:
    """A verifier out of reach says nothing of the request (a classifier without the verifier's artefact never judges):
    kept out, no strict-mode answer was ever cached. Out of the request's time, it does
    (test_cache_unverified_for_want_of_time.py)."""
    serving, r = await admitted(escalation="strict")
    serving.providers = Providers("Paris.")  # type: ignore[assignment]
    serving.verifier = unable = FixedVerifier(None)
    served = await serving.generate(r, NoDeadline())
    assert unable.asked == 1 and served.model.name == "cheap" and served.circumstance == ""


async def test_a_weaker_fallbacks_answer_is_circumstantial_a_stronger_ones_is_not() -> None:
    serving, r = await admitted()
    serving.providers = providers = Providers("Paris.", down=("cheap",))  # type: ignore[assignment]
    served = await serving.generate(r, NoDeadline())
    assert providers.asked == ["cheap", "strong"] and served.model.name == "strong" and served.circumstance == ""

    serving, r = await admitted()
    r.plan.order.reverse()  # the strong model first (a target only it meets), the cheap one its fallback
    serving.providers = providers = Providers("Paris.", down=("strong",))  # type: ignore[assignment]
    served = await serving.generate(r, NoDeadline())
    assert providers.asked == ["strong", "cheap"]
    assert served.model.name == "cheap" and served.circumstance == "strong failed"


async def test_a_weak_answer_kept_because_its_escalation_failed_is_circumstantial() -> None:
    serving, r = await admitted()
    serving.providers = providers = Providers(REFUSAL, down=("strong",))  # type: ignore[assignment]
    served = await serving.generate(r, NoDeadline())
    assert providers.asked == ["cheap", "strong"] and not served.escalated
    assert served.circumstance == "the stronger model failed"


async def test_a_weak_answer_kept_because_its_caller_left_is_circumstantial() -> None:
    """Its caller gone (Routed.caller_left), the weak answer is not escalated: a caller that stays, later, is owed the
    stronger one, not this answer from the cache."""
    serving, r = await admitted()
    serving.providers = providers = Providers(REFUSAL)  # type: ignore[assignment]
    r.caller_left = True
    served = await serving.generate(r, NoDeadline())
    assert providers.asked == ["cheap"] and not served.escalated
    assert served.circumstance == "the caller left: no escalation made, the weak answer kept"


async def room_after_a_weak_answer(usd: bool) -> tuple[Serving, Routed]:
    """A request whose stronger model alone could answer within its money, but not after the weak answer (10 tokens
    in, 5 out of cheap) is paid: its max_cost_usd (`usd`) or else its tenant's budget leaves exactly that."""
    _, probe = await routed(request("What is the capital of France?"))
    strong = REGISTRY.models[1]
    weak_pico = 10 * 500_000 + 5 * 1_500_000  # cheap's prices, in pico-dollars a token
    room = worst_pico(strong, probe.limits.billed_input(strong), SETTINGS.min_output_tokens) + weak_pico // 2
    gate = Admission(SETTINGS, REGISTRY, MemoryStore(), scratch_outbox())
    if not usd:
        await gate.store.set_limit("tenant", ACCOUNT.tenant, room)
    fields = {"max_cost_usd": str(Decimal(room) / PICO)} if usd else {}
    _, r = await routed(request("What is the capital of France?", **fields), gate)
    r.registry, r.escalation = REGISTRY, "auto"
    await gate.admit(r)
    assert [o.model.name for o in r.plan.order] == ["cheap", "strong"]  # the stronger one alone is affordable
    serving = Serving(None, gate)  # type: ignore[arg-type]
    serving.providers = Providers(REFUSAL)  # type: ignore[assignment]
    return serving, r


async def test_a_weak_answer_its_own_cost_cap_keeps_is_the_requests_own() -> None:
    """max_cost_usd is part of the cache's key: an identical request has the same cap, so the weak answer it leaves
    no room to escalate is no circumstance, and is kept."""
    serving, r = await room_after_a_weak_answer(usd=True)
    served = await serving.generate(r, NoDeadline())
    assert served.model.name == "cheap" and not served.escalated and served.circumstance == ""


async def test_a_weak_answer_a_budgets_remainder_keeps_is_circumstantial() -> None:
    serving, r = await room_after_a_weak_answer(usd=False)
    served = await serving.generate(r, NoDeadline())
    assert served.model.name == "cheap" and not served.escalated
    assert served.circumstance == "no room left in the hold"


class CacheWriting(Providers):
    """Answers as Providers does, its upstream reporting every input token written to its prompt cache (dearer than
    an uncached one): the cache was cold, as it is for the first of identical requests."""

    async def Generate(self, request: provider_pb2.GenerateRequest, timeout: float | None = None) -> Any:
        answer = await super().Generate(request, timeout)
        answer.usage.cache_write_input_tokens = answer.usage.input_tokens
        return answer


# test_admission.REGISTRY with prompt-cache prices for the cheap model: a read 0.05, a write 0.625 (USD per 1M).
CACHING = Registry.model_validate(
    {
        "tiers": REGISTRY.tiers,
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {
                **REGISTRY.models[0].model_dump(),
                "cached_input_usd_per_mtok": "0.05",
                "cache_write_usd_per_mtok": "0.625",
            },
            REGISTRY.models[1].model_dump(),
        ],
    }
)


async def test_a_weak_answer_its_cap_keeps_only_after_a_cache_write_is_circumstantial() -> None:
    """max_cost_usd leaves the stronger model no room after the weak answer as paid here, its prompt written to the
    provider's cache, but would after the same answer read from it (as an identical request later may find it): the
    room left owes itself to the cache's state, not the request, so the weak answer is not kept."""
    strong = CACHING.models[1]
    gate = Admission(SETTINGS, CACHING, MemoryStore(), scratch_outbox())
    probe = await gate.limits(request("What is the capital of France?"))
    written_pico, read_pico = 10 * 625_000 + 5 * 1_500_000, 10 * 50_000 + 5 * 1_500_000  # 10 tokens in, 5 out
    room = worst_pico(strong, probe.billed_input(strong), SETTINGS.min_output_tokens) + (written_pico + read_pico) // 2
    asked = request("What is the capital of France?", max_cost_usd=str(Decimal(room) / PICO))
    limits = await gate.limits(asked)
    plan = policy.plan(CACHING, policy.evaluate(CACHING.models, {}, limits), limits, classified=True)
    decision = routing.decision(plan, limits, "")
    r = Routed(asked, "cache-cold", ACCOUNT, limits, plan, decision, output_caps(plan, limits, decision))
    r.registry, r.escalation = CACHING, "auto"
    await gate.admit(r)
    assert [o.model.name for o in r.plan.order] == ["cheap", "strong"]  # the stronger one alone is affordable
    serving = Serving(None, gate)  # type: ignore[arg-type]
    serving.providers = CacheWriting(REFUSAL)  # type: ignore[assignment]
    served = await serving.generate(r, NoDeadline())
    assert served.model.name == "cheap" and not served.escalated
    assert served.circumstance == "no room left in the hold"
