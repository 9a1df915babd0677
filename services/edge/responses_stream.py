"""A chat completion stream's server-sent events as the Responses API's typed events (`event: <type>` and its
data, numbered by sequence_number): the answer's text and refusal as they come (an output_text and a refusal content
part, with response.output_text.* and response.refusal.* events), its tool calls whole (the router delivers them
whole), then response.completed or response.incomplete with the usage and cost the chat stream's last chunk
carries, or response.failed when the chat stream ends with an error (charged as the chat path charges it) or is cut
by the edge's shutdown (ResponseStream.failed)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from services.edge.responses import (
    INCOMPLETE_REASONS,
    function_call_item,
    message_item,
    output_text,
    refusal_part,
    response_id,
    response_object,
    usage,
)

# A message's content part by the kind of delta that fills it: its type, and the field its text is in.
PART_FIELDS = {"output_text": "text", "refusal": "refusal"}


def content_part(part: dict[str, Any]) -> dict[str, Any]:
    """A message's content part as OpenAI's schema has it, from its kind and text."""
    return output_text(part["text"]) if part["type"] == "output_text" else refusal_part(part["refusal"])


class ResponseEvents:
    """The events of one response, built from the chat stream's chunks in order."""

    def __init__(self, echoed: dict[str, Any]) -> None:
        self.echoed = echoed
        self.ident, self.created, self.model = "", 0, ""
        self.output: list[dict[str, Any]] = []
        # The open message item's content parts ({type, text or refusal}), the last one still open; None while no
        # message item is open.
        self.parts: list[dict[str, Any]] | None = None
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
            events += self.add_to_part("output_text", content)
            events.append({"type": "response.output_text.delta", **self.part_place(), "delta": content, "logprobs": []})
        if refusal := choice["delta"].get("refusal"):
            events += self.add_to_part("refusal", refusal)
            events.append({"type": "response.refusal.delta", **self.part_place(), "delta": refusal})
        if calls := choice["delta"].get("tool_calls"):
            events += self.close_message("completed")
            for call in calls:
                events += self.function_call(call)
        if choice["finish_reason"] is not None:
            self.finish_reason = choice["finish_reason"]
            if self.parts is None and not any(item["type"] == "function_call" for item in self.output):
                events += self.add_to_part("output_text", "")  # an empty answer is an empty message, as unstreamed
            incomplete = self.finish_reason in INCOMPLETE_REASONS
            events += self.close_message("incomplete" if incomplete else "completed")
        return events

    def part_place(self) -> dict[str, Any]:
        assert self.parts is not None  # a part is placed only in the open message
        return {
            "item_id": self.output[-1]["id"],
            "output_index": len(self.output) - 1,
            "content_index": len(self.parts) - 1,
        }

    def add_to_part(self, kind: str, text: str) -> list[dict[str, Any]]:
        """The text added to the open message's last part, when it is of this kind; else to a new part of it (the
        message opened first, when none is), the part before it done."""
        events = self.open_message()
        assert self.parts is not None
        if not self.parts or self.parts[-1]["type"] != kind:
            events += self.close_part()
            self.parts.append({"type": kind, PART_FIELDS[kind]: ""})
            events.append({"type": "response.content_part.added", **self.part_place(), "part": self.finished_part()})
        self.parts[-1][PART_FIELDS[kind]] += text
        return events

    def finished_part(self) -> dict[str, Any]:
        """The open message's last part as its events and item carry it."""
        assert self.parts  # only a message with parts has a last one
        return content_part(self.parts[-1])

    def open_message(self) -> list[dict[str, Any]]:
        if self.parts is not None:
            return []
        self.parts = []
        item = message_item(self.ident, "", "in_progress")
        item["content"] = []
        self.output.append(item)
        return [{"type": "response.output_item.added", "output_index": len(self.output) - 1, "item": item}]

    def close_part(self) -> list[dict[str, Any]]:
        """The open message's last part done: its whole text, then the part."""
        if not self.parts:
            return []
        part, place = self.finished_part(), self.part_place()
        if part["type"] == "output_text":
            done = {"type": "response.output_text.done", **place, "text": part["text"], "logprobs": []}
        else:
            done = {"type": "response.refusal.done", **place, "refusal": part["refusal"]}
        return [done, {"type": "response.content_part.done", **place, "part": part}]

    def message(self, status: str) -> dict[str, Any]:
        """The open message item with its parts as far as they came."""
        assert self.parts is not None  # only an open message is told
        item = message_item(self.ident, "", status)
        item["content"] = [content_part(part) for part in self.parts]
        return item

    def close_message(self, status: str) -> list[dict[str, Any]]:
        if self.parts is None:
            return []
        events = self.close_part()
        item, index = self.message(status), len(self.output) - 1
        self.parts = None
        self.output[-1] = item
        return [*events, {"type": "response.output_item.done", "output_index": index, "item": item}]

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
        if self.parts is not None:  # the answer as far as it came (and was charged), not the empty item first added
            self.output[-1] = self.message("incomplete")
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


class ResponseStream:
    """The Responses stream of a chat stream (the edge's own: one chunk per event, [DONE] or an error last), numbered
    as its events go out, so that one cut short (shutdown_cut.py) ends with the response.failed its chat stream's
    error event would have given, numbered next."""

    def __init__(self, echoed: dict[str, Any]) -> None:
        self.translation = ResponseEvents(echoed)
        self.sent = 0  # the events gone out: the next one's sequence_number

    async def events(self, chat_events: AsyncIterable[Any]) -> AsyncIterator[bytes]:
        try:
            async for raw in chat_events:
                data = (raw if isinstance(raw, bytes) else str(raw).encode()).decode().removeprefix("data: ").strip()
                if data == "[DONE]":
                    return
                payload = json.loads(data)
                built = self.translation.on_error(payload) if "error" in payload else self.translation.on_chunk(payload)
                for event in built:
                    yield event_line(self.sent, event)
                    self.sent += 1
        finally:
            # Closed here, not whenever the collector gets to it: the chat stream's own ending stops the work
            # downstream.
            aclose = getattr(chat_events, "aclose", None)
            if aclose is not None:
                await aclose()

    def failed(self, failure: dict[str, Any]) -> bytes:
        """The last events of a stream ended by `failure` (a chat stream's error body) where it stands."""
        lines = [event_line(self.sent + i, event) for i, event in enumerate(self.translation.on_error(failure))]
        self.sent += len(lines)
        return b"".join(lines)
