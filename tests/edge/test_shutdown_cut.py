"""A request still open when the edge's shutdown passes its grace period is cut (uvicorn cancels it). Its caller got
uvicorn's bare `500 Internal Server Error` text, which OpenAI's SDKs retry twice on their own, while the router serves
a completion it admitted to its end and charges it all the same: each retry was a new request, charged again."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from llmrouter.v1 import router_pb2
from tests.fakes.recording_router import RecordingRouter
from tests.integration.conftest import quiet_edge_settings, served_router, start_edge


class HeldRouter(RecordingRouter):
    """Takes every completion and answers none: the edge's shutdown finds it open."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        self.asked.append(request)
        self.reached.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def test_a_completion_the_shutdown_cuts_is_a_503_in_openais_body_not_to_be_retried() -> None:
    router = HeldRouter()
    async with served_router(router) as router_addr:
        settings = quiet_edge_settings(router_addr, grace_seconds=1)
        server, serving, channel = await start_edge(settings)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}/v1", timeout=10) as client:
                body = {"messages": [{"role": "user", "content": "hi"}]}
                request = asyncio.create_task(client.post("/chat/completions", json=body))
                await router.reached.wait()
                server.should_exit = True  # past its second of grace, the request is cancelled, waiting on the router
                await asyncio.wait_for(serving, 30)
                reply = await request
        finally:
            await channel.close()
    assert reply.status_code == 503, reply.text
    assert reply.headers["x-should-retry"] == "false"  # admitted perhaps: charged under its id, once
    assert reply.headers["x-request-id"] == router.asked[0].request_id
    assert reply.json() == {
        "error": {
            "message": "the server shut down before this request was answered: it may have been served and charged "
            f"(request id {router.asked[0].request_id}); the ledger says whether it was",
            "type": "server_error",
            "param": None,
            "code": "server_shutting_down",
        },
        "x_router": {"cost_pending": True},
    }
