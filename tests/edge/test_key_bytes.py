"""A key the key tool takes (any UTF-8 text: services.edge.keys) is the key the edge reads from the Authorization
header: its UTF-8 bytes, as sent, are the key's bytes. Read as Starlette reads headers (latin-1), a key with any
character past ASCII was another string than the one the tool digested, and refused for ever. Over a real edge on
loopback before the recording stand-in router."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from services.edge.keys import key_line
from tests.edge.conftest import recorded_edge

KEY = "ключ-ü-sk"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def chat(base_url: str, credentials: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return await client.post("/chat/completions", json=CHAT, headers=[(b"authorization", credentials)])


async def test_a_key_past_ascii_sent_as_utf8_is_its_tenants() -> None:
    keys = SecretStr("\n".join([key_line("acme", KEY), key_line("globex", "sk-globex")]))
    async with recorded_edge(api_keys=keys) as edge:
        response = await chat(edge.base_url, b"Bearer " + KEY.encode())
        assert response.status_code == 200, response.text
        assert [(r.tenant, r.api_key) for r in edge.router.asked] == [("acme", KEY)]


async def test_credentials_that_are_no_utf8_are_an_invalid_key_never_passed_on() -> None:
    async with recorded_edge(api_keys=SecretStr(key_line("acme", KEY))) as edge:
        for sent in (KEY.encode()[:-4] + b"\xff", KEY.encode("latin-1", "replace"), KEY.encode()[:3]):
            response = await chat(edge.base_url, b"Bearer " + sent)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert edge.router.asked == []
