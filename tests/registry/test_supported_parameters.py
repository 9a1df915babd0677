"""ModelInfo.supported_parameters: what each model honours from its registry capabilities and its provider's
gateway, and what a routed request ("auto") honours given the models routing may send it to."""

from __future__ import annotations

from typing import Any

from llmrouter import parameters
from tests.registry.one_model import one_model_registry

OPENAI_ALL = [
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "parallel_tool_calls",
    "presence_penalty",
    "prompt_cache_key",
    "response_format",
    "safety_identifier",
    "seed",
    "stop",
    "structured_outputs",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
]


def listed(kind: str, provider: dict[str, Any] | None = None, **flags: Any) -> list[str]:
    registry = one_model_registry(kind, provider, **flags)
    return list(registry.info(registry.models[0]).supported_parameters)


def test_an_openai_model_with_every_capability_lists_every_field_it_is_sent() -> None:
    assert listed("openai", {"logprobs": True}) == OPENAI_ALL


def test_each_capability_left_false_takes_its_parameters_off() -> None:
    lacking = listed("openai", {"logit_bias": False}, tools=False, json_mode=False, structured_outputs=False)
    assert set(OPENAI_ALL) - set(lacking) == {
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "structured_outputs",
    }


def test_anthropic_and_local_models_list_what_their_gateways_send() -> None:
    assert listed("anthropic") == [
        "max_tokens",
        "safety_identifier",
        "stop",
        "temperature",
        "tool_choice",
        "tools",
        "top_p",
        "user",
    ]
    assert listed("local", tools=False) == ["max_tokens", "stop", "temperature"]  # the local model honours stop itself


def test_auto_honours_what_routing_filters_on_if_any_model_has_it_and_the_rest_if_every_model_does() -> None:
    strong = ["logprobs", "max_tokens", "seed", "logit_bias", "parallel_tool_calls", "tools", "top_logprobs"]
    weak = ["max_tokens", "tools"]
    tiny = ["max_tokens", "seed"]
    # logprobs: routed to strong; seed: weak ignores it; parallel_tool_calls: a tools request may go to weak;
    # logit_bias needs a named model.
    assert parameters.for_routed([strong, weak, tiny]) == ["logprobs", "max_tokens", "tools", "top_logprobs"]
    assert parameters.for_routed([strong, tiny]) == [
        "logprobs",
        "max_tokens",
        "parallel_tool_calls",
        "seed",
        "tools",
        "top_logprobs",
    ]
    assert parameters.for_routed([]) == []
