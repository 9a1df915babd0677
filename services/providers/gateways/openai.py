"""OpenAI-compatible chat completions (OpenAI, Groq, Together, vLLM, Ollama, llama.cpp server, LM Studio)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from llmrouter.passthrough import PASSTHROUGH_FIELDS
from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import (
    Completion,
    Message,
    Refusal,
    Reported,
    StreamEvent,
    UpstreamError,
    UpstreamRequest,
    json_list,
    json_obj,
    json_text,
    token_count,
)
from services.providers.gateways.http import event_error, loads, make_client, post_json, post_sse

PATH = "/chat/completions"
# The finish_reason of a generation that failed part-way (OpenRouter's, some OpenAI-compatible servers'), sent with or
# without an error object: served as a natural end ("stop", openai_finish_reason), it passed a cut answer off as whole.
FAILED = "error"


class OpenAIGateway:
    def __init__(self, spec: ProviderSpec, api_key: str) -> None:
        self.client = make_client(spec, {"authorization": f"Bearer {api_key}"} if api_key else {})
        self.names = spec.message_names

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, request: UpstreamRequest) -> Completion:
        done = completion(await post_json(self.client, PATH, body(request, confidence=True, names=self.names)))
        if done.finish_reason == FAILED:  # an answer cut short, perhaps billed whole: its outcome is unknown
            raise UpstreamError("bad_response", "upstream said the generation failed (finish_reason error)")
        return done

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamEvent, None]:
        payload = {**body(request, names=self.names), "stream": True, "stream_options": {"include_usage": True}}
        end = Completion()
        calls: dict[int, dict[str, Any]] = {}  # tool calls arrive in fragments, keyed by their index
        done = started = failed = False
        try:
            async for _, data in post_sse(self.client, PATH, payload):
                if data.strip() == "[DONE]":
                    done = True
                    break
                chunk = loads(data)
                if "error" in chunk:
                    if said := chunk.get("usage"):  # what the failed attempt consumed, told with its error: billed
                        told = _told(end, said)
                        started |= bool(told.input_tokens or told.output_tokens)  # so no refusal before running
                        yield told
                    raise event_error(chunk["error"], started)
                started = True  # answering: an error as the first event consumed nothing, as a 5xx status
                for item in json_list(chunk.get("choices"), "choices"):
                    choice = json_obj(item, "choice")
                    delta = json_obj(choice.get("delta"), "delta")
                    if content := json_text(delta.get("content"), "delta's content"):
                        yield content
                    # A refusal streams in pieces of its own (its first chunk says "refusal": "", content null).
                    if refusal := json_text(delta.get("refusal"), "delta's refusal"):
                        yield Refusal(refusal)
                    known = len(calls)
                    fragments = json_list(delta.get("tool_calls"), "delta's tool calls")
                    generated = "".join(_add_fragment(calls, fragment) for fragment in fragments)
                    if len(calls) > known or generated:  # said as soon as it starts, and as it grows (StreamEvent)
                        yield Completion(tool_calls=[calls[i] for i in sorted(calls)], tool_text=generated)
                    finish = json_text(choice.get("finish_reason"), "finish reason")
                    end.finish_reason = finish or end.finish_reason
                    failed |= finish == FAILED
                    _add_logprobs(end, choice.get("logprobs"))
                if said := chunk.get("usage") or _groq_usage(chunk):
                    yield _told(end, said)
            if not done and not end.finish_reason:
                raise UpstreamError("unavailable", "upstream stream ended before it was complete", retryable=True)
            if failed:
                # Read on to its end for the usage that follows it (what it bills): a cut stream, not an answer.
                raise UpstreamError("unavailable", "upstream said the generation failed mid-stream", retryable=True)
        except UpstreamError as exc:
            if started:  # the upstream was generating: what it made so far is billed
                exc.consumed = Completion(
                    input_tokens=end.input_tokens,
                    output_tokens=end.output_tokens,
                    cached_input_tokens=end.cached_input_tokens,
                )
                exc.consumed.tool_calls = [calls[i] for i in sorted(calls)]
            raise
        end.tool_calls = [calls[i] for i in sorted(calls)]
        yield end


def _told(end: Completion, said: Any) -> Completion:
    """A stream's usage report, kept in `end` and told as an event."""
    reported = _usage(said)
    end.input_tokens, end.output_tokens = reported.input_tokens, reported.output_tokens
    end.cached_input_tokens = reported.cached_input_tokens
    told = reported.completion()
    # With the finish said before or with it, the usage is the whole answer's (OpenAI sends it after every choice
    # finished; some servers with every chunk): a stream cut after it is billed so.
    told.finish_reason = end.finish_reason
    return told


def _groq_usage(chunk: dict[str, Any]) -> Any:
    """Groq's own report of a stream's usage, in its last choices chunk (x_groq.usage, OpenAI's fields and Groq's
    timings): the one it sends where it leaves out stream_options' usage chunk. None elsewhere."""
    groq = chunk.get("x_groq")
    return groq.get("usage") if isinstance(groq, dict) else None


def completion(payload: dict[str, Any]) -> Completion:
    """A chat completion object (a reply, or the body of a Batch API output line) as a Completion."""
    choices = json_list(payload.get("choices"), "choices")
    choice = json_obj(choices[0] if choices else None, "choice")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamError("bad_response", "upstream reply has no choices[0].message")
    content = json_text(message.get("content"), "message's content")
    refusal = json_text(message.get("refusal"), "message's refusal")  # then content is null, finish_reason "stop"
    finish = json_text(choice.get("finish_reason"), "finish reason")
    tool_calls = [_checked_call(call) for call in json_list(message.get("tool_calls"), "message's tool calls")]
    done = _usage(payload.get("usage")).completion()
    done.content, done.refusal, done.finish_reason, done.tool_calls = content, refusal, finish, tool_calls
    done.mean_logprob = _mean_logprob(choice)
    done.logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    return done


def _add_logprobs(end: Completion, logprobs: Any) -> None:
    """A stream's log-probabilities come per chunk, each for that chunk's tokens: joined into one object, as the
    unstreamed answer has it."""
    if not isinstance(logprobs, dict):
        return
    joined: dict[str, Any] = end.logprobs if end.logprobs is not None else {"content": None, "refusal": None}
    for part in ("content", "refusal"):
        if isinstance(logprobs.get(part), list):
            if joined[part] is None:
                joined[part] = []
            joined[part].extend(logprobs[part])  # in place: a long stream's join stays linear
    end.logprobs = joined


def _checked_call(call: Any) -> dict[str, Any]:
    """A reply's tool call, handed on as it came (fields of the upstream's own kept) once its id, name and arguments
    are known to be strings, each one left out or null written as "", as a streamed call is built: OpenAI-compatible
    servers may leave out an id or an empty call's arguments, and every reader of a call (the Responses API's
    function_call item) takes OpenAI's whole shape."""
    if not isinstance(call, dict):
        raise UpstreamError("bad_response", "upstream sent a tool call that is not a JSON object")
    function = json_obj(call.get("function"), "tool call's function")
    return {
        **call,
        "id": json_text(call.get("id"), "tool call's id"),
        # Left out, or not a string: OpenAI's one kind of call, rather than an answer refused for a field never read.
        "type": call["type"] if isinstance(call.get("type"), str) and call["type"] else "function",
        "function": {
            **function,
            "name": json_text(function.get("name"), "tool call's name"),
            "arguments": json_text(function.get("arguments"), "tool call's arguments"),
        },
    }


def _add_fragment(calls: dict[int, dict[str, Any]], fragment: Any) -> str:
    """The first fragment of a call brings its id and name, the following ones pieces of its arguments. Returns the
    text the model generated in it (the name, the piece of arguments)."""
    if not isinstance(fragment, dict) or not isinstance(fragment.get("index", 0), int):
        raise UpstreamError("bad_response", "upstream sent a malformed tool call fragment")
    function = json_obj(fragment.get("function"), "tool call fragment's function")
    call = calls.setdefault(
        fragment.get("index", len(calls)), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    call["id"] = json_text(fragment.get("id"), "tool call's id") or call["id"]
    name = json_text(function.get("name"), "tool call's name")
    call["function"]["name"] = name or call["function"]["name"]
    arguments = json_text(function.get("arguments"), "tool call's arguments")
    call["function"]["arguments"] += arguments
    return name + arguments


def body(request: UpstreamRequest, confidence: bool = False, names: bool = True) -> dict[str, Any]:
    """The chat completions request body (also the body of a Batch API input line). `confidence`: log-probabilities
    are asked for the router's confidence signal, when the request wants them (an unstreamed call's). `names`: the
    messages keep their `name` (its provider's registry `message_names`)."""
    messages = [_message(m, names) for m in request.messages]
    # Only the allowlisted passthrough fields, whoever sent the request: one that changes the price (service_tier,
    # store, n, ...) would be billed by the provider beyond what the registry charges. They come first: they may
    # add tools or response_format, never replace model or messages.
    # A field at its "left out" value is left out: some OpenAI-compatible upstreams (Groq) refuse logprobs,
    # top_logprobs and logit_bias with a 400 whatever their value, and the router routed on what was asked (an empty
    # logit_bias, which biases nothing, on nothing).
    passthrough = {
        k: v
        for k, v in request.passthrough.items()
        if k in PASSTHROUGH_FIELDS
        and v is not None
        and not (k == "logprobs" and v is False)
        and not (k == "logit_bias" and v == {})
    }
    body: dict[str, Any] = {**passthrough, "model": request.model, "messages": messages}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    # Asked only of a model the registry says returns them (upstream_request); free of charge; the caller's choice
    # stands.
    if confidence and request.want_logprobs and "logprobs" not in passthrough:
        body["logprobs"] = True
    return body


def _mean_logprob(choice: dict[str, Any]) -> float | None:
    """The mean of choices[0].logprobs.content[*].logprob; None when absent or malformed (never an error:
    it only informs escalation)."""
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens:
        return None
    values = [t.get("logprob") if isinstance(t, dict) else None for t in tokens]
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0]
    return sum(numbers) / len(numbers) if len(numbers) == len(values) else None


def _message(m: Message, names: bool) -> dict[str, Any]:
    # An assistant turn that only called tools has null content, as OpenAI itself sends it.
    out: dict[str, Any] = {"role": m.role, "content": m.content or (None if m.tool_calls else "")}
    if m.name and names:
        out["name"] = m.name
    if m.role == "tool":
        # Even "": the id of a call an upstream gave none (handed on so), which pairing matched. Left out, it was
        # OpenAI's 400 (a tool message must have a tool_call_id) where Anthropic's gateway served the turn.
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        # A call's type may be left out (validation: it can only be "function"), where OpenAI's API requires it: a
        # gRPC caller's call without it was refused by OpenAI and served by Anthropic. Written as OpenAI's SDKs do.
        out["tool_calls"] = [{**call, "type": "function"} for call in m.tool_calls]
    return out


def _usage(usage: Any) -> Reported:
    """The provider's counts; a count that is not a whole number of tokens (negative, a bool, absurdly large)
    is unknown, as if it were missing: it would charge the tenant a negative or unbounded amount. The prompt tokens
    read from its cache (prompt_tokens_details.cached_tokens, billed at a discount) are part of prompt_tokens: a
    cached count that is no count, or more than the prompt, is taken as none, every prompt token at the input price."""
    if not isinstance(usage, dict):
        return Reported(None, None)
    prompt = token_count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = token_count(details.get("cached_tokens")) if isinstance(details, dict) else None
    if prompt is None or cached is None or cached > prompt:
        cached = 0
    return Reported(prompt, token_count(usage.get("completion_tokens")), cached)
