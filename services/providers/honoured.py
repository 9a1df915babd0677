"""A request asking for what its model cannot honour is refused before any upstream call. The router routes such a
request only to models whose registry capabilities say they honour it (services/router/policy.py), but other
services may call the providers service directly, and its gateways drop what they cannot send (Anthropic's
response_format, the local model's every passthrough field but stop): the caller would get plain text where it asked for
JSON, or no log-probabilities. A field at its "left out" value (null, false, an empty logit_bias) asks for nothing,
as the OpenAI gateway does not send it. A tool call whose arguments are no JSON object, which Anthropic's gateway
cannot send, is refused here too, naming the field, rather than by the gateway as if the provider had refused it."""

from __future__ import annotations

from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.passthrough import has_blank_stop
from llmrouter.registry import FORMAT_FIELDS, ModelSpec

REASON = "UNSUPPORTED_PARAMETER"  # OpenAI's code for a parameter the model does not support


def refuse_unhonoured(
    model: ModelSpec, passthrough: dict[str, Any], raw_arguments_at: str = "", temperature: float | None = None
) -> None:
    """Raise INVALID_ARGUMENT naming the first field of `passthrough` the model cannot honour, the tool call's
    arguments at `raw_arguments_at` (Validated) when the model takes them only as an object, or a `temperature` over
    the most its API takes (its upstream's 400, said before the call)."""
    if temperature is not None and temperature > model.max_temperature:
        said = f"model {model.name!r} takes a temperature of at most {model.max_temperature}, not {temperature}"
        raise _refused(model, "temperature", "max_temperature", said, "registry: max_temperature")
    response_format = passthrough.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in FORMAT_FIELDS and not model.honours(kind):
        raise _unhonoured(model, "response_format", f"response_format {kind}", FORMAT_FIELDS[kind])
    # Asked as admission asks them (services/router/admission.py): logprobs when truthy; top_logprobs, which the
    # router admits only beside logprobs, whenever given.
    if passthrough.get("logprobs") and not model.logprobs:
        raise _unhonoured(model, "logprobs", "log-probabilities", "logprobs")
    if passthrough.get("top_logprobs") is not None and not model.logprobs:
        raise _unhonoured(model, "top_logprobs", "log-probabilities", "logprobs")
    if passthrough.get("logit_bias") and not model.logit_bias:
        raise _unhonoured(model, "logit_bias", "logit_bias", "logit_bias")
    if has_blank_stop(passthrough) and not model.blank_stop:
        raise _unhonoured(model, "stop", "a stop sequence of only whitespace", "blank_stop")
    if raw_arguments_at and not model.raw_tool_arguments:
        said = f"{raw_arguments_at} must be a JSON object for model {model.name!r}"
        raise _refused(model, raw_arguments_at, "raw_tool_arguments", said)


def _unhonoured(model: ModelSpec, field: str, asked: str, capability: str) -> ServiceError:
    return _refused(model, field, capability, f"model {model.name!r} does not honour {asked}")


def _refused(model: ModelSpec, field: str, capability: str, said: str, registry: str = "") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        REASON,
        f"{said} ({registry or f'registry: {capability} is false'}); nothing was sent upstream",
        {"field": field, "model": model.name, "capability": capability},
    )
