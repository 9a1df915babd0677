"""The OpenAI-compatible gateway against a fake that speaks the exact wire format, through the real gRPC
service: request shape, JSON and SSE replies, usage and exact cost."""

from __future__ import annotations

import json

import grpc
import pytest

from llmrouter.v1 import common_pb2
from tests.fakes import FakeOpenAI, Fault
from tests.providers.conftest import OPENAI_KEY, providers_service
from tests.providers.helpers import collect, cost, error_of, request


async def test_generate_sends_openai_request_and_charges_exact_usage(stub, openai_fake: FakeOpenAI) -> None:
    passthrough = {
        "response_format": {"type": "json_object"},
        "tools": [
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
        ],
        "model": "must-not-override",
    }
    resp = await stub.Generate(
        request("cheap", max_tokens=50, temperature=0.2, passthrough_json=json.dumps(passthrough))
    )

    sent = openai_fake.requests[-1]
    body = sent.json
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["x-team"] == "router"
    assert body["model"] == "cheap-upstream-v1"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2
    assert body["response_format"] == passthrough["response_format"] and body["tools"] == passthrough["tools"]
    assert "stream" not in body

    content, finish, usage = openai_fake.answer(body)
    assert resp.content == content == "[cheap-upstream-v1] You said: What is 2+2?"
    assert resp.finish_reason == finish == "stop"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert not resp.usage.estimated
    assert resp.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")
    assert (resp.model, resp.provider, resp.retries) == ("cheap", "fakeai", 0)


async def test_stream_yields_deltas_then_final_with_usage(stub, openai_fake: FakeOpenAI) -> None:
    deltas, final = await collect(stub, request("strong", "Tell me about the sea"))

    body = openai_fake.requests[-1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    content, _, usage = openai_fake.answer(body)
    assert len(deltas) > 3 and "".join(deltas) == content
    assert final is not None and final.content == content and final.finish_reason == "stop"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert not final.usage.estimated
    assert final.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "2.50", "10.00")


async def test_max_tokens_truncates_with_length_finish(stub, openai_fake: FakeOpenAI) -> None:
    resp = await stub.Generate(request("cheap", "one two three four five six seven", max_tokens=3))
    assert resp.finish_reason == "length" and resp.usage.output_tokens == 3


async def test_max_tokens_is_capped_by_the_registry(stub, openai_fake: FakeOpenAI) -> None:
    await stub.Generate(request("cheap", max_tokens=1_000_000))
    assert openai_fake.requests[-1].json["max_tokens"] == 4096  # the model's max_output_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_missing_usage_is_counted_locally_and_flagged(stub, openai_fake: FakeOpenAI, stream: bool) -> None:
    openai_fake.enqueue(Fault.no_usage())
    if stream:
        _, resp = await collect(stub, request("cheap"))
    else:
        resp = await stub.Generate(request("cheap"))
    assert resp is not None
    _, _, usage = openai_fake.answer(openai_fake.requests[-1].json)
    # The fake counts exactly as llmrouter.tokens does, so the estimate matches to the token.
    assert resp.usage.estimated
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert resp.cost_usd == cost(usage["prompt_tokens"], usage["completion_tokens"], "0.15", "0.60")


async def test_list_models_offers_only_usable_models(stub) -> None:
    models = await stub.ListModels(common_pb2.ListModelsRequest())
    # No local artefact in this registry's dir and no key for "nokey": neither is offered.
    assert [m.name for m in models.models] == ["cheap", "strong", "claude"]
    cheap = models.models[0]
    assert (cheap.provider, cheap.tier, cheap.input_usd_per_mtok, cheap.output_usd_per_mtok) == (
        "fakeai",
        "economy",
        "0.15",
        "0.60",
    )


@pytest.mark.parametrize("model", ["keyless", "no-such-model", "smollm2-135m"])
async def test_unusable_model_is_not_found(stub, model: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request(model))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert error_of(info.value).reason == "MODEL_NOT_FOUND"


async def test_bad_passthrough_is_invalid_argument(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request("cheap", passthrough_json="[1, 2]"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_api_key_is_redacted_from_errors_and_logs(
    stub, openai_fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    openai_fake.api_key = "a-different-key"  # the fake now rejects ours, quoting it like OpenAI does
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request("cheap"))
    err = error_of(info.value)
    assert err.reason == "UPSTREAM_ERROR" and info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    assert OPENAI_KEY not in details and "refused this service's credentials (HTTP 401)" in details
    assert OPENAI_KEY not in str(err.metadata)
    logged = [r for r in caplog.records if r.name == "llmrouter.providers"]
    assert logged and all(OPENAI_KEY not in str(r.__dict__) for r in logged)


async def test_connection_refused_is_retried_then_unavailable(tmp_path, anthropic_fake) -> None:
    async with providers_service(tmp_path, "http://127.0.0.1:9/v1", anthropic_fake.base_url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request("cheap"))
    err = error_of(info.value)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE and err.reason == "UPSTREAM_UNAVAILABLE"
    assert err.metadata["retries"] == "2"


async def test_models_without_a_key_are_not_offered(
    tmp_path, openai_fake: FakeOpenAI, anthropic_fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAKE_OPENAI_KEY")
    async with providers_service(tmp_path, openai_fake.base_url, anthropic_fake.base_url) as stub:
        models = await stub.ListModels(common_pb2.ListModelsRequest())
        assert [m.name for m in models.models] == ["claude"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Generate(request("cheap"))
    assert error_of(info.value).reason == "MODEL_NOT_FOUND" and not openai_fake.requests


async def test_key_from_a_mounted_secret_file(
    tmp_path, openai_fake: FakeOpenAI, anthropic_fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "openai-key"
    secret.write_text("sk-from-file-42\n")
    monkeypatch.delenv("FAKE_OPENAI_KEY")
    openai_fake.api_key = "sk-from-file-42"
    async with providers_service(
        tmp_path, openai_fake.base_url, anthropic_fake.base_url, api_key_env="", api_key_file=str(secret)
    ) as stub:
        assert (await stub.Generate(request("cheap"))).content
    assert openai_fake.requests[-1].headers["authorization"] == "Bearer sk-from-file-42"


async def test_only_price_neutral_passthrough_reaches_the_upstream(stub, openai_fake: FakeOpenAI) -> None:
    """Defence in depth for direct gRPC callers: fields that could change the price or retention are not forwarded,
    even at values that cannot (those that would are refused first: test_hostile_caller.py)."""
    passthrough = {
        "top_p": 0.5,
        "seed": 3,
        "service_tier": "default",
        "store": True,
        "n": 1,
        "prediction": {"type": "content", "content": "x"},
        "modalities": ["text"],
    }
    await stub.Generate(request("cheap", passthrough_json=json.dumps(passthrough)))
    body = openai_fake.requests[-1].json
    assert (body["top_p"], body["seed"]) == (0.5, 3)
    assert not {"service_tier", "store", "n", "prediction", "modalities"} & set(body)
