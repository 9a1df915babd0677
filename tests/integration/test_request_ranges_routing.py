"""What some upstreams refuse of a valid OpenAI request, through the real chain (edge, router, classifier, providers)
on loopback: a temperature over 1 and a stop sequence of only whitespace, which Anthropic's Messages API answers with a
400 (registry max_temperature, blank_stop), are routed past its models rather than sent there, and a model named that
cannot take them is a 400 naming the field, with no provider called; a message's name, which Groq refuses, is left out
of what its provider is sent (message_names: false) and the request served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_groq import FakeGroq
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import model
from tests.integration.mixed_chain import Mixed, ask, served_mixed

# quality_target 0: the cheapest model within limits is chosen, which is claude-model whenever it is eligible;
# escalation off: the answer is the first model's.
CHEAPEST = {"quality_target": 0, "escalation": "off"}
REFUSED_BY_ANTHROPIC = [
    ({"temperature": 1.5}, "temperature", "takes a temperature of at most 1.0 (registry: max_temperature), not 1.5"),
    ({"stop": "\n"}, "stop", "refuses a stop sequence of only whitespace (registry: blank_stop is false)"),
    ({"stop": ["END", " "]}, "stop", "refuses a stop sequence of only whitespace (registry: blank_stop is false)"),
]


@pytest.fixture(scope="module")
async def mixed(
    tmp_path_factory: pytest.TempPathFactory, classifier_dir: Path, chain_redis_url: str
) -> AsyncIterator[Mixed]:
    path = tmp_path_factory.mktemp("request-ranges") / "models.yaml"
    models = [
        model("claude-model", "claude", "economy", ("0.10", "0.10"), max_temperature=1, blank_stop=False),
        model("groq-model", "groq", "standard", ("0.50", "0.50")),
        model("openai-model", "openai", "premium", ("2.50", "10.00")),
    ]
    groq_options = {"message_names": False}
    async with served_mixed(
        path, chain_redis_url, classifier_dir, FakeGroq(), FakeOpenAI(), models, groq_options=groq_options
    ) as mixed:
        yield mixed


async def complete(mixed: Mixed, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=mixed.base_url, timeout=30) as http:
        return await http.post("/chat/completions", json=body)


@pytest.mark.parametrize(("fields", "param", "why"), REFUSED_BY_ANTHROPIC)
async def test_routed_it_goes_to_the_cheapest_model_that_takes_it(
    mixed: Mixed, fields: dict[str, Any], param: str, why: str
) -> None:
    before = len(mixed.claude.requests)
    reply = await complete(mixed, {"model": "auto", "messages": ask("Write a haiku"), **fields, **CHEAPEST})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "groq-model"
    assert len(mixed.claude.requests) == before
    sent = mixed.groq.requests[-1].json
    assert {k: sent[k] for k in fields} == fields  # as the caller asked, never dropped
    async with httpx.AsyncClient(base_url=mixed.base_url, timeout=30) as http:
        decided = await http.post("/router/decide", json={"messages": ask("Write a haiku"), **fields, **CHEAPEST})
    assert decided.status_code == 200, decided.text
    excluded = {c["model"]: c.get("excluded_because", "") for c in decided.json()["candidates"]}
    assert excluded == {"claude-model": why, "groq-model": "", "openai-model": ""}


@pytest.mark.parametrize(("fields", "param", "why"), REFUSED_BY_ANTHROPIC)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_named_that_refuses_it_is_a_400_naming_the_field(
    mixed: Mixed, fields: dict[str, Any], param: str, why: str, stream: bool
) -> None:
    before = mixed.sent()
    body = {"model": "claude-model", "messages": ask("Write a haiku"), "stream": stream, **fields}
    reply = await complete(mixed, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "no_eligible_model", "invalid_request_error")
    assert why in error["message"]
    assert mixed.sent() == before


async def test_what_anthropic_takes_still_goes_there(mixed: Mixed) -> None:
    fields = {"temperature": 1.0, "stop": ["END", "\nEND"]}
    reply = await complete(mixed, {"model": "auto", "messages": ask("Write a haiku"), **fields, **CHEAPEST})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "claude-model"
    sent = mixed.claude.requests[-1].json
    assert (sent["temperature"], sent["stop_sequences"]) == (1.0, ["END", "\nEND"])


@pytest.mark.parametrize("stream", [False, True])
async def test_names_are_left_out_of_what_groq_is_sent_and_the_request_served(mixed: Mixed, stream: bool) -> None:
    messages = [
        {"role": "system", "content": "Be brief.", "name": "rules"},
        {**ask("Hello, I am Ada")[0], "name": "ada"},
    ]
    reply = await complete(mixed, {"model": "groq-model", "messages": messages, "stream": stream})
    assert reply.status_code == 200, reply.text
    sent = mixed.groq.requests[-1].json["messages"]
    assert [m.get("name") for m in sent] == [None, None]
    assert [m["content"] for m in sent] == [m["content"] for m in messages]
    reply = await complete(mixed, {"model": "openai-model", "messages": messages})
    assert reply.status_code == 200, reply.text
    assert [m.get("name") for m in mixed.openai.requests[-1].json["messages"]] == ["rules", "ada"]
