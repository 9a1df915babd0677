"""Which request parameters a model honours (ModelInfo.supported_parameters, /v1/models), by OpenRouter's names:
what its provider's gateway sends on, less what its registry entry says it lacks; and which a routed request
("auto") honours, given that routing sends a request only to the models able to serve what it asks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from llmrouter.passthrough import SENT_BY_KIND

if TYPE_CHECKING:
    from llmrouter.registry import ModelSpec

# The router's own request: every gateway sends them.
ALWAYS = frozenset({"max_tokens", "temperature"})
# Parameters a model honours only with a registry capability (ModelSpec's field). response_format is JSON mode, as
# OpenRouter names it; a schema (json_schema) is the parameter structured_outputs.
CAPABILITY = {
    "tools": "tools",
    "tool_choice": "tools",
    "parallel_tool_calls": "tools",
    "response_format": "json_mode",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "logit_bias": "logit_bias",
}
# The parameters routing filters models on, each with the one whose support makes a model eligible: a request
# asking for them goes only to models that list it (services/router/policy.py).
ROUTED_ON = {
    "tools": "tools",
    "tool_choice": "tools",
    "parallel_tool_calls": "tools",
    "response_format": "response_format",
    "structured_outputs": "structured_outputs",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
}
# Token ids of one tokenizer: a routed request carrying it is refused (services/router/admission.py).
NAMED_MODEL_ONLY = frozenset({"logit_bias"})


def for_model(model: ModelSpec, kind: str) -> list[str]:
    """The parameters a model of a provider of this kind honours (its capabilities resolved by the registry)."""
    sent = ALWAYS | SENT_BY_KIND[kind]
    honoured = {p for p in sent if p not in CAPABILITY or getattr(model, CAPABILITY[p])}
    if model.structured_outputs:
        honoured.add("structured_outputs")
    return sorted(honoured)


def for_routed(models: Iterable[Sequence[str]]) -> list[str]:
    """What a routed request honours among models with these parameters: one routing filters on when some model
    honours it (the request goes only to those), any other when every model it may go to does; never one that needs
    a named model."""
    listed = [set(parameters) for parameters in models]
    every = set().union(*listed)
    honoured = set()
    for parameter in every - NAMED_MODEL_ONLY:
        gate = ROUTED_ON.get(parameter)
        eligible = [p for p in listed if gate is None or gate in p]
        if all(parameter in p for p in eligible):
            honoured.add(parameter)
    return sorted(honoured)
