"""A stream's client is watched while the edge waits for the router's first token (first_chunks): one that leaves has
the router call cancelled at once (tests/integration/test_stream_left_before_first_byte.py). Only the ASGI server's
http.disconnect says the client left: a watch that ended otherwise (the server's receive failing, as an instrumenting
middleware's channel may, or cancelled) was taken for a departure, and a live request was cancelled and lost (a 499
to a client still there, charged the stream's worst case). The request is served."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis
import uvicorn
import yaml
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmrouter.channels import open_channel
from services.edge.__main__ import server_config
from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from tests.conftest import ledger_records
from tests.fakes.raw_upstream import LoopbackUpstream
from tests.integration.conftest import free_port, model, provider, served_stack

BODY = {"model": "late-model", "messages": [{"role": "user", "content": "A story?"}], "max_tokens": 30, "stream": True}
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"


def event(payload: dict | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def chunk(delta: dict, finish: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "late-model", "choices": [choice]}


class LateUpstream(LoopbackUpstream):
    """An OpenAI-compatible stream whose first token waits for `release`: a model slow to begin."""

    def __init__(self) -> None:
        super().__init__()
        self.asked, self.release = asyncio.Event(), asyncio.Event()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.asked.set()
        writer.write(HEAD)
        await writer.drain()
        await self.release.wait()
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        writer.write(
            event(chunk({"role": "assistant", "content": "Once upon"}))
            + event(chunk({}, "stop"))
            + event({**chunk({}), "choices": [], "usage": usage})
            + event("[DONE]")
        )
        await writer.drain()


class WatchEndsOtherwise:
    """ASGI in front of the edge: the first receive after the request's body fails or is cancelled, the client staying
    connected (before the router's first token: the upstream waits for it); the next ones are the server's."""

    def __init__(self, app: ASGIApp, how: str, watch_ended: asyncio.Event) -> None:
        self.app, self.how, self.watch_ended = app, how, watch_ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = False

        async def broken() -> Message:
            nonlocal body_read
            if not body_read or self.watch_ended.is_set():
                message = await receive()
                body_read = body_read or (message["type"] == "http.request" and not message.get("more_body", False))
                return message
            self.watch_ended.set()  # once: the response's own watch (Starlette's) receives as it should
            if self.how == "fails":
                raise RuntimeError("receive channel closed")
            raise asyncio.CancelledError  # as a cancel scope of its own would end it

        await self.app(scope, broken, send)


@asynccontextmanager
async def edge_behind(settings: EdgeSettings, how: str, watch_ended: asyncio.Event) -> AsyncIterator[str]:
    """The edge served on loopback as deployed (its HTTP protocol), behind WatchEndsOtherwise."""
    channel = open_channel(settings.router_addr, settings)
    app = create_app(settings, channel)
    app.add_middleware(WatchEndsOtherwise, how=how, watch_ended=watch_ended)
    server = uvicorn.Server(server_config(app, settings))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{settings.port}/v1"
    finally:
        server.should_exit = True
        await task
        await channel.close()


async def records_of(redis_url: str, wait_s: float) -> list[dict]:
    db = redis.from_url(redis_url)
    try:
        until = time.monotonic() + wait_s
        while not (records := await ledger_records(db)) and time.monotonic() < until:
            await asyncio.sleep(0.05)
        return records
    finally:
        await db.aclose()


@pytest.mark.parametrize("how", ["fails", "cancelled"])
async def test_a_watch_ending_without_a_disconnect_leaves_the_stream_served_and_charged(
    tmp_path: Path, redis_url: str, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("LATE_KEY", "sk-late")
    async with LateUpstream() as upstream:
        path = tmp_path / "models.yaml"
        spec = {
            "tiers": ["economy"],
            "providers": {"late": provider("openai", f"{upstream.url}/v1", "LATE_KEY")},
            "models": [model("late-model", "late", "economy", ("0.60", "2.40"))],
        }
        path.write_text(yaml.safe_dump(spec))
        async with served_stack(path, redis_url, classifier_dir, verifier=False) as servers:
            settings = EdgeSettings(
                port=free_port(), router_addr=f"127.0.0.1:{servers['router'].port}", request_timeout_s=20
            )
            watch_ended = asyncio.Event()
            async with edge_behind(settings, how, watch_ended) as base_url, httpx.AsyncClient(timeout=20) as http:

                async def release_after_the_watch() -> None:
                    await asyncio.wait_for(upstream.asked.wait(), 10)
                    await asyncio.wait_for(watch_ended.wait(), 10)
                    await asyncio.sleep(0.3)  # the watch's end long handled before the first token
                    upstream.release.set()

                releasing = asyncio.create_task(release_after_the_watch())
                reply = await http.post(f"{base_url}/chat/completions", json=BODY)
                releasing.cancel()  # done, unless the request ended without its answer
            records = await records_of(redis_url, wait_s=5.0)
    assert reply.status_code == 200, reply.text
    events = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "Once upon"
    assert [(r["outcome"], r["output_tokens"]) for r in records] == [("ok", 2)]
