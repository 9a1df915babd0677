"""Options that OpenAI refuses together with what they depend on are refused by the edge as OpenAI refuses them (a
400 in its words, naming the param), on every route that takes them, before anything reaches the router: sent on,
OpenAI's upstream refused them (a generic "the provider refused the request") while the others served them, as
routing chose. The real chain: edge, router over Redis, classifier and providers, the fake upstreams counting calls."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.edge.openai_api import STREAM_OPTIONS_ALONE
from tests.fakes.server import TOOL_CUE
from tests.integration.conftest import Chain

USER = {"role": "user", "content": "hello"}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
NAMED = {"type": "function", "function": {"name": "elsewhere"}}
ALONE = "Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified."
NO_FUNCTION = "Invalid value for 'tool_choice': no function named 'elsewhere' was specified in the 'tools' parameter."


async def post(chain: Chain, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{chain.base_url}{path}", json=body)


def upstream_calls(chain: Chain) -> int:
    return len(chain.budget.requests) + len(chain.premium.requests)


def error(status: int, message: str, param: str, code: str | None) -> dict[str, Any]:
    return {
        "status": status,
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code},
    }


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/chat/completions",
            {"model": "auto", "messages": [USER], "stream_options": {"include_usage": True}},
            error(400, STREAM_OPTIONS_ALONE, "stream_options", None),
        ),
        (
            "/chat/completions",
            {"model": "auto", "messages": [USER], "stream": False, "stream_options": {}},
            error(400, STREAM_OPTIONS_ALONE, "stream_options", None),
        ),
        (
            "/completions",  # the legacy route serves its prompt on the chat path: refused there, as OpenAI does
            {"model": "auto", "prompt": "hello", "stream_options": {"include_usage": True}},
            error(400, STREAM_OPTIONS_ALONE, "stream_options", None),
        ),
        (
            "/chat/completions",
            {"model": "auto", "messages": [USER], "tools": [TOOL], "tool_choice": NAMED},
            error(400, NO_FUNCTION, "tool_choice", "invalid_value"),
        ),
        # Even "none", which asks for nothing: OpenAI's 400, its code null.
        (
            "/chat/completions",
            {"model": "auto", "messages": [USER], "tool_choice": "none"},
            error(400, ALONE.format(name="tool_choice"), "tool_choice", None),
        ),
        (
            "/chat/completions",
            {"model": "auto", "messages": [USER], "parallel_tool_calls": True},
            error(400, ALONE.format(name="parallel_tool_calls"), "parallel_tool_calls", None),
        ),
        (
            "/router/decide",
            {"model": "auto", "messages": [USER], "tools": [TOOL], "tool_choice": NAMED},
            error(400, NO_FUNCTION, "tool_choice", "invalid_value"),
        ),
        (
            "/responses",
            {
                "model": "auto",
                "input": "hello",
                "tools": [{"type": "function", "name": "lookup"}],
                "tool_choice": {
                    "type": "function",
                    "name": "elsewhere",
                },
            },
            error(400, "Tool choice 'function' not found in 'tools' parameter.", "tool_choice", None),
        ),
        (
            "/responses",
            {"model": "auto", "input": "hello", "tool_choice": {"type": "function", "name": "elsewhere"}},
            error(400, "Tool choice 'function' not found in 'tools' parameter.", "tool_choice", None),
        ),
    ],
)
async def test_an_option_openai_refuses_is_its_400_and_reaches_no_upstream(
    chain: Chain, path: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = upstream_calls(chain)
    reply = await post(chain, path, body)
    assert {"status": reply.status_code, "error": reply.json()["error"]} == expected
    assert upstream_calls(chain) == before


@pytest.mark.parametrize("field", ["tools", "tool_choice", "parallel_tool_calls"])
async def test_the_legacy_route_refuses_tool_fields_whose_calls_its_answer_cannot_carry(
    chain: Chain, field: str
) -> None:
    """OpenAI's legacy completions know no tools. Translated on, a tool call was generated and charged, and the caller
    shown its text: ""."""
    values = {"tools": [TOOL], "tool_choice": "auto", "parallel_tool_calls": False}
    before = upstream_calls(chain)
    reply = await post(chain, "/completions", {"model": "auto", "prompt": f"hello {TOOL_CUE}", field: values[field]})
    assert reply.status_code == 400, reply.text
    refused = reply.json()["error"]
    assert (refused["param"], refused["code"], refused["type"]) == (field, "unknown_parameter", "invalid_request_error")
    assert upstream_calls(chain) == before


async def test_the_options_beside_what_they_depend_on_are_served(chain: Chain) -> None:
    chosen = {"type": "function", "function": {"name": "lookup"}}
    served: list[tuple[str, dict[str, Any]]] = [
        ("/chat/completions", {"model": "auto", "messages": [USER], "stream": True, "stream_options": {}}),
        ("/chat/completions", {"model": "auto", "messages": [USER], "stream_options": None}),
        # null, as OpenAI takes every optional field's: as if left out, not streamed.
        ("/chat/completions", {"model": "auto", "messages": [USER], "stream": None, "stream_options": None}),
        ("/completions", {"model": "auto", "prompt": "hello", "stream": None, "stream_options": None}),
        ("/responses", {"model": "auto", "input": "hi", "stream": None}),
        ("/chat/completions", {"model": "auto", "messages": [USER], "tools": [TOOL], "tool_choice": chosen}),
        (
            "/responses",
            {
                "model": "auto",
                "input": "hi",
                "tools": [{"type": "function", "name": "lookup"}],
                "tool_choice": {"type": "function", "name": "lookup"},
            },
        ),
        ("/completions", {"model": "auto", "prompt": "hello"}),
    ]
    for path, body in served:
        reply = await post(chain, path, body)
        assert reply.status_code == 200, (path, reply.text)
        streamed = reply.headers["content-type"].startswith("text/event-stream")
        assert streamed == bool(body.get("stream")), (path, body)


TWIN = {"type": "function", "function": {"name": "lookup", "description": "another lookup"}}
TWICE = (
    "Invalid 'tools[1].function.name': the function name 'lookup' is given twice (tools[0] too): each tool's name "
    "must be unique."
)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"model": "auto", "messages": [USER], "tools": [TOOL, TWIN]}, "tools[1].function.name"),
        ("/chat/completions", {"model": "auto", "messages": [USER], "stream": True, "tools": [TOOL, TWIN]}, None),
        ("/router/decide", {"model": "auto", "messages": [USER], "tools": [TOOL, TWIN]}, "tools[1].function.name"),
        (
            "/responses",
            {
                "model": "auto",
                "input": "hello",
                "tools": [{"type": "function", "name": "lookup"}, {"type": "function", "name": "lookup"}],
            },
            "tools[1].name",  # the Responses API's function tool is flat
        ),
    ],
)
async def test_two_tools_of_one_name_are_a_400_that_reaches_no_upstream(
    chain: Chain, path: str, body: dict[str, Any], param: str | None
) -> None:
    """Which of two functions of one name a call means is anyone's guess: Anthropic's Messages API refuses them
    ("tools: Tool names must be unique."), as do other OpenAI-compatible APIs, and an upstream taking them calls one
    of them by a name that names both. Sent on, they were served or refused (a generic 502 or 400, its reason not
    said) as routing chose."""
    before = upstream_calls(chain)
    reply = await post(chain, path, body)
    assert reply.status_code == 400, reply.text
    refused = reply.json()["error"]
    assert (refused["type"], refused["code"]) == ("invalid_request_error", "invalid_value")
    assert "is given twice" in refused["message"] and "'lookup'" in refused["message"]
    if param is not None:
        assert (refused["param"], refused["message"]) == (param, TWICE.replace("tools[1].function.name", param))
    assert upstream_calls(chain) == before
