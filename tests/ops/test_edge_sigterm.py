"""`python -m services.edge` stopped by SIGTERM drains its open requests, then exits 0, as the gRPC services do: uvicorn
raised the signal again once it had shut down, and the process ended by it (status -15), which supervisors and
`make run` read as a crash. A stand-in router on loopback holds one chat completion open across the stop."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

import httpx

from llmrouter.v1 import router_pb2, router_pb2_grpc
from tests.edge.edge_process import edge_serving
from tests.integration.conftest import served_router
from tests.waiting import eventually

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


class HeldRouter(router_pb2_grpc.RouterServicer):
    """Answers a chat completion once the test lets it go (`release`), so the edge is stopped with it in flight."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def Complete(self, request: router_pb2.CompleteRequest, context: Any) -> router_pb2.CompleteResponse:
        self.asked.set()
        await self.release.wait()
        return router_pb2.CompleteResponse(id=request.request_id, model="held", content="ok", cost_usd="0")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_a_sigterm_drains_the_request_in_flight_and_the_edge_exits_0() -> None:
    router = HeldRouter()
    async with (
        served_router(router) as addr,
        edge_serving(EDGE_ROUTER_ADDR=addr, EDGE_GRACE_SECONDS="30") as (edge, port),
    ):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as client:
            in_flight = asyncio.create_task(client.post("/chat/completions", json=CHAT))
            await asyncio.wait_for(router.asked.wait(), 30)
            edge.send_signal(signal.SIGTERM)
            # Its shutdown has begun once it no longer listens; the request it has is still open.
            await eventually(lambda: not listening(port), "the edge stopped listening after SIGTERM")
            assert not in_flight.done()
            router.release.set()
            reply = await in_flight
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "ok"
        assert await asyncio.wait_for(edge.wait(), 60) == 0
