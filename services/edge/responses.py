"""OpenAI's Responses API (`POST /v1/responses`), stateless: the request is translated into a chat completion
before it reaches the chat path (the same routing, limits, money, headers and errors), the answer after. Nothing
is stored, so what needs a stored response or a built-in tool is refused by name rather than served otherwise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
)

from llmrouter.openai_fields import Closed, FirstError, FunctionDefinition, JsonObject, Name, first_error
from llmrouter.passthrough import ROUTER_EXTENSIONS
from llmrouter.validation import MAX_MESSAGES
from services.edge.openai_api import (
    INT32_MAX,
    MAX_METADATA,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    ApiError,
    check_content_parts,
    check_length,
    check_properties,
    cost_as_written,
    decode_json,
    unknown_argument,
)
from services.edge.responses_errors import CALLS_ONLY, MESSAGE_ITEM, OUTPUT_ITEM, WHOLE, Origin

# OpenAI's Responses fields handed to the chat path as they are: same name, same meaning, validated there.
SAME_AS_CHAT = frozenset(
    {
        "model",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "metadata",
        "store",  # accepted, and nothing is stored: the answer's `store` says false
        "service_tier",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
TRANSLATED = frozenset(
    {"input", "instructions", "max_output_tokens", "tools", "tool_choice", "text", "stream", "stream_options"}
)
# Fields OpenAI knows that the router cannot honour, unless null (or at the default given): refused by name.
NO_STATE = "the router keeps no responses or conversations: send the whole conversation as input"
REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "previous_response_id": (NO_STATE, ()),
    "conversation": (NO_STATE, ()),
    "prompt": ("the router keeps no prompt templates: send instructions and input", ()),
    "background": ("the router runs no background responses: it keeps none to fetch later", (False,)),
    "reasoning": ("reasoning options are not served: each model runs at its own default", ()),
    "include": ("no extra output data is served (no reasoning, logprobs or built-in tool results)", ([],)),
    "truncation": ("the router never drops input: a prompt over the context window is a 400", ("disabled",)),
    "top_logprobs": ("log-probabilities are served on /v1/chat/completions only", (0,)),
    "max_tool_calls": ("the router runs no built-in tools to count", ()),
    "context_management": ("the router keeps no context to manage", ()),
    "moderation": ("the router runs no moderation of the input or the output", ()),
    "image": ("the router serves no image generation", ()),
    "access_programs": ("the router serves no access programs", ()),
    "background_options": ("the router runs no background responses", ()),
}
KNOWN_FIELDS = SAME_AS_CHAT | TRANSLATED | ROUTER_EXTENSIONS | REFUSED.keys()
UNSUPPORTED_PARTS = {"input_image", "input_file", "input_audio"}
INPUT_PARTS = {"input_text", *UNSUPPORTED_PARTS}  # a user, system or developer message's
ANSWER_PARTS = {"output_text", "refusal"}  # an assistant message's: a previous answer sent back
ROLES = ("user", "assistant", "system", "developer")


class InputText(Closed):
    type: Literal["input_text"]
    text: StrictStr


class OutputText(BaseModel):
    """An answer's text part, as a previous response's output item sent back as input carries it."""

    model_config = ConfigDict(extra="allow")  # annotations, logprobs: not part of the conversation

    type: Literal["output_text"]
    text: StrictStr


class OutputRefusal(Closed):
    """An answer's refusal part, as a previous response's output item sent back as input carries it: that assistant
    turn's text, as the model saw it. Only an assistant message carries one (refuse_misplaced_part)."""

    type: Literal["refusal"]
    refusal: StrictStr


def _part_kind(part: Any) -> str:
    # Any other part is checked as input text: an unknown part's error names its type, which should be 'input_text'.
    kind = part.get("type") if isinstance(part, dict) else None
    return {"output_text": "OutputText", "refusal": "OutputRefusal"}.get(
        kind if isinstance(kind, str) else "", "InputText"
    )


# Tagged with the classes' names: first_error leaves them out of an error's path, as it does a union member's type.
MessagePart = Annotated[
    Annotated[InputText, Tag("InputText")]
    | Annotated[OutputText, Tag("OutputText")]
    | Annotated[OutputRefusal, Tag("OutputRefusal")],
    Discriminator(_part_kind),
]


class MessageItem(Closed):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: StrictStr | Annotated[list[MessagePart], FirstError()]
    id: StrictStr | None = None  # a previous response's output item, sent back
    status: StrictStr | None = None
    # An assistant message's label for the models that read it (OpenAI's SDK sends it back, null when none): not
    # part of the chat conversation.
    phase: Literal["commentary", "final_answer"] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.refusal if isinstance(part, OutputRefusal) else part.text for part in self.content)


class FunctionCallItem(Closed):
    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallOutputItem(Closed):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr | Annotated[list[InputText], FirstError()]
    id: StrictStr | None = None
    status: StrictStr | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


ITEMS: dict[str, type[BaseModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


class FunctionTool(FunctionDefinition):
    type: Literal["function"]


class NamedFunctionChoice(Closed):
    type: Literal["function"]
    name: Name  # a tool's (OPENAI_NAME), as the chat route's tool_choice names one


class TextFormat(Closed):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: Name | None = None
    description: StrictStr | None = None
    json_schema: JsonObject | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextConfig(Closed):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(Closed):
    """The Responses API's stream options: include_usage is the chat route's (this route's stream always ends with
    its usage, in response.completed), and OpenAI's Responses route refuses it, as any key it does not know."""

    include_obfuscation: StrictBool | None = None  # served as the chat route serves it: the edge never pads


MIN_OUTPUT_TOKENS = 16


class ResponsesFields(BaseModel):
    """The fields this module translates; the others are the chat path's to check."""

    model_config = ConfigDict(extra="ignore")

    input: StrictStr | Annotated[list[JsonObject], FirstError()]
    instructions: StrictStr | None = None
    # OpenAI's Responses API refuses fewer than 16 (its chat route takes 1): a call passing here passes there.
    max_output_tokens: StrictInt | None = Field(default=None, ge=MIN_OUTPUT_TOKENS, le=INT32_MAX)
    tools: Annotated[list[JsonObject], FirstError()] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None  # checked here: without tools it never reaches the chat route
    text: TextConfig | None = None
    stream: StrictBool | None = None  # null: as if left out (not streamed), as OpenAI takes it
    stream_options: StreamOptions | None = None


def invalid(exc: ValidationError, prefix: str = "") -> ApiError:
    """A validation error of the item or tool at `prefix` (`input[2]`), or of the request when none."""
    param, message = first_error(exc)
    if prefix:
        param = prefix + (param if not param or param.startswith("[") else f".{param}")
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="unsupported_parameter")


def check_fields(raw: dict[str, Any]) -> None:
    """Unknown fields as the chat route refuses them; fields that need state or a built-in capability by name."""
    for name in raw:
        if name not in KNOWN_FIELDS:
            raise unknown_argument(name)
    for name, (reason, defaults) in REFUSED.items():
        value = raw.get(name)
        if value is not None and not any(type(value) is type(d) and value == d for d in defaults):
            raise unsupported(name, f"{name} is not supported: {reason}")


def to_messages(fields: ResponsesFields) -> tuple[list[dict[str, Any]], list[Origin]]:
    """The conversation as chat messages: instructions first as a system message, then each input item; beside
    them, where each came from (its errors name that)."""
    messages: list[dict[str, Any]] = []
    origins: list[Origin] = []
    if fields.instructions is not None:
        messages.append({"role": "system", "content": fields.instructions})
        origins.append(Origin("instructions", WHOLE))
    if isinstance(fields.input, str):
        return [*messages, {"role": "user", "content": fields.input}], [*origins, Origin("input", WHOLE)]
    if not fields.input:
        raise ApiError(400, "input must not be empty", param="input", code="invalid_value")
    for i, raw in enumerate(fields.input):
        item = parse_item(raw, f"input[{i}]")
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
            origins.append(Origin(f"input[{i}]", MESSAGE_ITEM))
        elif isinstance(item, FunctionCallItem):
            function = {"name": item.name, "arguments": item.arguments}
            call = {"id": item.call_id, "type": "function", "function": function}
            last = messages[-1] if messages else {}
            if last.get("role") == "assistant":  # the answer's text and its calls, or parallel calls: one turn
                calls = last.setdefault("tool_calls", [])
                if len(calls) == MAX_TOOL_CALLS:  # else refused as a chat message's tool_calls, never sent here
                    message = f"Invalid 'input': more than {MAX_TOOL_CALLS} function_call items in one turn"
                    raise ApiError(400, message, param=f"input[{i}]", code="array_above_max_length")
                calls.append(call)
                origins[-1].calls.append(i)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                origins.append(Origin(f"input[{i}]", CALLS_ONLY, [i]))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
            origins.append(Origin(f"input[{i}]", OUTPUT_ITEM))
    return messages, origins


def parse_item(raw: dict[str, Any], param: str) -> BaseModel:
    kind = raw.get("type", "message")
    if not isinstance(kind, str):  # a list or object is no type name, nor a key to look up (unhashable)
        raise ApiError(400, f"{param}.type: must be a string", param=f"{param}.type", code="invalid_value")
    if kind not in ITEMS:
        shown = kind[:64]
        message = f"input item type {shown!r} is not supported: only messages and function calls with their outputs"
        raise unsupported(f"{param}.type", message)
    content = raw.get("content") if kind == "message" else raw.get("output")
    for j, part in enumerate(content if isinstance(content, list) else []):
        if kind == "message":
            refuse_misplaced_part(raw.get("role"), part, f"{param}.content[{j}].type")
        if isinstance(part, dict) and isinstance(part.get("type"), str) and part["type"] in UNSUPPORTED_PARTS:
            field = "content" if kind == "message" else "output"
            message = f"{part['type']} is not supported: the router serves text input only"
            raise unsupported(f"{param}.{field}[{j}].type", message)
    try:
        item = ITEMS[kind].model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc, param) from None
    return item


def refuse_misplaced_part(role: Any, part: Any, param: str) -> None:
    """OpenAI's 400 for a part in another role's message: an answer's parts (output_text, refusal) are an assistant
    message's alone (a previous response sent back), input parts a user, system or developer message's. Sent on, they
    would be words of that role, which it never said. Checked before the part is read, so an input part the router
    does not serve (input_image) in an assistant message is refused for its role, as OpenAI refuses it."""
    kind = part.get("type") if isinstance(part, dict) else None
    if role not in ROLES or not isinstance(kind, str):
        return  # the item's validation names what is wrong
    article = "an" if kind[:1] in tuple("aeiou") else "a"
    if role != "assistant" and kind in ANSWER_PARTS:
        message = f"{param}: {article} {kind} part is only allowed in an assistant message (use input_text)"
    elif role == "assistant" and kind in INPUT_PARTS:
        message = f"{param}: {article} {kind} part is not allowed in an assistant message (use output_text or refusal)"
    else:
        return
    raise ApiError(400, message, param=param, code="invalid_value")


def to_chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chat_tools = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            shown = str(tool.get("type"))[:64]
            message = f"tool type {shown!r} is not supported: the router runs no built-in tools, only function tools"
            raise unsupported(f"tools[{i}].type", message)
        try:
            function = FunctionTool.model_validate(tool)
        except ValidationError as exc:
            raise invalid(exc, f"tools[{i}]") from None
        chat_tools.append({"type": "function", "function": function.model_dump(exclude={"type"}, exclude_none=True)})
    return chat_tools


def to_response_format(text_format: TextFormat) -> dict[str, Any]:
    if text_format.type != "json_schema":
        return {"type": text_format.type}
    if text_format.name is None:
        raise ApiError(400, "text.format.name: Field required", param="text.format.name", code="invalid_value")
    schema = text_format.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
    return {"type": "json_schema", "json_schema": schema}  # checked as the chat route's response_format


def check_lengths(raw: Any) -> None:
    """The chat route's bounds (openai_api.check_lengths), input items counted as messages: before any is read."""
    if isinstance(raw, dict):
        check_length(raw.get("input"), "input", MAX_MESSAGES)
        check_length(raw.get("tools"), "tools", MAX_TOOLS)
        check_content_parts(raw.get("input"), "input", ("content", "output"))
        check_properties(raw.get("metadata"), "metadata", MAX_METADATA)


@dataclass(frozen=True)
class Sent:
    """What a translated request's answer and errors refer back to."""

    echoed: dict[str, Any]  # the request's fields its answer echoes
    origins: list[Origin]  # where each chat message came from: errors name that (responses_errors)


def to_chat(body: bytes) -> tuple[bytes, Sent]:
    """The chat completion request for a Responses one, and what its answer and errors refer back to; 400 for what
    cannot be translated."""
    raw = decode_json(body, check_lengths)
    if not isinstance(raw, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    check_fields(raw)
    if raw.get("input") is None:
        raise ApiError(400, "input is required: the router keeps no prompts or conversations", param="input")
    try:
        fields = ResponsesFields.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc) from None
    chat: dict[str, Any] = {k: v for k, v in raw.items() if k in SAME_AS_CHAT | ROUTER_EXTENSIONS}
    chat["messages"], origins = to_messages(fields)
    if fields.max_output_tokens is not None:
        chat["max_completion_tokens"] = fields.max_output_tokens
    tools = to_chat_tools(fields.tools or [])
    if tools:
        chat["tools"] = tools
    else:  # the answer echoes it, the chat route takes it only beside tools: a hint about none
        chat.pop("parallel_tool_calls", None)
    if isinstance(fields.tool_choice, NamedFunctionChoice):
        if all(tool["function"]["name"] != fields.tool_choice.name for tool in tools):
            # The Responses API's 400, in its words (the chat route's names the function: another message).
            raise ApiError(400, "Tool choice 'function' not found in 'tools' parameter.", param="tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": fields.tool_choice.name}}
    elif fields.tool_choice is not None and (tools or fields.tool_choice == "required"):
        # Without tools "auto" (the default the answer echoes) and "none" ask for nothing; "required" asks for a call
        # no tool can make: the chat route's 400.
        chat["tool_choice"] = fields.tool_choice
    if fields.text is not None and fields.text.format is not None:
        chat["response_format"] = to_response_format(fields.text.format)
    if fields.text is not None and fields.text.verbosity is not None:
        chat["verbosity"] = fields.text.verbosity
    if fields.stream:
        # The usage (and cost) come in the chat stream's last chunk only when asked: response.completed carries them.
        chat["stream"] = True
        asked = fields.stream_options.model_dump(exclude_none=True) if fields.stream_options else {}
        chat["stream_options"] = {**asked, "include_usage": True}
    elif fields.stream_options is not None:
        raise ApiError(400, "stream_options is only allowed with stream true", param="stream_options")
    # Written out again as JSON: its max_cost_usd as its caller wrote it, not the float's shortest form.
    return json.dumps(cost_as_written(chat)).encode(), Sent(echo(raw, fields), origins)


def echo(raw: dict[str, Any], fields: ResponsesFields) -> dict[str, Any]:
    """The request's settings as OpenAI's response object repeats them (its defaults where left out)."""
    text = fields.text.model_dump(by_alias=True, exclude_none=True) if fields.text else {}
    text.setdefault("format", {"type": "text"})
    tool_choice = fields.tool_choice
    return {
        "instructions": fields.instructions,
        "max_output_tokens": fields.max_output_tokens,
        "temperature": raw.get("temperature"),
        "top_p": raw.get("top_p"),
        "tools": fields.tools or [],
        "tool_choice": tool_choice.model_dump() if isinstance(tool_choice, BaseModel) else tool_choice or "auto",
        "text": text,
        "parallel_tool_calls": raw.get("parallel_tool_calls", True) is not False,
        "metadata": raw.get("metadata") or {},
        "store": False,  # whatever was asked: nothing is kept
        "user": raw.get("user"),
        "safety_identifier": raw.get("safety_identifier"),
        "prompt_cache_key": raw.get("prompt_cache_key"),
        "previous_response_id": None,
        "reasoning": None,
        "background": False,
        "truncation": "disabled",
    }


INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_id(chat_id: str) -> str:
    return chat_id.removeprefix("chatcmpl-")


def output_text(text: str) -> dict[str, Any]:
    """An answer's text part; OpenAI's schema requires its annotations and logprobs (none here), and clients typed
    from that schema refuse a part without them."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    """An answer's refusal part, as OpenAI's Responses API gives the model's refusal."""
    return {"type": "refusal", "refusal": refusal}


def message_item(ident: str, text: str, status: str, refusal: str = "") -> dict[str, Any]:
    """The answer's message: its text part (an empty one when it said nothing) and its refusal part, when it
    refused (alone, unless it also said something)."""
    parts = [output_text(text)] if text or not refusal else []
    return {
        "type": "message",
        "id": f"msg_{ident}",
        "status": status,
        "role": "assistant",
        "content": parts + ([refusal_part(refusal)] if refusal else []),
    }


def function_call_item(ident: str, index: int, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{ident}_{index}",
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": status,
    }


def usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": chat_usage["prompt_tokens_details"],  # cached_tokens, and cache_write_tokens if any
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": chat_usage["total_tokens"],
    }


def response_object(
    ident: str,
    created: int,
    model: str,
    echoed: dict[str, Any],
    status: str,
    output: list[dict[str, Any]],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """The response object, its usage left to the caller (none before the answer is whole)."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if reason and status == "completed" else status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": model,
        "output": output,
        **echoed,
        "usage": None,
    }


def response_body(chat: dict[str, Any], echoed: dict[str, Any]) -> dict[str, Any]:
    """An unstreamed chat completion as the response object; its x_router accounting kept beside OpenAI's fields."""
    choice, ident = chat["choices"][0], response_id(chat["id"])
    message, finish = choice["message"], choice["finish_reason"]
    status = "incomplete" if finish in INCOMPLETE_REASONS else "completed"
    calls, text, refusal = message.get("tool_calls") or [], message["content"] or "", message.get("refusal") or ""
    output = [message_item(ident, text, status, refusal)] if text or refusal or not calls else []
    output += [function_call_item(ident, i, call) for i, call in enumerate(calls)]
    body = response_object(ident, chat["created"], chat["model"], echoed, "completed", output, finish)
    body.update(usage=usage(chat["usage"]), x_router=chat["x_router"])
    return body
