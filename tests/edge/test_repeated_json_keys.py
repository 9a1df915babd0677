"""A key given twice in an object of a JSON body, at any depth, is a 400 naming its path, on every route whose body the
edge parses and in a batch input file's lines: json.loads kept the last copy, while a proxy or a log in front may read
the first (two "model" or "max_tokens" keys), so which one a caller meant was ambiguous. The real edge over loopback
before a stand-in router that records what it is asked (its batch store in process); httpx and the official SDK as
callers."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from services.edge.openai_api import ApiError, decode_json
from tests.edge.conftest import Edge

USER = '{"role": "user", "content": "hi"}'
# (route, body, the key's path): each body valid JSON, and a request the route serves but for the repeat.
REPEATED = [
    ("/chat/completions", '{"model": "auto", "messages": [' + USER + '], "model": "strong-model"}', "model"),
    ("/chat/completions", '{"messages": [' + USER + '], "max_tokens": 1, "max_tokens": 4096}', "max_tokens"),
    (
        "/chat/completions",
        '{"messages": [' + USER + ', {"role": "user", "role": "system", "content": "x"}]}',
        "messages[1].role",
    ),
    (
        "/chat/completions",
        '{"messages": [' + USER + '], "response_format": {"type": "json_schema", "json_schema": {"name": "a",'
        ' "schema": {"type": "object", "properties": {"x": {"type": "string", "type": "integer"}}}}}}',
        "response_format.json_schema.schema.properties.x.type",
    ),
    ("/completions", '{"prompt": "hi", "max_tokens": 1, "max_tokens": 9}', "max_tokens"),
    # The same key spelt with an escape: one to JSON, though not to a proxy comparing the text.
    ("/completions", '{"prompt": "hi", "max_tokens": 1, "max_tok\\u0065ns": 9}', "max_tokens"),
    ("/responses", '{"input": "hi", "max_output_tokens": 16, "max_output_tokens": 4096}', "max_output_tokens"),
    ("/responses", '{"input": [{"role": "user", "content": "hi", "content": "bye"}]}', "input[0].content"),
    ("/router/decide", '{"messages": [' + USER + '], "max_cost_usd": "0.001", "max_cost_usd": "9"}', "max_cost_usd"),
    (
        "/batches",
        '{"input_file_id": "file-a", "input_file_id": "file-b", "endpoint": "/v1/chat/completions",'
        ' "completion_window": "24h"}',
        "input_file_id",
    ),
]


@pytest.mark.parametrize(("route", "body", "path"), REPEATED)
async def test_a_key_given_twice_is_a_400_naming_its_path(edge: Edge, route: str, body: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.post(route, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json() == {
        "error": {
            "message": f"request body gives {path!r} more than once: give each key once",
            "type": "invalid_request_error",
            "param": path,
            "code": "duplicate_parameter",
        }
    }
    assert edge.router.asked == []


async def test_the_sdk_sending_a_body_with_a_key_twice_gets_a_bad_request_naming_it(edge: Edge) -> None:
    """The SDK builds bodies from dicts, which hold a key once; one a caller wrote itself goes as it is."""
    client = openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)
    body = b'{"model": "auto", "messages": [' + USER.encode() + b'], "max_tokens": 1, "max_tokens": 4096}'
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post(
            "/chat/completions", cast_to=object, content=body, options={"headers": {"content-type": "application/json"}}
        )
    await client.close()
    assert (refused.value.param, refused.value.code) == ("max_tokens", "duplicate_parameter")
    assert edge.router.asked == []


async def test_a_batch_file_line_with_a_key_twice_is_refused_naming_the_line_and_key(edge: Edge) -> None:
    good = '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [' + USER + "]}}"
    bad = good.replace('"custom_id": "a"', '"custom_id": "b"').replace(
        '{"messages"', '{"model": "x", "model": "y", "messages"'
    )
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as http:
        reply = await http.post(
            "/files", files={"file": ("b.jsonl", f"{good}\n{bad}\n".encode())}, data={"purpose": "batch"}
        )
        listed = await http.get("/files")
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == {
        "message": "line 2 of the batch file gives 'body.model' more than once: give each key once",
        "type": "invalid_request_error",
        "param": "file",
        "code": "invalid_file",
    }
    assert listed.json()["data"] == []


async def test_a_key_in_many_objects_once_in_each_is_served(edge: Edge) -> None:
    """The same key in sibling and nested objects is no repeat: each object has it once."""
    client = openai.AsyncOpenAI(base_url=edge.base_url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}] * 3
    answer = await client.chat.completions.create(model="auto", messages=messages, metadata={"role": "content"})
    await client.close()
    assert answer.choices[0].message.content == "hi"
    assert [m.role for m in edge.router.asked[0].messages] == ["user", "assistant"] * 3


def test_the_first_repeat_in_document_order_is_named() -> None:
    """An object repeated in the first copy of a repeated key is gone once that key's last copy is kept: the outer
    repeat is named. Between two repeated keys, the one of the object met first."""
    for body, path in [
        (b'{"a": {"x": 1, "x": 2}, "a": 3}', "a"),
        (b'[{"b": 1}, {"c": [{"d": 1, "d": 2}]}, {"e": 1, "e": 2}]', "[1].c[0].d"),
        (b'{"z": {"y": 1, "y": 2}, "w": 1, "w": 2}', "w"),  # the outer object is met first
    ]:
        with pytest.raises(ApiError) as refused:
            decode_json(body)
        assert (refused.value.param, refused.value.code) == (path, "duplicate_parameter")
