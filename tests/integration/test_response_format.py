"""response_format through the real chain (edge, router, classifier, providers) on loopback, driven by the openai SDK:
a request asking for JSON (json_object) or a schema (json_schema) is routed only to models the registry says honour
it, never to one whose gateway would drop the field (Anthropic's has nowhere to send it) and answer free text; a model
named that cannot honour it is a 400 naming response_format, before any provider is called."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.fake_openai import FakeOpenAI, echo_reply
from tests.integration.conftest import model
from tests.integration.mixed_chain import Mixed, ask, sdk, served_mixed

SCHEMA: Any = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
}


def json_when_asked(body: dict[str, Any]) -> str:
    """An OpenAI-compatible upstream that honours response_format, as OpenAI does: JSON when asked for it."""
    text = echo_reply(body)
    kind = (body.get("response_format") or {}).get("type")
    return json.dumps({"text": text}) if kind in ("json_object", "json_schema") else text


@pytest.fixture(scope="module")
async def mixed(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Mixed]:
    path = tmp_path_factory.mktemp("formats") / "models.yaml"
    models = [
        model("claude-model", "claude", "economy", ("0.10", "0.10")),  # honours no response_format
        # JSON mode, no json_schema (as Groq serves its Llama 3 models)
        model("json-model", "groq", "standard", ("0.50", "0.50"), structured_outputs=False),
        model("schema-model", "openai", "premium", ("2.50", "10.00")),  # both (provider kind openai's default)
    ]
    groq, upstream = FakeOpenAI(json_when_asked), FakeOpenAI(json_when_asked)
    async with served_mixed(path, chain_redis_url, classifier_dir, groq, upstream, models) as mixed:
        yield mixed


# quality_target 0: the cheapest model within limits is chosen, which is claude-model whenever it is eligible.
CHEAPEST = {"quality_target": 0}


async def test_without_response_format_the_cheapest_model_serves(mixed: Mixed) -> None:
    completion = await sdk(mixed).chat.completions.create(model="auto", messages=ask("hi"), extra_body=CHEAPEST)
    assert completion.model == "claude-model"


@pytest.mark.parametrize("stream", [False, True])
async def test_json_mode_is_routed_to_the_cheapest_model_that_honours_it(mixed: Mixed, stream: bool) -> None:
    options: dict[str, Any] = {"response_format": {"type": "json_object"}, "extra_body": CHEAPEST}
    claude_before = len(mixed.claude.requests)
    if stream:
        chunks = await sdk(mixed).chat.completions.create(
            model="auto", messages=ask("Answer in JSON"), stream=True, **options
        )
        parts = [c async for c in chunks]
        content, served = "".join(c.choices[0].delta.content or "" for c in parts if c.choices), parts[-1].model
    else:
        completion = await sdk(mixed).chat.completions.create(model="auto", messages=ask("Answer in JSON"), **options)
        content, served = completion.choices[0].message.content or "", completion.model
    assert served == "json-model"
    assert mixed.groq.requests[-1].json["response_format"] == {"type": "json_object"}
    assert len(mixed.claude.requests) == claude_before
    assert isinstance(json.loads(content), dict)  # what the caller asked for


async def test_a_schema_goes_only_to_a_model_with_structured_outputs(mixed: Mixed) -> None:
    completion = await sdk(mixed).chat.completions.create(
        model="auto", messages=ask("Answer to the schema"), response_format=SCHEMA, extra_body=CHEAPEST
    )
    assert completion.model == "schema-model"
    assert mixed.openai.requests[-1].json["response_format"] == SCHEMA
    assert set(json.loads(completion.choices[0].message.content or "")) == {"text"}


async def test_the_decision_says_why_the_others_are_ineligible(mixed: Mixed) -> None:
    async with httpx.AsyncClient(base_url=mixed.base_url) as http:
        reply = await http.post(
            "/router/decide",
            json={"model": "auto", "messages": ask("Answer to the schema"), "response_format": SCHEMA, **CHEAPEST},
        )
    assert reply.status_code == 200, reply.text
    decision = reply.json()
    assert decision["model"] == "schema-model"
    why = {c["model"]: c.get("excluded_because", "") for c in decision["candidates"]}
    assert why == {
        "claude-model": "does not guarantee response_format json_schema (registry: structured_outputs is false)",
        "json-model": "does not guarantee response_format json_schema (registry: structured_outputs is false)",
        "schema-model": "",
    }


@pytest.mark.parametrize("response_format", [{"type": "json_object"}, SCHEMA])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_named_that_cannot_honour_it_is_refused_not_degraded(
    mixed: Mixed, response_format: Any, stream: bool
) -> None:
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(
            model="claude-model", messages=ask("JSON please"), response_format=response_format, stream=stream
        )
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, "response_format", "no_eligible_model")
    assert error.type == "invalid_request_error"
    assert f"claude-model: does not guarantee response_format {response_format['type']}" in error.message
    assert mixed.sent() == before  # no provider was called


async def test_json_schema_to_a_json_mode_model_named_is_refused(mixed: Mixed) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(model="json-model", messages=ask("x"), response_format=SCHEMA)
    assert caught.value.param == "response_format"
    # The same model takes JSON mode, and text.
    completion = await sdk(mixed).chat.completions.create(
        model="json-model", messages=ask("x"), response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content or "")
    completion = await sdk(mixed).chat.completions.create(
        model="claude-model", messages=ask("x"), response_format={"type": "text"}
    )
    assert completion.model == "claude-model"


@pytest.mark.parametrize("without", [{"type": "json_schema"}, {"type": "json_schema", "json_schema": None}])
@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_without_its_schema_is_openais_400_before_any_provider(
    mixed: Mixed, without: Any, stream: bool
) -> None:
    """OpenAI refuses it in these words. Routed on, it reached a provider that refused it, and the caller read only
    "the provider refused the request"; an upstream that ignores the field answered free text."""
    before = mixed.sent()
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(mixed).chat.completions.create(
            model="auto", messages=ask("JSON please"), response_format=without, stream=stream
        )
    assert caught.value.body == {
        "message": "Missing required parameter: 'response_format.json_schema'.",
        "type": "invalid_request_error",
        "param": "response_format.json_schema",
        "code": "missing_required_parameter",
    }
    assert mixed.sent() == before
