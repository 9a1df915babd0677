"""A chat completion stream's server-sent events as the Responses API's typed events (`event: <type>` and its
data, numbered by sequence_number): the answer's text as it comes, its tool calls whole (the router delivers them
whole), then response.completed or response.incomplete with the usage and cost the chat stream's last chunk
carries, or response.failed when the chat stream ends with an error (charged as the chat path charges it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from services.edge.responses import (
    INCOMPLETE_REASONS,
    function_call_item,
    message_item,
    output_text,
    response_id,
    response_object,
    usage,
)


class ResponseEvents:
    """The events of one response, built from the chat stream's chunks in order."""

    def __init__(self, echoed: dict[str, Any]) -> None:
        self.echoed = echoed
        self.ident, self.created, self.model = "", 0, ""
        self.output: list[dict[str, Any]] = []
        self.text: str | None = None  # the open message item's text, None while no message item is open
        self.finish_reason: str | None = None

    def response(self, status: str) -> dict[str, Any]:
        return response_object(
            self.ident, self.created, self.model, self.echoed, status, self.output, self.finish_reason
        )

    def on_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.ident:  # the role chunk, always first
            self.ident, self.created, self.model = response_id(chunk["id"]), chunk["created"], chunk["model"]
            return [
                {"type": "response.created", "response": self.response("in_progress")},
                {"type": "response.in_progress", "response": self.response("in_progress")},
            ]
        self.model = chunk["model"]  # the final chunks name the model that answered (an escalation's)
        if "usage" in chunk and not chunk["choices"]:  # the last chunk: the answer's usage and cost
            return self.on_end(chunk)
        choice = chunk["choices"][0]
        events = []
        if content := choice["delta"].get("content"):
            events += self.open_message()
            assert self.text is not None
            self.text += content
            events.append({"type": "response.output_text.delta", **self.text_place(), "delta": content, "logprobs": []})
        if calls := choice["delta"].get("tool_calls"):
            events += self.close_message("completed")
            for call in calls:
                events += self.function_call(call)
        if choice["finish_reason"] is not None:
            self.finish_reason = choice["finish_reason"]
            if self.text is None and not any(item["type"] == "function_call" for item in self.output):
                events += self.open_message()  # an empty answer is an empty message, as unstreamed
            incomplete = self.finish_reason in INCOMPLETE_REASONS
            events += self.close_message("incomplete" if incomplete else "completed")
        return events

    def text_place(self) -> dict[str, Any]:
        return {"item_id": self.output[-1]["id"], "output_index": len(self.output) - 1, "content_index": 0}

    def open_message(self) -> list[dict[str, Any]]:
        if self.text is not None:
            return []
        self.text = ""
        item = message_item(self.ident, "", "in_progress")
        item["content"] = []
        self.output.append(item)
        part = output_text("")
        return [
            {"type": "response.output_item.added", "output_index": len(self.output) - 1, "item": item},
            {"type": "response.content_part.added", **self.text_place(), "part": part},
        ]

    def close_message(self, status: str) -> list[dict[str, Any]]:
        if self.text is None:
            return []
        text, place = self.text, self.text_place()
        self.text = None
        item = message_item(self.ident, text, status)
        self.output[-1] = item
        return [
            {"type": "response.output_text.done", **place, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **place, "part": item["content"][0]},
            {"type": "response.output_item.done", "output_index": place["output_index"], "item": item},
        ]

    def function_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        index = len(self.output)
        done = function_call_item(self.ident, call["index"], call)
        added = {**done, "arguments": "", "status": "in_progress"}
        self.output.append(done)
        place = {"item_id": done["id"], "output_index": index}
        return [
            {"type": "response.output_item.added", "output_index": index, "item": added},
            {"type": "response.function_call_arguments.delta", **place, "delta": done["arguments"]},
            {
                "type": "response.function_call_arguments.done",
                **place,
                "name": done["name"],
                "arguments": done["arguments"],
            },
            {"type": "response.output_item.done", "output_index": index, "item": done},
        ]

    def on_end(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.response("completed")
        response.update(usage=usage(chunk["usage"]), x_router=chunk["x_router"])
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [{"type": kind, "response": response}]

    def on_error(self, failure: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat stream failed after its headers: the response failed, with what it was charged."""
        error = failure["error"]
        if self.text is not None:  # the answer as far as it came (and was charged), not the empty item first added
            self.output[-1] = message_item(self.ident, self.text, "incomplete")
        response = self.response("failed")
        response.update(error={"code": failed_code(error), "message": error["message"]})
        response["incomplete_details"] = None
        response["x_router"] = {**failure.get("x_router", {}), "error_code": error.get("code")}
        return [{"type": "response.failed", "response": response}]


def failed_code(error: dict[str, Any]) -> str:
    """A failed response's error code, one of OpenAI's closed set (clients typed from its schema refuse any other,
    such as the router's stream_interrupted): the router's own code is told beside it, as x_router.error_code."""
    if error.get("code") == "rate_limit_exceeded":
        return "rate_limit_exceeded"
    return "invalid_prompt" if error.get("type") == "invalid_request_error" else "server_error"


def event_line(number: int, event: dict[str, Any]) -> bytes:
    data = json.dumps({"type": event["type"], "sequence_number": number, **event}, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def response_events(chat_events: AsyncIterable[Any], echoed: dict[str, Any]) -> AsyncIterator[bytes]:
    """The Responses stream of a chat stream (the edge's own: one chunk per event, [DONE] or an error last)."""
    events, number = ResponseEvents(echoed), 0
    try:
        async for raw in chat_events:
            data = (raw if isinstance(raw, bytes) else str(raw).encode()).decode().removeprefix("data: ").strip()
            if data == "[DONE]":
                return
            payload = json.loads(data)
            built = events.on_error(payload) if "error" in payload else events.on_chunk(payload)
            for event in built:
                yield event_line(number, event)
                number += 1
    finally:
        # Closed here, not whenever the collector gets to it: the chat stream's own ending stops the work downstream.
        aclose = getattr(chat_events, "aclose", None)
        if aclose is not None:
            await aclose()
