"""The providers service's refusal of a parameter its model cannot honour (a router that read the registry before a
reload routed it there) reaches the caller as what it is, a 400 naming the parameter, not a generic provider error:
its message is the service's own, never an upstream's."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec
from services.edge.app import api_error
from services.providers.honoured import refuse_unhonoured
from tests.providers.conftest import model_entry


def test_a_parameter_the_model_cannot_honour_is_a_400_naming_it() -> None:
    model = ModelSpec.model_validate(model_entry("plain", "p", "t", "1", "1", logprobs=False))
    try:
        refuse_unhonoured(model, {"logprobs": True})
    except ServiceError as refusal:
        error = AioRpcError(refusal.code, Metadata(), Metadata(*refusal.trailing_metadata()), refusal.message)
    else:
        raise AssertionError("not refused")
    answer = api_error(error, "req")
    assert answer.status == 400 and answer.param == "logprobs" and answer.code == "unsupported_parameter"
    assert "does not honour log-probabilities" in answer.message, answer.message
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
