"""The escalation signals, on plain answers: the refusal detector and when truncation counts."""

from __future__ import annotations

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.registry import load_registry
from services.router.escalation import Verifier, doubt, is_refusal, mode_of, signal
from services.router.routed import Served

MODEL = load_registry().models[0]

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, I cannot assist with this request.",  # a typographic apostrophe
    "I cannot provide instructions for that.",
    "As an AI language model, I can't browse the internet.",
    "I must decline to answer.",
    "I am unable to help with that.",
]
ANSWERS = [
    "The capital of France is Paris.",
    "Sorry for the delay: here is the function you asked for.",
    "You can't divide by zero, so the limit is taken from the right: it is +inf.",
    "I can help with that: 17 * 23 = 391.",
]


@pytest.mark.parametrize("text", REFUSALS)
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


def test_mode_defaults_and_refuses_unknown_values() -> None:
    assert mode_of("", "auto") == "auto" and mode_of("strict", "auto") == "strict"
    with pytest.raises(ServiceError) as err:
        mode_of("sometimes", "auto")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.metadata == {"field": "escalation"}


class FixedVerifier:
    def __init__(self, good: float | None) -> None:
        self.value = good

    async def good(self, prompt: str, answer: str) -> float | None:
        return self.value


async def test_the_verifiers_doubt_escalates_by_mode_threshold() -> None:
    served = Served(MODEL, content="42")
    unsure: Verifier = FixedVerifier(0.4)
    assert await doubt(unsure, "q", served, "auto") == ""
    assert await doubt(unsure, "q", served, "strict") == "doubt"
    assert await doubt(FixedVerifier(0.1), "q", served, "auto") == "doubt"
    assert await doubt(FixedVerifier(None), "q", served, "strict") == ""
    assert await doubt(None, "q", served, "strict") == ""
