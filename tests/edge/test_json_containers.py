"""A body of more than MAX_JSON_CONTAINERS JSON objects and arrays is a 413, counted on its bytes before it is parsed:
8 MiB of `{}` (2.6 million) cost seconds of CPU and ~50 times the body in memory to parse before any bound on the
parsed value refused it. Brackets within strings are no containers. A batch file's line past the bound is refused at
upload, naming it. The real edge over loopback before a stand-in router that records what it is asked."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from llmrouter.json_bounds import MAX_JSON_CONTAINERS
from services.batches import wire
from services.edge import legacy, openai_api, responses
from services.edge.openai_api import ApiError, parse_request
from tests.edge.conftest import Edge

USER = {"role": "user", "content": "hi"}
EMPTY_OBJECTS = 2_600_000  # 7.8 MB of them, under EDGE_MAX_BODY_BYTES (8 MiB)
TOO_MANY = {
    "message": f"request body has over {MAX_JSON_CONTAINERS} JSON objects and arrays",
    "type": "invalid_request_error",
    "param": None,
    "code": "request_too_large",
}


def with_a_tool_of(objects: int) -> dict[str, Any]:
    """A chat request of objects + 8 containers: itself, messages, the message, tools, the tool, its function, its
    parameters and the list in them."""
    function = {"name": "f", "parameters": {"type": "object", "x": [{}] * objects}}
    return {"messages": [USER], "tools": [{"type": "function", "function": function}]}


def test_a_body_past_the_bound_is_a_413_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps(with_a_tool_of(MAX_JSON_CONTAINERS - 7)).encode()

    def unparsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(openai_api.json, "loads", unparsed)
    for parse in (parse_request, responses.to_chat, legacy.to_chat):
        with pytest.raises(ApiError) as refused:
            parse(body)
        assert (refused.value.status, refused.value.body()) == (413, {"error": TOO_MANY})


def test_a_body_at_the_bound_is_parsed() -> None:
    request, _ = parse_request(json.dumps(with_a_tool_of(MAX_JSON_CONTAINERS - 8)).encode())
    assert request.tools is not None and len(request.tools) == 1


def test_brackets_within_strings_are_no_containers() -> None:
    """A prompt quoting code (or anything) full of brackets, escaped quotes and backslashes among them."""
    text = '{["\\' * MAX_JSON_CONTAINERS
    request, _ = parse_request(json.dumps({"messages": [{"role": "user", "content": text}]}).encode())
    assert request.messages[0].content == text


PROMPTS = {
    "/chat/completions": '"messages": [{"role": "user", "content": "hi"}]',
    "/completions": '"prompt": "hi"',
    "/responses": '"input": "hi"',
    "/router/decide": '"messages": [{"role": "user", "content": "hi"}]',
}


@pytest.mark.parametrize("route", sorted(PROMPTS))
async def test_millions_of_empty_objects_are_a_413_on_every_json_route(edge: Edge, route: str) -> None:
    objects = ",".join(["{}"] * EMPTY_OBJECTS)
    body = f'{{"model": "auto", {PROMPTS[route]}, "metadata": [{objects}]}}'.encode()
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=60) as http:
        reply = await http.post(route, content=body, headers={"content-type": "application/json"})
    assert (reply.status_code, reply.json()) == (413, {"error": TOO_MANY})
    assert edge.router.asked == []


def batch_line(custom_id: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": wire.ENDPOINT, "body": body})


async def upload(edge: Edge, *lines: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=60) as http:
        files = {"file": ("batch.jsonl", "\n".join(lines).encode())}
        return await http.post("/files", files=files, data={"purpose": "batch"})


async def test_a_batch_line_past_the_bound_is_refused_at_upload_naming_it(edge: Edge) -> None:
    # Its body: itself, messages, the message and the metadata list, and that many objects.
    over = batch_line("b", {"messages": [USER], "metadata": [{}] * (MAX_JSON_CONTAINERS - 3)})
    reply = await upload(edge, batch_line("a", {"messages": [USER]}), over)
    assert reply.status_code == 400, reply.text
    message = (
        f"line 2 of the batch file has over {MAX_JSON_CONTAINERS} JSON objects and arrays in its body, the most a "
        "request's body may have"
    )
    error = {"message": message, "type": "invalid_request_error", "param": "file", "code": "invalid_file"}
    assert reply.json() == {"error": error}


async def test_a_batch_line_at_the_bound_is_taken(edge: Edge) -> None:
    at = batch_line("b", {"messages": [USER], "metadata": [{}] * (MAX_JSON_CONTAINERS - 4)})
    reply = await upload(edge, batch_line("a", {"messages": [USER]}), at)
    assert reply.status_code == 200, reply.text
