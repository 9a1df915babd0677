"""A JSON body's scalars cost the edge a small multiple of the body in memory, whatever they are. A body of more than
MAX_JSON_ITEMS array elements and object members is a 413 (request_too_large), counted on its bytes before it is
parsed (commas within strings not counted); a batch file's line whose body has over that many is refused at upload,
naming it. Within the bound, a number is a float alone unless its text is longer than a float is sure to keep (which
max_cost_usd keeps: test_max_cost_as_written.py): each was kept with its text, ~450 bytes, and 8 MiB of `0.5,` held
~1 GB, past the edge's memory limit (helm: 832Mi), to be refused at the end for a list where an object is due."""

from __future__ import annotations

import json
import socket
import tracemalloc
from typing import Any

import httpx
import pytest

from llmrouter.json_bounds import MAX_JSON_ITEMS
from services.edge import openai_api
from services.edge.openai_api import ApiError, decode_json, parse_request
from tests.edge.conftest import Edge
from tests.edge.test_big_body_off_loop import one_answer, peak_rss_mb
from tests.edge.test_http_protocol import POST, nowhere, served
from tests.edge.test_json_containers import PROMPTS, batch_line, upload

USER = {"role": "user", "content": "hi"}
MAX_BODY_BYTES = 8 * 1024 * 1024  # EDGE_MAX_BODY_BYTES's default
TOO_MANY = {
    "message": f"request body has over {MAX_JSON_ITEMS} JSON array elements and object members",
    "type": "invalid_request_error",
    "param": None,
    "code": "request_too_large",
}


def metadata_of(scalar: str) -> bytes:
    """A chat request whose metadata is a list of `scalar`, as many as fit in EDGE_MAX_BODY_BYTES."""
    head, tail = b'{"messages": [{"role": "user", "content": "hi"}], "metadata": [', b"]}"
    count = (MAX_BODY_BYTES - len(head) - len(tail) + 1) // (len(scalar.encode()) + 1)
    return head + b",".join([scalar.encode()] * count) + tail


def with_a_tool_of(values: int) -> dict[str, Any]:
    """A chat request of values + 3 commas: between its two fields, the message's two, the tool's two and its
    function's two; and `values - 1` between the values."""
    function = {"name": "f", "parameters": {"x": [0.5] * values}}
    return {"messages": [USER], "tools": [{"type": "function", "function": function}]}


def test_bodies_of_millions_of_scalars_are_413s_within_20_times_their_size() -> None:
    """8 MiB of fractions, integers, short strings and `true`, each to an edge of its own process: its peak memory
    (VmHWM) at most 20 times the body more than before them, and each answered."""
    with served(nowhere()) as port:
        before = peak_rss_mb(port)
        for scalar in ("0.5", "1", '"a"', "true"):
            body = metadata_of(scalar)
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(POST + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status, answer = one_answer(s)
            held_mb = peak_rss_mb(port) - before
            assert held_mb < 20 * MAX_BODY_BYTES / 2**20, f"{held_mb} MB held for 8 MiB of {scalar}"
            assert (status, json.loads(answer)) == (b"HTTP/1.1 413 Request Entity Too Large", {"error": TOO_MANY})


def test_a_body_past_the_bound_is_a_413_and_one_at_it_is_parsed() -> None:
    at = json.dumps(with_a_tool_of(MAX_JSON_ITEMS - 4)).encode()
    request, _ = parse_request(at)
    assert request.tools is not None and request.tools[0].function.parameters == {"x": [0.5] * (MAX_JSON_ITEMS - 4)}
    with pytest.raises(ApiError) as refused:
        parse_request(json.dumps(with_a_tool_of(MAX_JSON_ITEMS - 3)).encode())
    assert (refused.value.status, refused.value.body()) == (413, {"error": TOO_MANY})


def test_commas_within_strings_are_no_items() -> None:
    """A prompt of prose or CSV, escaped quotes and backslashes among its commas."""
    text = ',"\\' * MAX_JSON_ITEMS
    request, _ = parse_request(json.dumps({"messages": [{"role": "user", "content": text}]}).encode())
    assert request.messages[0].content == text


@pytest.mark.parametrize("route", sorted(PROMPTS))
async def test_millions_of_fractions_are_a_413_on_every_json_route(edge: Edge, route: str) -> None:
    fractions = ",".join(["0.5"] * 2_000_000)
    body = f'{{"model": "auto", {PROMPTS[route]}, "metadata": [{fractions}]}}'.encode()
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=60) as http:
        reply = await http.post(route, content=body, headers={"content-type": "application/json"})
    assert (reply.status_code, reply.json()) == (413, {"error": TOO_MANY})
    assert edge.router.asked == []


async def test_a_batch_line_past_the_bound_is_refused_at_upload_naming_it(edge: Edge) -> None:
    over = batch_line("b", with_a_tool_of(MAX_JSON_ITEMS - 3))
    reply = await upload(edge, batch_line("a", {"messages": [USER]}), over)
    assert reply.status_code == 400, reply.text
    message = (
        f"line 2 of the batch file has over {MAX_JSON_ITEMS} JSON array elements and object members in its body, the "
        "most a request's body may have"
    )
    error = {"message": message, "type": "invalid_request_error", "param": "file", "code": "invalid_file"}
    assert reply.json() == {"error": error}


async def test_a_batch_line_at_the_bound_is_taken(edge: Edge) -> None:
    at = batch_line("b", with_a_tool_of(MAX_JSON_ITEMS - 4))
    reply = await upload(edge, batch_line("a", {"messages": [USER]}), at)
    assert reply.status_code == 200, reply.text


def test_numbers_within_the_bound_are_parsed_in_a_small_multiple_of_their_body() -> None:
    """Python's allocations while a body of fractions just within the bound is parsed: each number kept with its text,
    ~100 times the body."""
    body = json.dumps(with_a_tool_of(MAX_JSON_ITEMS - 4)).encode()
    tracemalloc.start()
    try:
        decode_json(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(body), f"{peak / len(body):.0f} times the body's {len(body)} bytes"


def test_a_number_keeps_its_text_only_when_longer_than_a_float_is_sure_to_keep() -> None:
    written = ["1.9999999999999999999e-6", "1e-400", "0.12345678901234567", "0.10000000000000000", "5e-324"]
    kept = ["0.5", "1e5", "0.00", "-0.0", "1E-3", "1e-307"]
    parsed = decode_json(f"[{', '.join(written + kept)}]".encode())
    assert [getattr(number, "text", None) for number in parsed] == written + [None] * len(kept)
    assert [type(number) for number in parsed[len(written) :]] == [float] * len(kept)
    assert parsed == [float(text) for text in written + kept]
    assert isinstance(parsed[0], openai_api._Written)


@pytest.mark.parametrize("text", ["1e400", "-1e400", "1" + "0" * 400 + ".0"])
def test_a_number_past_a_floats_range_is_refused(text: str) -> None:
    with pytest.raises(ApiError) as refused:
        decode_json(f'{{"temperature": {text}}}'.encode())
    assert refused.value.status == 400
    assert refused.value.body()["error"]["message"].endswith("is past a number's range")
