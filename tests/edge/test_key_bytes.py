"""A key of any UTF-8 text (one past ASCII issued before the key tool, services.edge.keys, refused such keys) is the
key the edge reads from the Authorization header: its UTF-8 bytes, as sent, are the key's bytes. Read as Starlette
reads headers (latin-1), a key with any character past ASCII was another string than the one the tool digested, and
refused for ever. Over a real edge on loopback before the recording stand-in router."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import openai
import pytest
from pydantic import SecretStr

from services.edge.keys import key_line
from tests.edge.conftest import recorded_edge

KEY = "ключ-ü-sk"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def chat(base_url: str, credentials: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return await client.post("/chat/completions", json=CHAT, headers=[(b"authorization", credentials)])


async def raw_chat(base_url: str, credentials: bytes) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a chat request whose Authorization header is `credentials` byte for byte: httpx (h11)
    refuses to send a value with a NUL or with spaces around it, which a client on another stack may send."""
    url = urlsplit(base_url)
    body = json.dumps(CHAT).encode()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        request = [
            b"POST " + url.path.rstrip("/").encode() + b"/chat/completions HTTP/1.1",
            b"host: edge",
            b"content-type: application/json",
            b"connection: close",
            b"authorization: " + credentials,
            b"content-length: " + str(len(body)).encode(),
        ]
        writer.write(b"\r\n".join(request) + b"\r\n\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if payload.startswith(b"{") else {}


async def test_a_key_past_ascii_sent_as_utf8_is_its_tenants() -> None:
    keys = SecretStr("\n".join([key_line("acme", KEY), key_line("globex", "sk-globex")]))
    async with recorded_edge(api_keys=keys) as edge:
        response = await chat(edge.base_url, b"Bearer " + KEY.encode())
        assert response.status_code == 200, response.text
        assert [(r.tenant, r.api_key) for r in edge.router.asked] == [("acme", KEY)]


async def test_the_openai_sdk_cannot_send_a_key_past_ascii_which_the_key_tool_so_refuses() -> None:
    """Why the key tool refuses a new key past ASCII (services.edge.keys) while the edge still takes one: OpenAI's
    Python SDK (httpx) encodes headers as ASCII and fails before a byte is sent, so such a key opens the edge to raw
    HTTP clients alone. An ASCII key goes through the same SDK."""
    keys = SecretStr("\n".join([key_line("acme", KEY), key_line("globex", "sk-globex")]))
    async with recorded_edge(api_keys=keys) as edge:
        async with openai.AsyncOpenAI(base_url=edge.base_url, api_key=KEY, max_retries=0) as sdk:
            with pytest.raises(UnicodeEncodeError, match="'ascii' codec"):
                await sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        async with openai.AsyncOpenAI(base_url=edge.base_url, api_key="sk-globex", max_retries=0) as sdk:
            assert (await sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])).id
        assert [r.tenant for r in edge.router.asked] == ["globex"]


async def test_credentials_that_are_no_utf8_are_an_invalid_key_never_passed_on() -> None:
    async with recorded_edge(api_keys=SecretStr(key_line("acme", KEY))) as edge:
        for sent in (KEY.encode()[:-4] + b"\xff", KEY.encode("latin-1", "replace"), KEY.encode()[:3]):
            response = await chat(edge.base_url, b"Bearer " + sent)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert edge.router.asked == []


# Each ends in a character whose last UTF-8 byte, read as latin-1, is a space to str.strip: \xa0 (no-break space) in
# 'à' (c3 a0) and 'Ġ' (c4 a0), \x85 (next line) in Cyrillic kha (d1 85). Stripped before the bytes were read as
# UTF-8, the key lost its last byte and was no UTF-8: refused for ever, though the key tool digested it as it is.
@pytest.mark.parametrize("key", ["sk-voilà", "sk-ключ-\u0445", "sk-Ġ"])
async def test_a_key_ending_in_a_byte_latin1_calls_a_space_is_its_tenants(key: str) -> None:
    async with recorded_edge(api_keys=SecretStr(key_line("acme", key))) as edge:
        status, answer = await raw_chat(edge.base_url, b"Bearer " + key.encode() + b" ")
        assert status == 200, answer
        assert [(r.tenant, r.api_key) for r in edge.router.asked] == [("acme", key)]


@pytest.mark.parametrize(
    "sent",
    [
        b"Bearer \xef\xbb\xbf" + KEY.encode(),  # a byte order mark before the key
        b"Bearer " + KEY.encode() + b"\xef\xbb\xbf",
        b"Bearer " + quote(KEY).encode(),  # percent-encoded, as a client escaping headers sends it
        b"Bearer\t" + KEY.encode(),
        b"Bearer" + KEY.encode(),
        b"Basic " + KEY.encode(),
        b"Bearer " + KEY.encode().decode("latin-1").encode("utf-8"),  # sent as mojibake, read once too often
        b"Bearer " + KEY.encode()[:-1],
        b"Bearer \xa0" + KEY.encode() + b"\x85",
    ],
)
async def test_credentials_the_key_tool_did_not_issue_are_a_401_never_passed_on(sent: bytes) -> None:
    async with recorded_edge(api_keys=SecretStr(key_line("acme", KEY))) as edge:
        status, answer = await raw_chat(edge.base_url, sent)
        assert (status, answer["error"]["code"]) == (401, "invalid_api_key"), answer
        assert edge.router.asked == []


@pytest.mark.parametrize("sent", [KEY.encode()[:4] + b"\x00" + KEY.encode()[4:], KEY.encode("utf-16-le")])
async def test_a_key_with_a_nul_is_a_bad_request_never_passed_on(sent: bytes) -> None:
    async with recorded_edge(api_keys=SecretStr(key_line("acme", KEY))) as edge:
        status, answer = await raw_chat(edge.base_url, b"Bearer " + sent)
        assert (status, answer["error"]["code"]) == (400, "invalid_http_request"), answer  # the HTTP server's
        assert edge.router.asked == []


@pytest.mark.parametrize("sent", [b"bearer ", b"BEARER  ", b"Bearer   "])
async def test_the_scheme_in_any_case_and_any_spacing_around_the_key_is_the_key(sent: bytes) -> None:
    async with recorded_edge(api_keys=SecretStr(key_line("acme", KEY))) as edge:
        status, answer = await raw_chat(edge.base_url, sent + KEY.encode() + b"  ")
        assert status == 200, answer
        assert [r.api_key for r in edge.router.asked] == [KEY]
