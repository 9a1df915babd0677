"""The edge's errors carry OpenAI's `type`, as a caller's code written against OpenAI branches on it: a caller's
error is invalid_request_error (a bad key and an unknown model or route too, codes invalid_api_key and
model_not_found/not_found), a rate limit requests (code rate_limit_exceeded), a spent budget insufficient_quota
(tests/integration/test_chain.py), a failure of ours or upstream server_error."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
from pydantic import SecretStr

from services.edge.keys import key_line
from services.edge.settings import EdgeSettings
from tests.integration.conftest import free_port, served_edge
from tests.integration.test_batch_listing import upload_places_taken
from tests.waiting import eventually

KEY = "sk-caller"


async def test_each_error_has_openais_type(monkeypatch: pytest.MonkeyPatch) -> None:
    places = upload_places_taken(monkeypatch)
    settings = EdgeSettings(
        port=free_port(),
        router_addr="127.0.0.1:1",  # nothing there: the router is unreachable
        access_log="off",
        metrics_port=0,
        api_keys=SecretStr(key_line("caller", KEY)),
        max_body_bytes=1000,
        batch_max_concurrent_uploads=1,
    )
    async with served_edge(settings) as base:
        sdk = openai.AsyncOpenAI(base_url=base, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            await sdk.models.list()
        assert (refused.value.type, refused.value.code) == ("invalid_request_error", "invalid_api_key")
        await sdk.close()
        async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as http:
            replies = {
                "unknown route": await http.get("/nothing"),
                "unknown file": await http.get("/files/file-nothing"),
                "method": await http.delete("/chat/completions"),
                "too large": await http.post("/chat/completions", content=b"x" * 2000),
                "router down": await http.post(
                    "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
                ),
            }
            with socket.create_connection(("127.0.0.1", settings.port)) as stalled:  # holds the one upload place
                stalled.sendall(
                    b"POST /v1/files HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n"
                )
                await eventually(lambda: places, "the stalled upload holds the one place")
                replies["uploads busy"] = await http.post(
                    "/files", files={"file": ("b.jsonl", b"{}\n")}, data={"purpose": "batch"}
                )
    found = {what: (reply.status_code, reply.json()["error"]["type"]) for what, reply in replies.items()}
    assert found == {
        "unknown route": (404, "invalid_request_error"),
        "unknown file": (404, "invalid_request_error"),
        "method": (405, "invalid_request_error"),
        "too large": (413, "invalid_request_error"),
        "router down": (503, "server_error"),
        "uploads busy": (429, "requests"),
    }
