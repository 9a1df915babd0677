"""An x-router-* header means what its body field means: a session id's bytes are read as UTF-8, as the body's JSON
string is (read as latin-1, `café` in the header was another session than `café` in the body), bytes that are not
UTF-8 are a 400 naming the header, and a fraction is a number as JSON writes one. The real edge over loopback before
a stand-in router that records what it is asked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.edge.conftest import recorded_edge
from tests.fakes.recording_router import RecordingRouter

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
SESSION = "café-☕-セッション"


async def decide(headers: dict[bytes, bytes], **fields: Any) -> tuple[httpx.Response, RecordingRouter]:
    async with recorded_edge() as edge, edge.client() as http:
        reply = await http.post("/router/decide", json={**BODY, **fields}, headers=headers)
    return reply, edge.router


async def test_a_session_id_header_in_utf8_is_the_same_session_as_the_body_field() -> None:
    by_body, body_router = await decide({}, session_id=SESSION)
    by_header, header_router = await decide({b"x-router-session-id": SESSION.encode()})
    assert (by_body.status_code, by_header.status_code) == (200, 200), (by_body.text, by_header.text)
    assert [r.session_id for r in header_router.asked] == [r.session_id for r in body_router.asked] == [SESSION]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-router-session-id", b"caf\xe9"),  # latin-1, not UTF-8
        ("x-router-session-id", b"\xff\xfe"),
        ("x-router-session-id", b"\xed\xa0\x80"),  # an encoded UTF-16 surrogate
        ("x-router-quality-target", b"0.2_5"),  # float() reads 0.25
        ("x-router-strong-share", b"0.5\xa0"),  # a trailing no-break space (latin-1): float() reads 0.5
    ],
)
async def test_a_header_value_that_is_not_its_fields_text_is_a_400_naming_it(header: str, value: bytes) -> None:
    reply, router = await decide({header.encode(): value})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (header, "invalid_value", "invalid_request_error")
    assert router.asked == []
