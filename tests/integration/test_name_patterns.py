"""A tool's function name and a json_schema format's name follow OpenAI's rule, ^[a-zA-Z0-9_-]{1,64}$: another is
OpenAI's 400 invalid_request_error naming the param (tools[1].function.name, response_format.json_schema.name; on the
Responses route tools[0].name, text.format.name), before any routing. Sent on, such a name was refused by OpenAI's
upstream (a generic "the provider refused the request") or served by another, as routing chose. The official SDK
against the real chain; no upstream is asked."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.integration.conftest import Chain
from tests.integration.test_chain import client, unique

FUNCTION = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
BAD_NAMES = ["get weather", "get.weather", "wetter_für_berlin", "a/b", "name\n", "x" * 65, ""]


def function(name: str) -> Any:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def schema_format(name: str) -> Any:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": {"type": "object"}}}


async def refused(chain: Chain, call: Any) -> openai.BadRequestError:
    asked = (len(chain.budget.requests), len(chain.premium.requests))
    with pytest.raises(openai.BadRequestError) as failed:
        await call
    assert (len(chain.budget.requests), len(chain.premium.requests)) == asked  # refused before any upstream
    assert failed.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    return failed.value


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_tool_name_outside_openais_rule_is_a_400_naming_it(chain: Chain, name: str) -> None:
    messages: Any = [{"role": "user", "content": unique("weather?")}]
    tools: Any = [FUNCTION, function(name)]
    error = await refused(chain, client(chain).chat.completions.create(model="auto", messages=messages, tools=tools))
    assert error.param == "tools[1].function.name"


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_json_schema_name_outside_openais_rule_is_a_400_naming_it(chain: Chain, name: str) -> None:
    messages: Any = [{"role": "user", "content": unique("json?")}]
    call = client(chain).chat.completions.create(model="auto", messages=messages, response_format=schema_format(name))
    error = await refused(chain, call)
    assert error.param == "response_format.json_schema.name"


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_the_responses_routes_names_follow_the_rule_too(chain: Chain, name: str) -> None:
    tool: Any = {"type": "function", "name": name, "parameters": {"type": "object"}}
    call = client(chain).responses.create(model="auto", input=unique("weather?"), tools=[tool])
    assert (await refused(chain, call)).param == "tools[0].name"
    text: Any = {"format": {"type": "json_schema", "name": name, "schema": {"type": "object"}}}
    call = client(chain).responses.create(model="auto", input=unique("json?"), text=text)
    assert (await refused(chain, call)).param == "text.format.name"


async def test_names_within_the_rule_are_served(chain: Chain) -> None:
    name = "Get_Weather-2" + "x" * 51  # 64 characters of every class the rule allows
    messages: Any = [{"role": "user", "content": unique("weather?")}]
    answer = await client(chain).chat.completions.create(
        model="auto", messages=messages, tools=[function(name)], response_format=schema_format(name)
    )
    assert answer.choices[0].message is not None
