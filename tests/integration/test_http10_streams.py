"""HTTP/1.0 callers. uvicorn sends an answer of no declared length chunked whatever the request's version, and an
HTTP/1.0 client reads no transfer coding (RFC 9112, 6.1: a server must not send one to it), so it read each event of
a stream behind a chunk's size in hex, and the stream's end as a stray `0`: sent as is, its end the connection's
close. And a 100-continue expectation of theirs is ignored."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlsplit

from tests.integration.conftest import Chain


async def exchange(chain: Chain, request: bytes) -> bytes:
    """What the edge sends back to `request`, up to its closing the connection."""
    url = urlsplit(chain.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), timeout=30)  # to the end: the connection's close
    finally:
        writer.close()


def post(body: dict, version: bytes) -> bytes:
    data = json.dumps(body).encode()
    head = b"POST /v1/chat/completions HTTP/%s\r\nHost: edge\r\nContent-Type: application/json\r\n" % version
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(data), data)


async def test_an_http_1_0_stream_is_sent_as_is_and_ended_by_the_close(chain: Chain) -> None:
    body = {
        "messages": [{"role": "user", "content": uuid.uuid4().hex}],
        "model": "cheap-model",
        "max_tokens": 8,
        "stream": True,
    }
    head, _, events = (await exchange(chain, post(body, b"1.0"))).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    headers = [line.lower() for line in head.split(b"\r\n")[1:]]
    assert not [line for line in headers if line.startswith(b"transfer-encoding")]
    assert b"connection: close" in headers
    assert events.startswith(b"data: {")
    assert events.endswith(b"data: [DONE]\n\n")
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in events.split(b"\n\n")[:-2]]
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])

    kept = await exchange(
        chain, post(body, b"1.0").replace(b"Host: edge\r\n", b"Host: edge\r\nConnection: keep-alive\r\n")
    )
    assert kept.endswith(b"data: [DONE]\n\n")  # closed at its end, though asked to keep the connection alive


async def test_an_http_1_1_stream_is_still_chunked(chain: Chain) -> None:
    body = {"messages": [{"role": "user", "content": uuid.uuid4().hex}], "model": "cheap-model", "max_tokens": 8}
    request = post({**body, "stream": True}, b"1.1").replace(b"Host: edge\r\n", b"Host: edge\r\nConnection: close\r\n")
    head, _, events = (await exchange(chain, request)).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower().split(b"\r\n")
    assert events.endswith(b"\r\n0\r\n\r\n")


async def test_an_http_1_0_request_s_100_continue_expectation_is_ignored(chain: Chain) -> None:
    """RFC 9110, 10.1.1: HTTP/1.0 has no 1xx answers, and a server must ignore such a request's expectation. uvicorn
    sent it an `HTTP/1.1 100 Continue`, which an HTTP/1.0 client may take for the answer itself."""
    body = {"messages": [{"role": "user", "content": uuid.uuid4().hex}], "model": "cheap-model", "max_tokens": 8}
    request = post(body, b"1.0").replace(b"Host: edge\r\n", b"Host: edge\r\nExpect: 100-continue\r\n")
    answer = await exchange(chain, request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["choices"][0]["message"]["content"]
