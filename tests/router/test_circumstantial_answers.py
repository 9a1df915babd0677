"""An answer that owes itself to the request's circumstances rather than its prompt says so (Served.circumstance), and
the response cache keeps none: an identical request later would be served it, never escalated or routed again."""

from __future__ import annotations

from typing import Any

import grpc

from llmrouter.v1 import common_pb2, provider_pb2
from services.router.escalation import Mode
from services.router.routed import Routed
from services.router.serving import Serving
from tests.router.servicer_kit import NoDeadline
from tests.router.test_admission import REGISTRY, request, routed
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
