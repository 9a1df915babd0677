"""The escalation signals, on plain answers: the refusal detector and when truncation counts."""

from __future__ import annotations

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from llmrouter.v1 import router_pb2
from services.router.escalation import Verifier, doubt, is_refusal, mode_of, signal, verifier_threshold
from services.router.routed import Served
from services.router.serving import Serving
from services.router.settings import RouterSettings
from services.verifier.client import Verdict
from tests.router.test_admission import REGISTRY, request, routed

MODEL = load_registry().models[0]

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, I cannot assist with this request.",  # a typographic apostrophe
    "I cannot provide instructions for that.",
    "As an AI language model, I can't browse the internet.",
    "I must decline to answer.",
    "I am unable to help with that.",
    "I'm unable to help with that.",  # contracted: I'm, no space before it
    "I\u2019m not able to provide that information.",
    "I'm not able to help writing phishing emails.",
]
ANSWERS = [
    "The capital of France is Paris.",
    "Sorry for the delay: here is the function you asked for.",
    "You can't divide by zero, so the limit is taken from the right: it is +inf.",
    "I can help with that: 17 * 23 = 391.",
    # "can't help but" and "can't help" a gerund say what one cannot stop doing, not what one declines to do: taken for
    # refusals, such answers were asked again of the stronger tier, and both paid.
    "I can't help but notice the second loop never ends: move the increment inside it.",
    "I cannot help thinking the answer is 42, since 6 * 7 = 42.",
]
STILL_REFUSALS = [
    "I can't help you with that.",
    "I cannot help with writing malware.",
    "I can't help, sorry.",
    # The idiom is "can't help" alone: one who won't, or is unable to, help doing something declines it.
    "I won't help spreading misinformation about vaccines.",
    "I will not help creating malware.",
    "I am unable to help bypassing the licence check.",
    "I am not able to help writing phishing emails.",
]


@pytest.mark.parametrize("text", REFUSALS + STILL_REFUSALS)
def test_refusals_are_detected(text: str) -> None:
    assert is_refusal(text, "auto")


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text, "auto") and not is_refusal(text, "strict")


def test_a_late_refusal_counts_only_in_strict() -> None:
    text = "Here is some context about the topic. " * 6 + "However, I cannot provide the rest of it."
    assert not is_refusal(text, "auto") and is_refusal(text, "strict")


def test_truncation_below_the_callers_cap_is_a_signal_and_at_it_is_not() -> None:
    cut = Served(MODEL, content="a long answer", finish_reason="length", output_tokens=50)
    assert signal(cut, "auto", None) == "truncated"
    assert signal(cut, "auto", 100) == "truncated"
    assert signal(cut, "auto", 50) == ""
    assert signal(cut, "off", None) == ""
    assert signal(cut, "auto", None, money_capped=True) == ""  # the cap was the money's: stronger is shorter


def test_empty_is_a_signal_but_a_tool_call_is_an_answer() -> None:
    assert signal(Served(MODEL, content="  "), "auto", None) == "empty"
    assert signal(Served(MODEL, tool_calls_json='[{"id": "c"}]'), "auto", None) == ""


def test_a_refusal_the_provider_reports_is_a_refusal_whatever_its_words() -> None:
    """OpenAI's refusal field (the content then empty, finish_reason stop), and a finish_reason content_filter
    (Anthropic's refusal stop, with whatever text came before it): the model declined, said by its provider."""
    refused = Served(MODEL, refusal="That is not something I will write.", finish_reason="stop")
    assert signal(refused, "auto", None) == "refusal"
    assert signal(Served(MODEL, content="Here is the first part", finish_reason="content_filter"), "auto", None) == (
        "refusal"
    )
    assert signal(refused, "off", None) == ""


def test_mode_defaults_and_refuses_unknown_values() -> None:
    assert mode_of("", "auto") == "auto" and mode_of("strict", "auto") == "strict"
    with pytest.raises(ServiceError) as err:
        mode_of("sometimes", "auto")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "escalation"}


class FixedVerifier:
    """A verdict as Classifier/Verify would give it, calibrated at 0.3 (auto) and 0.5 (strict)."""

    def __init__(
        self, good: float | None, calibrated: bool = True, modes: tuple[str, ...] = ("auto", "strict")
    ) -> None:
        self.value = good
        self.thresholds = {"auto": 0.3, "strict": 0.5} if calibrated else {}
        self.modes = frozenset(modes)
        self.asked = 0

    async def verdict(self, prompt: str, answer: str, time_left: float | None) -> Verdict | None:
        self.asked += 1
        return None if self.value is None else Verdict(self.value, "v1", self.thresholds)


async def test_the_verifiers_doubt_escalates_below_the_modes_threshold() -> None:
    served = Served(MODEL, content="42")
    unsure: Verifier = FixedVerifier(0.4)
    assert await doubt(unsure, "q", served, "auto", None) == ""
    assert await doubt(unsure, "q", served, "strict", None) == "verifier 0.4 < 0.5"
    assert await doubt(FixedVerifier(0.123456), "q", served, "auto", None) == "verifier 0.123 < 0.3"
    assert await doubt(unsure, "q", served, "off", None) == ""
    assert await doubt(FixedVerifier(None), "q", served, "strict", None) is None  # cannot say: kept
    assert await doubt(None, "q", served, "strict", None) == ""


async def test_the_requests_threshold_replaces_the_calibrated_one_and_none_means_no_signal() -> None:
    served = Served(MODEL, content="42")
    assert await doubt(FixedVerifier(0.4), "q", served, "auto", None, threshold=0.45) == "verifier 0.4 < 0.45"
    assert await doubt(FixedVerifier(0.4), "q", served, "strict", None, threshold=0.2) == ""
    assert await doubt(FixedVerifier(0.01, calibrated=False), "q", served, "strict", None) == ""
    assert await doubt(FixedVerifier(0.01, calibrated=False), "q", served, "auto", None, 0.5) == "verifier 0.01 < 0.5"
    tool_call = Served(MODEL, content="", tool_calls_json="[{}]")
    assert await doubt(FixedVerifier(0.0), "q", tool_call, "strict", None) == ""  # a tool call is an answer


async def test_the_verifier_is_asked_only_in_its_modes_unless_the_request_sets_a_threshold() -> None:
    served = Served(MODEL, content="42")
    strict_only = FixedVerifier(0.01, modes=("strict",))
    assert await doubt(strict_only, "q", served, "auto", None) == "" and strict_only.asked == 0
    assert await doubt(strict_only, "q", served, "strict", None) == "verifier 0.01 < 0.5"
    assert await doubt(strict_only, "q", served, "auto", None, threshold=0.2) == "verifier 0.01 < 0.2"
    assert RouterSettings().verifier_modes == {"strict"}  # auto keeps to the cheap signals


def test_the_requests_verifier_threshold_must_be_a_share() -> None:
    assert verifier_threshold(router_pb2.CompleteRequest()) is None
    assert verifier_threshold(router_pb2.CompleteRequest(verifier_threshold=0.25)) == 0.25
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ServiceError) as err:
            verifier_threshold(router_pb2.CompleteRequest(verifier_threshold=bad))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.metadata == {"field": "verifier_threshold"}


class NoDeadline:
    """A gRPC context whose caller set no deadline."""

    def time_remaining(self) -> float | None:
        return None


async def test_the_verifier_is_given_only_what_is_left_of_the_requests_time_limit() -> None:
    """With no caller deadline the request's own time limit bounds the verifier too: it must not be granted its
    whole timeout past the point where the request is to be cut."""
    _, routed_request = await routed(request(max_tokens=50))
    routed_request.registry, routed_request.escalation, routed_request.timeout_s = REGISTRY, "strict", 0.5
    verifier = RecordingVerifier()
    serving = Serving(None, None, verifier)  # type: ignore[arg-type]  # no provider call: the answer is kept
    cheap = routed_request.plan.order[0]
    await serving._escalate_if_weak(routed_request, NoDeadline(), Served(cheap.model, content="42"), cheap)
    assert verifier.time_left is not None and 0 < verifier.time_left <= 0.5


class RecordingVerifier(FixedVerifier):
    def __init__(self) -> None:
        super().__init__(0.9)
        self.time_left: float | None = -1.0  # not asked yet

    async def verdict(self, prompt: str, answer: str, time_left: float | None) -> Verdict | None:
        self.time_left = time_left
        return await super().verdict(prompt, answer, time_left)
