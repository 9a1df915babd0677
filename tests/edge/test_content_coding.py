"""A request body with a content coding is a 415 naming Content-Encoding, with Accept-Encoding: identity. The edge
decodes none and read the bytes as sent: a gzip body was refused as JSON that is not UTF-8, saying nothing of the
coding, and a plain body labelled gzip was served, as a proxy in front that decodes what it is told would not have
read it. The real edge before a stand-in router that records what it is asked."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.edge.conftest import recorded_edge
from tests.fakes.recording_router import RecordingRouter

BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hello"}]}).encode()
GZIPPED = gzip.compress(BODY, mtime=0)


@pytest.fixture
async def edge() -> AsyncIterator[tuple[httpx.AsyncClient, RecordingRouter]]:
    async with recorded_edge() as served, served.client() as http:
        yield http, served.router


@pytest.mark.parametrize(
    ("path", "coding", "content"),
    [
        ("/chat/completions", "gzip", GZIPPED),
        ("/chat/completions", "gzip", BODY),  # labelled, not compressed: served as it was, once
        ("/chat/completions", "br", BODY),
        ("/chat/completions", "identity, gzip", GZIPPED),
        ("/router/decide", "GZIP", GZIPPED),
        ("/responses", "deflate", BODY),
        ("/files", "gzip", b"--b\r\n"),
    ],
    ids=["gzip", "labelled gzip", "labelled br", "two codings", "decide", "responses", "upload"],
)
async def test_a_body_with_a_content_coding_is_a_415_naming_it(
    edge: tuple[httpx.AsyncClient, RecordingRouter], path: str, coding: str, content: bytes
) -> None:
    http, router = edge
    reply = await http.post(path, content=content, headers={"content-encoding": coding})
    assert (reply.status_code, reply.headers.get("accept-encoding")) == (415, "identity"), reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "content-encoding",
        "unsupported_content_encoding",
        "invalid_request_error",
    )
    assert coding.split(", ")[-1] in error["message"]
    assert router.asked == []


@pytest.mark.parametrize("headers", [{}, {"content-encoding": "identity"}, {"content-encoding": ""}])
async def test_a_body_as_it_is_is_served(edge: tuple[httpx.AsyncClient, RecordingRouter], headers: dict) -> None:
    http, router = edge
    decided = await http.post("/router/decide", content=BODY, headers=headers)
    completed = await http.post("/chat/completions", content=BODY, headers=headers)
    assert (decided.status_code, completed.status_code) == (200, 200), (decided.text, completed.text)
    assert len(router.asked) == 2
