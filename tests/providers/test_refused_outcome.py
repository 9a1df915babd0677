"""An upstream's refusal of the request as sent (bad input, a prompt past the context) is counted as outcome
"refused" in llmrouter_provider_requests_total, apart from "error", so that LLMRouterProviderHighErrorRatio (which
reads error and timeout) never pages on callers' mistakes; a refusal that is the operator's to fix (401: our key)
stays "error"."""

from __future__ import annotations

import grpc
import pytest

from tests.fakes import FakeAnthropic, FakeOpenAI, Fault
from tests.providers.helpers import metric, request

CONTEXT_TOO_LONG = "This model's maximum context length is 8192 tokens. (context_length_exceeded)"


@pytest.fixture(params=["openai", "anthropic"])
def upstream(
    request: pytest.FixtureRequest, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> tuple[str, str, FakeOpenAI | FakeAnthropic]:
    if request.param == "openai":
        return "fakeai", "cheap", openai_fake
    return "fakeanthropic", "claude", anthropic_fake


def outcomes(provider: str, model: str) -> dict[str, float]:
    return {
        outcome: metric("llmrouter_provider_requests_total", provider=provider, model=model, outcome=outcome)
        for outcome in ("refused", "error")
    }


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.error(400, message="messages: Input should be a valid list"), "refused"),
        (Fault.error(422, message="unprocessable"), "refused"),
        (Fault.error(400, message=CONTEXT_TOO_LONG), "refused"),
        (Fault.error(401, message="invalid x-api-key"), "error"),
        (Fault.error(404, message="model not found"), "error"),
        # Our body past the provider's limit, which the edge answers 502 (the gateway's failure, not the caller's).
        (Fault.error(413, message="request entity too large"), "error"),
    ],
    ids=["400", "422", "context-length", "401", "404", "413"],
)
async def test_a_refusal_the_request_earned_is_counted_refused_not_error(
    stub, upstream: tuple[str, str, FakeOpenAI | FakeAnthropic], fault: Fault, expected: str
) -> None:
    provider, model, fake = upstream
    fake.enqueue(fault)
    before = outcomes(provider, model)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Generate(request(model))
    after = outcomes(provider, model)
    assert {k: after[k] - before[k] for k in after} == {k: float(k == expected) for k in after}
