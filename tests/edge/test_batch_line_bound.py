"""A batch file's line is bounded as a request's body is (EDGE_MAX_BODY_BYTES). Unbounded, one line of a 100 MB
upload was parsed whole to be checked, and again when its batch ran: ~30 times its size in Python objects (an edge
measured 1.7 GB for a line of 60 MB of empty arrays, past the chart's 832Mi limit) and the GIL, every other request
of the process with it, for seconds."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from services.batches import wire
from tests.edge.test_http_protocol import nowhere, served

LINE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def edge_port() -> Iterator[int]:
    with served(nowhere(), EDGE_MAX_BODY_BYTES=str(LINE_BYTES)) as port:
        yield port


def line(custom_id: str, body: dict) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": wire.ENDPOINT, "body": body}).encode()


def upload(port: int, content: bytes) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/files",
        files={"file": ("batch.jsonl", content)},
        data={"purpose": "batch"},
        timeout=60,
    )


def test_a_line_over_a_requests_bound_is_refused_at_upload_naming_it(edge_port: int) -> None:
    small = line("a", {"messages": [{"role": "user", "content": "hi"}]})
    large = line("b", {"messages": [{"role": "user", "content": "hi"}], "metadata": [[]] * (LINE_BYTES // 3)})
    assert len(large) > LINE_BYTES
    reply = upload(edge_port, small + b"\n" + large + b"\n")
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("file", "invalid_file")
    assert error["message"] == f"line 2 of the batch file is over {LINE_BYTES} bytes, the most a request's body may be"


def test_a_file_over_a_requests_bound_of_lines_within_it_is_taken(edge_port: int) -> None:
    """The bound is each line's, not the file's."""
    lines = [line(f"r{i}", {"messages": [{"role": "user", "content": "x" * (LINE_BYTES // 2)}]}) for i in range(4)]
    content = b"\n".join(lines)
    assert len(content) > LINE_BYTES and max(map(len, lines)) <= LINE_BYTES
    reply = upload(edge_port, content)
    assert reply.status_code == 200, reply.text
    assert reply.json()["bytes"] == len(content)


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_a_line_with_a_number_past_a_floats_range_is_refused_at_upload_naming_it(edge_port: int, number: str) -> None:
    """The run parses a line as the chat route parses a body, which refuses 1e400 (a float's infinity, no JSON).
    Taken at upload, the batch's run failed at that line each time it was resumed, and the batch never ended."""
    small = line("a", {"messages": [{"role": "user", "content": "hi"}]})
    # json.dumps writes no such number: the body's text is spliced in.
    past = line("b", {"temperature": 0}).replace(b'"temperature": 0', f'"temperature": {number}'.encode())
    reply = upload(edge_port, small + b"\n" + past + b"\n")
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("file", "invalid_file")
    assert error["message"] == f"line 2 of the batch file is not JSON: {number} is past a number's range"
