"""A stream under way when the edge's shutdown passes its grace period is cut (uvicorn cancels it). It lost its
connection: its caller saw a transport error (the openai SDK's APIConnectionError, a chunked body cut short), told
neither that the stream had failed nor its request id, nor that its charge is pending. It ends as a stream that fails
mid-way ends: an OpenAI-style error event (a chat or legacy completion's error, a Responses stream's response.failed)
with its request id and `x_router.cost_pending`, then its body ends cleanly. `python -m services.edge` sent SIGTERM
with a stream of each route open on a stand-in router that holds them."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import openai
import pytest

from llmrouter.v1 import common_pb2, router_pb2
from tests.edge.edge_process import edge_serving
from tests.fakes.recording_router import RecordingRouter
from tests.integration.conftest import quiet_edge_settings, served_router, start_edge

MESSAGES = [{"role": "user", "content": "hi"}]


class StreamsHeld(RecordingRouter):
    """Starts each stream's answer and holds it open: the edge's shutdown finds it under way."""

    async def CompleteStream(self, request: router_pb2.CompleteRequest, context: Any) -> AsyncIterator[Any]:
        self.asked.append(request)
        yield router_pb2.CompleteChunk(decision=router_pb2.Decision(model="cheap-model", reason="held"))
        yield router_pb2.CompleteChunk(delta="Hel")
        await asyncio.Event().wait()


class Events:
    """A server-sent event stream read event by event: each as its `event` name (or '') and its data."""

    def __init__(self, reply: httpx.Response) -> None:
        self.reply = reply
        self.lines = reply.aiter_lines()

    async def next(self) -> tuple[str, Any]:
        name, data = "", ""
        async for line in self.lines:
            if not line:
                return name, json.loads(data)
            field, _, value = line.partition(": ")
            name, data = (value, data) if field == "event" else (name, value)
        raise AssertionError(f"the stream ended (after {name!r}, {data!r})")

    async def rest(self) -> list[Any]:
        """The data of the events left, once the body ends, which it must cleanly (not RemoteProtocolError: cut)."""
        events = []
        async for line in self.lines:
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
        return events


def cut_message(request_id: str) -> str:
    return (
        "the server shut down before this answer was finished: what was delivered is charged "
        f"(request id {request_id}); the ledger says what it cost"
    )


def cut_event(request_id: str) -> dict[str, Any]:
    """A chat (or legacy) stream's error event ending it, as one failing mid-way ends."""
    return {
        "error": {
            "message": cut_message(request_id),
            "type": "server_error",
            "param": None,
            "code": "server_shutting_down",
        },
        "x_router": {"cost_pending": True},
    }


async def opened(streams: AsyncExitStack, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Events:
    reply = await streams.enter_async_context(http.stream("POST", path, json={**body, "stream": True}))
    assert reply.status_code == 200, await reply.aread()
    return Events(reply)


async def test_streams_the_shutdown_cuts_end_with_an_error_event_and_their_pending_charge() -> None:
    router = StreamsHeld()
    async with (
        served_router(router) as addr,
        edge_serving(EDGE_ROUTER_ADDR=addr, EDGE_GRACE_SECONDS="1") as (edge, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as http,
        AsyncExitStack() as streams,
    ):
        chat = await opened(streams, http, "/chat/completions", {"messages": MESSAGES})
        assert (await chat.next())[1]["choices"][0]["delta"]["role"] == "assistant"
        assert (await chat.next())[1]["choices"][0]["delta"]["content"] == "Hel"

        legacy = await opened(streams, http, "/completions", {"prompt": "hi"})
        assert [(await legacy.next())[1]["choices"][0]["text"] for _ in range(2)] == ["", "Hel"]

        responses = await opened(streams, http, "/responses", {"input": "hi"})
        while (event := await responses.next())[0] != "response.output_text.delta":
            pass
        numbered = event[1]["sequence_number"]

        sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0)
        sdk_stream = await sdk.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        sdk_chunks = sdk_stream.__aiter__()
        assert [(await sdk_chunks.__anext__()).choices[0].delta.content for _ in range(2)] == ["", "Hel"]

        edge.send_signal(signal.SIGTERM)  # a second of grace, then each open stream is cut

        with pytest.raises(openai.APIError) as sdk_error:
            await sdk_chunks.__anext__()
        sdk_id = sdk_stream.response.headers["x-request-id"]
        assert type(sdk_error.value) is openai.APIError  # an error event, not APIConnectionError
        assert sdk_error.value.body == cut_event(sdk_id)["error"]

        chat_id = chat.reply.headers["x-request-id"]
        assert await chat.rest() == [cut_event(chat_id)]  # and no [DONE]: it failed
        legacy_id = legacy.reply.headers["x-request-id"]
        assert await legacy.rest() == [cut_event(legacy_id)]

        (failed,) = await responses.rest()
        assert failed["type"] == "response.failed" and failed["sequence_number"] == numbered + 1, failed
        response = failed["response"]
        assert response["status"] == "failed"
        assert response["error"] == {
            "code": "server_error",
            "message": cut_message(responses.reply.headers["x-request-id"]),
        }
        assert response["x_router"] == {"cost_pending": True, "error_code": "server_shutting_down"}
        (message,) = response["output"]  # the answer as far as it came
        assert message["status"] == "incomplete" and message["content"][0]["text"] == "Hel", message

        await sdk.close()
        assert await asyncio.wait_for(edge.wait(), 60) == 0


TEXT_PART = "x" * (1 << 20)
PARTS = 8  # 8 MiB of text, in each of a Responses stream's last events: far past what the socket's buffers hold


class AnswersLong(RecordingRouter):
    """Answers a long text at once, then its final chunk with the usage: a stream whose events outgrow the socket."""

    async def CompleteStream(self, request: router_pb2.CompleteRequest, context: Any) -> AsyncIterator[Any]:
        self.asked.append(request)
        yield router_pb2.CompleteChunk(decision=router_pb2.Decision(model="cheap-model", reason="long"))
        for _ in range(PARTS):
            yield router_pb2.CompleteChunk(delta=TEXT_PART)
        usage = common_pb2.Usage(input_tokens=1, output_tokens=PARTS)
        final = router_pb2.CompleteResponse(id=request.request_id, model="cheap-model", usage=usage, cost_usd="0.01")
        yield router_pb2.CompleteChunk(final=final)


async def test_a_stream_whose_last_event_went_out_before_the_shutdown_cut_ends_as_it_completed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Responses stream whose response.completed went out whole, its body's end still waiting for its caller to read
    when the grace period ran out, ends there: not with a response.failed after it, which said that the answer was
    not finished (a client would take it for failed, and send it again) though it was whole and charged whole."""
    router = AnswersLong()
    small_window = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)]  # the caller reads nothing the kernel would
    async with served_router(router) as router_addr:
        settings = quiet_edge_settings(router_addr, grace_seconds=1)
        server, serving, channel = await start_edge(settings)
        try:
            async with (
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{settings.port}/v1",
                    timeout=60,
                    transport=httpx.AsyncHTTPTransport(socket_options=small_window),
                ) as http,
                AsyncExitStack() as streams,
            ):
                responses = await opened(streams, http, "/responses", {"input": "hi"})
                names = []
                async for line in responses.lines:  # up to the last event's name, its data not read yet
                    if line.startswith("event: "):
                        names.append(line.removeprefix("event: "))
                        if names[-1] == "response.completed":
                            break
                # Its ~8 MiB of data past the socket's buffers: the edge waits for the caller to read before it ends
                # the body, when the grace period runs out.
                server.should_exit = True
                await asyncio.wait_for(serving, 30)
                rest = await responses.rest()  # and the body then ends cleanly
        finally:
            await channel.close()
    assert [event["type"] for event in rest] == ["response.completed"]
    assert rest[0]["response"]["output"][0]["content"][0]["text"] == TEXT_PART * PARTS
    assert "Cancel 1 running task(s)" in caplog.text  # uvicorn's: the grace period ran out with the stream open
    assert "request cut by the shutdown" not in caplog.text  # its answer went out whole
