"""Anthropic Messages API: system prompt and content blocks in, stop reasons mapped to OpenAI's
finish_reason out, and the streaming events message_start / content_block_start / content_block_delta /
message_delta / message_stop. Tool calls travel as tool_use and tool_result blocks, shown to callers in
OpenAI's shape."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from llmrouter.registry import ProviderSpec
from llmrouter.validation import object_arguments
from services.providers.gateways.base import (
    Completion,
    Message,
    Reported,
    StreamEvent,
    UpstreamError,
    UpstreamRequest,
    json_obj,
    json_text,
    token_count,
)
from services.providers.gateways.http import event_error, loads, make_client, post_json, post_sse

PATH = "/v1/messages"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; the servicer normally sets it from the registry
MAX_USER_ID = 256  # metadata.user_id's length limit
# A tool_use block's id (and a tool_result's tool_use_id) must match this, else a 400
# ("messages.1.content.0.tool_use.id: String should match pattern"); OpenAI's API takes any string, and other
# providers' models write others.
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
NOT_IN_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicGateway:
    def __init__(self, spec: ProviderSpec, api_key: str) -> None:
        headers = {"anthropic-version": API_VERSION, **({"x-api-key": api_key} if api_key else {})}
        self.client = make_client(spec, headers)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, request: UpstreamRequest) -> Completion:
        return completion(await post_json(self.client, PATH, body(request)))

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamEvent, None]:
        stopped = started = False
        calls: dict[int, dict[str, Any]] = {}  # tool_use blocks by their index; input arrives as JSON pieces
        blocks: set[int] = set()  # the indices of every block started (server tools stream input too)
        started_usage = Reported(None, None)  # message_start's input, with what of it the prompt cache served
        output_tokens: int | None = None
        try:
            async for event, data in post_sse(self.client, PATH, {**body(request), "stream": True}):
                payload = loads(data)
                kind = payload.get("type", event)
                # Answering from its first other event: an error before it (overloaded_error) consumed nothing.
                started |= kind not in ("ping", "error")
                if kind == "message_start":
                    reported = _usage(json_obj(payload.get("message"), "message").get("usage"))
                    started_usage = reported._replace(output_tokens=None)  # the output comes with message_delta
                    yield started_usage.completion()
                elif kind == "content_block_start":
                    block = json_obj(payload.get("content_block"), "content block")
                    index = _index(payload.get("index", len(blocks)))
                    blocks.add(index)
                    if block.get("type") == "tool_use":
                        call = _tool_call(
                            json_text(block.get("id"), "tool id"), json_text(block.get("name"), "tool"), ""
                        )
                        calls[index] = call
                        started_calls = [calls[i] for i in sorted(calls)]
                        # Said as it starts, and as it grows (base.StreamEvent).
                        yield Completion(tool_calls=started_calls, tool_text=call["function"]["name"])
                elif kind == "content_block_delta":
                    delta = json_obj(payload.get("delta"), "delta")
                    if delta.get("type") == "text_delta" and (text := json_text(delta.get("text"), "text delta")):
                        yield text
                    elif delta.get("type") == "input_json_delta":
                        # A piece of input for no block started: dropped, its call would go out with its input cut,
                        # as if whole.
                        index = _index(payload.get("index"))
                        if index not in blocks:
                            raise UpstreamError("bad_response", "upstream sent tool input before its block started")
                        if index in calls and (piece := json_text(delta.get("partial_json"), "tool input")):
                            calls[index]["function"]["arguments"] += piece
                            yield Completion(tool_text=piece)
                elif kind == "message_delta":
                    ended = _usage(payload.get("usage"))
                    output_tokens = ended.output_tokens
                    stop_reason = json_obj(payload.get("delta"), "message delta").get("stop_reason")
                    finish = _finish(stop_reason) if stop_reason else ""
                    if _more_input(ended, started_usage):
                        started_usage = ended._replace(output_tokens=None)
                        done = ended.completion()
                        done.finish_reason = finish
                        yield done
                    else:
                        yield Completion(finish_reason=finish, output_tokens=output_tokens)
                elif kind == "message_stop":
                    stopped = True
                    break
                elif kind == "error":
                    raise event_error(json_obj(payload.get("error"), "error"), started)
            if not stopped:
                raise UpstreamError("unavailable", "upstream stream ended before message_stop", retryable=True)
        except UpstreamError as exc:
            if started:  # the upstream was generating: what it made so far is billed
                exc.consumed = started_usage._replace(output_tokens=output_tokens).completion()
                exc.consumed.tool_calls = [calls[i] for i in sorted(calls)]
            raise
        if calls:
            for call in calls.values():  # a tool without parameters streams no input at all
                call["function"]["arguments"] = call["function"]["arguments"] or "{}"
            yield Completion(tool_calls=[calls[i] for i in sorted(calls)])


def completion(payload: dict[str, Any]) -> Completion:
    """A Message (a reply, or a Message Batches result's message) as a Completion."""
    blocks = payload.get("content")
    if not isinstance(blocks, list):
        raise UpstreamError("bad_response", "upstream reply has no content blocks")
    blocks = [b for b in blocks if isinstance(b, dict)]
    text = "".join(json_text(b.get("text"), "text block") for b in blocks if b.get("type") == "text")
    calls = [
        _tool_call(
            json_text(b.get("id"), "tool id"), json_text(b.get("name"), "tool"), json.dumps(b.get("input") or {})
        )
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    done = _usage(payload.get("usage")).completion()
    done.content, done.finish_reason, done.tool_calls = text, _finish(payload.get("stop_reason")), calls
    return done


def body(request: UpstreamRequest) -> dict[str, Any]:
    """The Messages request body, without stream (also the params of a Message Batches request)."""
    # A system text of only whitespace is Anthropic's 400 too ("system: text content blocks must contain
    # non-whitespace text"), which OpenAI's API takes: blank system messages are left out, and none left is no system.
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content.strip())
    messages: list[dict[str, Any]] = []
    ids = tool_ids(request.messages)
    for m, sent_ids in zip(request.messages, ids, strict=True):
        # A turn with nothing Anthropic takes (only blank text) is left out: an empty turn is its 400 too.
        if m.role == "system" or not (blocks := _blocks(m, sent_ids)):
            continue
        # Anthropic knows only user and assistant turns, and wants one turn per side: consecutive ones merge,
        # so the results of parallel tool calls share the user turn that follows the calls.
        role = "assistant" if m.role == "assistant" else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    if not messages:
        # Only a system prompt said anything: OpenAI's API answers it, Anthropic refuses a request without a turn
        # (400, "at least one message is required"). The prompt is sent as the one user turn instead.
        messages, system = [{"role": "user", "content": [{"type": "text", "text": system}]}], ""
    _trim_prefill(messages)
    params: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
    }
    if system:
        params["system"] = system
    if request.temperature is not None:
        params["temperature"] = request.temperature
    params.update(_translate_passthrough(request.passthrough))
    return params


def _trim_prefill(messages: list[dict[str, Any]]) -> None:
    """A conversation ending on an assistant turn is, to Anthropic, the start of its answer (a prefill), which it
    refuses ending in whitespace (400, "final assistant content cannot end with trailing whitespace"); OpenAI's API
    takes it. The whitespace is trimmed (the text is not blank: blank blocks are never sent)."""
    if not messages or messages[-1]["role"] != "assistant":
        return
    last = messages[-1]["content"][-1]
    if last["type"] == "text":
        last["text"] = last["text"].rstrip()


def tool_ids(messages: Sequence[Message]) -> list[Mapping[str, str]]:
    """Per message, its tool call ids (a tool message's, the id it answers) as Anthropic takes them: matching TOOL_ID
    (a 400 else) and unique in the request (a 400 "tool_use ids must be unique" else), where OpenAI's API takes any
    string and the same id in another turn (a model writing `call_0` each turn). Pairing (llmrouter/tool_pairing.py)
    holds a tool message to the calls of the turn right before it, of ids of their own: each result is sent its
    call's id. An id is sent as written the first time it is used, when it matches; any other is made, distinct from
    every id sent and every one written that matches (_IdMaker)."""
    make = _IdMaker({i for m in messages for i in _ids_of(m) if TOOL_ID.fullmatch(i)})
    ids: list[Mapping[str, str]] = []
    turn: dict[str, str] = {}  # the ids of the last turn with calls, as sent
    for m in messages:
        if m.role == "tool":
            if m.tool_call_id not in turn:  # answering no call of that turn (only a caller skipping validation)
                turn[m.tool_call_id] = make(m.tool_call_id)
        elif m.tool_calls:
            turn = {}
            for call in m.tool_calls:
                if (original := call.get("id", "")) not in turn:
                    turn[original] = make(original)
        ids.append(turn)
    return ids


def _ids_of(m: Message) -> list[str]:
    return [m.tool_call_id] if m.role == "tool" else [call.get("id", "") for call in m.tool_calls]


class _IdMaker:
    """Ids Anthropic takes, each distinct from the others made and from `written` (those of the request that match
    TOOL_ID). An id matching TOOL_ID is kept the first time; any other has its other characters written `_`
    (another provider's, Kimi K2's `functions.look:0`, is `functions_look_0`), "" is `_`, and one so made that is in
    use already is followed by `_` and the least count that makes it unused. So it is never longer in UTF-8 bytes
    than the id written (what the hold counted) but by that count (1 + its digits) or, "", 1 byte; and the ids are
    made in time linear in their number (a count is never tried twice)."""

    def __init__(self, written: set[str]) -> None:
        self.taken = set(written)  # every id sent, and every one written that matches: none is made again
        self.kept: set[str] = set()
        self.counts: dict[str, int] = {}

    def __call__(self, original: str) -> str:
        if TOOL_ID.fullmatch(original) and original not in self.kept:
            self.kept.add(original)
            return original
        made = base = NOT_IN_TOOL_ID.sub("_", original) or "_"
        while made in self.taken:
            self.counts[base] = count = self.counts.get(base, 0) + 1
            made = f"{base}_{count}"
        self.taken.add(made)
        return made


def _blocks(m: Message, ids: Mapping[str, str]) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": ids[m.tool_call_id], "content": m.content}]
    # Anthropic refuses a text block that is empty or only whitespace (400, "text content blocks must contain
    # non-whitespace text"), which OpenAI's API takes: an assistant turn that said nothing, a blank user turn.
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content.strip() else []
    for call in m.tool_calls:
        function = call.get("function") or {}
        # Anthropic takes the input only as an object: the providers service refuses such a request before it gets
        # here (honoured.py), naming the field.
        if (arguments := object_arguments(call)) is None:
            raise UpstreamError("rejected", "a tool call's arguments are not a JSON object", status=400)
        blocks.append(
            {"type": "tool_use", "id": ids[call.get("id", "")], "name": function.get("name", ""), "input": arguments}
        )
    return blocks


def _index(value: Any) -> int:
    """A content block's index: a number, as the blocks are kept by it."""
    if not isinstance(value, int):
        raise UpstreamError("bad_response", "upstream sent a content block index that is not a number")
    return value


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _translate_passthrough(extra: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-style extras Anthropic has an equivalent for; the rest cannot be honoured and is dropped."""
    out: dict[str, Any] = {}
    if "top_p" in extra:
        out["top_p"] = extra["top_p"]
    if stop := extra.get("stop"):
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools: list[dict[str, Any]] = [
        t["function"] for t in extra.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if tools:
        out["tools"] = [
            {
                "name": f["name"],
                "description": f.get("description", ""),
                "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
            }
            for f in tools
        ]
    # Anthropic's one end-user field: an opaque id (at most 256 characters) it may use against abuse, as OpenAI uses
    # safety_identifier (or user, which it replaces). prompt_cache_key has no equivalent: dropped.
    end_user = extra.get("safety_identifier") or extra.get("user")
    if isinstance(end_user, str) and len(end_user) <= MAX_USER_ID:
        out["metadata"] = {"user_id": end_user}
    choice = extra.get("tool_choice")
    if tools and choice in ("auto", "none", "required"):
        out["tool_choice"] = {"type": "any" if choice == "required" else choice}
    elif tools and isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out["tool_choice"] = {"type": "tool", "name": choice["function"].get("name", "")}
    return out


def _finish(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), str(stop_reason or "stop"))


def _more_input(ended: Reported, started: Reported) -> bool:
    """Whether message_delta's input (cumulative, as its every count: grown by server tools' rounds) says more than
    message_start's. Anthropic-compatible servers say the input in one of them only, 0 in the other: the larger is
    the one given, so neither a 0 at the start (counted here, in place of the count given) nor one at the end wins."""
    return ended.input_tokens is not None and ended.input_tokens > (started.input_tokens or 0)


def _usage(usage: Any) -> Reported:
    """The input is Anthropic's input_tokens (the uncached rest) plus its cache writes and reads, which are reported
    apart from it as they are billed apart: writes at 1.25x the input price, reads at 0.1x (a 1-hour write, 2x, is
    priced as a 5-minute one: it needs a cache_control this gateway never sends). A cache count given (not null) that
    is no count leaves the input unknown, as a missing input count does: skipped, it would lower the charge."""
    if not isinstance(usage, dict):
        return Reported(None, None)
    given = [usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    parts = [token_count(value) for value in given]
    output_tokens = token_count(usage.get("output_tokens"))
    known = given[0] is not None and all(
        p is not None for p, value in zip(parts, given, strict=True) if value is not None
    )
    input_tokens = token_count(sum(p for p in parts if p is not None)) if known else None
    if input_tokens is None:
        return Reported(None, output_tokens)
    _, written, read = (p or 0 for p in parts)
    return Reported(input_tokens, output_tokens, read, written)
