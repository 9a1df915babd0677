"""OpenAI's chat completions wire format: the request as callers send it, validated strictly (a wrong type is
a 400, never a coercion), and the bodies the official SDK expects back."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.requests import ClientDisconnect, Request

from llmrouter import parameters
from llmrouter.json_bounds import MAX_JSON_CONTAINERS, MAX_JSON_ITEMS, containers_over, items_over
from llmrouter.json_depth import MAX_JSON_DEPTH, nested_deeper
from llmrouter.message_names import name_fault
from llmrouter.openai_fields import (
    MAX_LOGIT_BIAS,
    MAX_METADATA,
    MAX_TOOLS,
    REFUSED,
    Closed,
    FirstError,
    OpenAIFields,
    TextPart,
    crossed,
    first_error,
    unservable,
)
from llmrouter.passthrough import END_USER_ID_CHARS, MAX_STOP, MAX_STOP_CHARS, PASSTHROUGH_FIELDS, REQUEST_FIELDS
from llmrouter.repeated_keys import RepeatedKey, repeated_key, unique_keys
from llmrouter.server import MAX_MESSAGE_BYTES
from llmrouter.tool_pairing import Turn, pairing_fault
from llmrouter.v1 import common_pb2, router_pb2
from llmrouter.validation import MAX_MESSAGES, AmountError, parse_amount

# Body fields the edge maps to the router's request itself.
MAPPED = REQUEST_FIELDS | {"stream_options", "n"}
ESCALATION_MODES = ("off", "auto", "strict")
# Fields OpenAI knows that only hint or tag, or ask for what the router never does: accepted (and type-checked) so that
# an OpenAI client works unchanged, and sent to no provider, so that neither the answer nor the bill depends on them
# (nor the response cache's key): metadata and store (nothing is kept at a provider), service_tier auto or default
# (the default tier is the one priced), modalities ["text"], reasoning_effort and verbosity (each model is served at
# its own default: the output a provider bills is the output the registry prices), prediction (the answer is the
# same without it, only slower), prompt_cache_retention and prompt_cache_options (the provider's default caching).
IGNORED = frozenset(
    {
        "metadata",
        "store",
        "service_tier",
        "modalities",
        "reasoning_effort",
        "verbosity",
        "prediction",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
INT32_MAX = 2**31 - 1  # bounds integers well inside the int64 fields of the contract
# OpenAI's bounds on the arrays a caller sizes, besides messages (MAX_MESSAGES) and tools (MAX_TOOLS): an assistant
# message's tool_calls 128 (github.com/openai/openai-dotnet/issues/317).
MAX_TOOL_CALLS = 128
# OpenAI documents no bound on a message's content parts; unbounded, an 8 MB body of 200,000 empty text parts held the
# event loop for seconds while they were validated. 2048 per message (the bound OpenAI puts on messages) is generous:
# text parts are joined into one string, and more than a few are only needed between images, which the router refuses.
# A per-message bound alone would still let 2048 messages carry 4 million parts (the body limit, ~300,000), so a request
# holds at most 8192 in all: four per message at the messages' bound, validated in ~50 ms as 2048 string messages are
# in ~15. Both are checked on the parsed JSON, before any part is read.
MAX_CONTENT_PARTS = 2048
MAX_REQUEST_CONTENT_PARTS = 8192
# OpenAI's 400 for stream_options without stream true (its code null).
STREAM_OPTIONS_ALONE = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
# OpenAI's 400 for both output bounds at once (its param max_tokens).
BOTH_MAX_TOKENS = "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported."


class RefusalPart(Closed):
    """An assistant's refusal, as OpenAI's answers carry it and its SDK sends it back: that turn's text, as the model
    saw it. Only an assistant message carries one (refuse_misplaced_refusals)."""

    type: Literal["refusal"]
    refusal: StrictStr


def _part_kind(part: Any) -> str:
    # Any part but a refusal is checked as text (a part of another type is refused first: Message.parts_of_its_role).
    return "RefusalPart" if isinstance(part, dict) and part.get("type") == "refusal" else "TextPart"


# The content parts each role's message may have here, as OpenAI names them: an assistant's are text or refusal (a
# refusal elsewhere is refused after validation, naming the role: refuse_misplaced_refusals); a user's image, audio and
# file parts, which OpenAI takes, the router cannot serve.
ROLE_PARTS = {"assistant": "an assistant message's content parts are 'text' or 'refusal'"}
USER_ONLY_PARTS = ("image_url", "input_audio", "file")


def misplaced_part(role: str, parts: Any) -> tuple[int, str] | None:
    """The index of the first part whose type the role's message never has here, and what is wrong with it."""
    for j, part in enumerate(parts if isinstance(parts, list) else ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind in ("text", "refusal"):
            continue  # no type name: left to validation, which says what the part should be
        accepted = ROLE_PARTS.get(role, f"a {role} message's content parts are 'text'")
        if role == "user" and kind in USER_ONLY_PARTS:
            return j, f"{kind} parts are not supported: the router serves text only; {accepted}"
        return j, f"{accepted}, not {kind[:64]!r}"
    return None


# Tagged with the classes' names: param_path leaves them out of an error's path, as it does a union member's type.
ContentPart = Annotated[
    Annotated[TextPart, Tag("TextPart")] | Annotated[RefusalPart, Tag("RefusalPart")], Discriminator(_part_kind)
]


class FunctionCall(BaseModel):
    name: StrictStr
    arguments: StrictStr  # JSON, as the model wrote it


class ToolCall(BaseModel):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # audio, annotations, a null function_call, ... are tolerated

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | Annotated[list[ContentPart], FirstError()] | None = None
    # An assistant's refusal as OpenAI's answer carries it, beside a null content (the SDK sends it back so).
    refusal: StrictStr | None = None
    name: StrictStr | None = None
    tool_calls: Annotated[list[ToolCall], FirstError()] | None = None
    tool_call_id: StrictStr | None = None

    @field_validator("content", mode="before")
    @classmethod
    def parts_of_its_role(cls, content: Any, info: ValidationInfo) -> Any:
        """A part of a type the message's role never has is refused saying what the role takes: checked as a text
        part, an image part in an assistant message was said to need type 'text', though a refusal is one too."""
        role = info.data.get("role")
        if role is None or (found := misplaced_part(role, content)) is None:
            return content
        j, message = found
        error = PydanticCustomError("content_part_type", message)
        raise ValidationError.from_exception_data(
            "Message", [InitErrorDetails(type=error, loc=(j, "type"), input=content[j]["type"])]
        )

    def text(self) -> str:
        """The turn's words as the model sees them: its text and refusals, in the order sent."""
        if isinstance(self.content, list):
            text = "".join(part.text if isinstance(part, TextPart) else part.refusal for part in self.content)
        else:
            text = self.content or ""
        return "\n".join(words for words in (text, self.refusal) if words)

    def to_router(self) -> common_pb2.ChatMessage:
        return common_pb2.ChatMessage(
            role=self.role,
            content=self.text(),
            name=self.name or "",
            tool_call_id=self.tool_call_id or "",
            tool_calls_json=json.dumps([c.model_dump() for c in self.tool_calls]) if self.tool_calls else "",
        )


class ChatCompletionRequest(OpenAIFields):
    """OpenAI's fields beside the messages (OpenAIFields), and those the edge maps to the router's request."""

    model: StrictStr | None = None
    messages: Annotated[list[Message], FirstError()] = Field(min_length=1)
    stream: StrictBool | None = None  # null, as every optional field of OpenAI's: as if left out (not streamed)
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    # Router extensions (also accepted as x-router-* headers).
    quality_target: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    strong_share: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    quality_kept: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    max_cost_usd: StrictStr | StrictFloat | StrictInt | None = None
    max_latency_ms: StrictInt | None = Field(default=None, ge=1, le=INT32_MAX)
    session_id: StrictStr | None = None
    escalation: Literal["off", "auto", "strict"] | None = None
    buffer_stream: StrictBool | None = None
    verifier_threshold: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)

    def to_router(self, raw: dict[str, Any], tenant: str, api_key: str, request_id: str) -> router_pb2.CompleteRequest:
        passthrough = {k: v for k, v in raw.items() if k in PASSTHROUGH_FIELDS and v is not None}
        request = router_pb2.CompleteRequest(
            messages=[m.to_router() for m in self.messages],
            tenant=tenant,
            api_key=api_key,
            model="" if self.model in (None, "auto") else self.model,
            max_cost_usd="" if self.max_cost_usd is None else str(Decimal(str(self.max_cost_usd))),
            session_id=self.session_id or "",
            escalation=self.escalation or "",
            buffer_stream=bool(self.buffer_stream),
            request_id=request_id,
            passthrough_json=json.dumps(passthrough) if passthrough else "",
        )
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            request.max_tokens = max_tokens
        if self.temperature is not None:
            request.temperature = float(self.temperature)
        if self.quality_target is not None:
            request.quality_target = float(self.quality_target)
        if self.strong_share is not None:
            request.strong_share = float(self.strong_share)
        if self.quality_kept is not None:
            request.quality_kept = float(self.quality_kept)
        if self.max_latency_ms is not None:
            request.max_latency_ms = self.max_latency_ms
        if self.verifier_threshold is not None:
            request.verifier_threshold = float(self.verifier_threshold)
        return request


KNOWN_FIELDS = MAPPED | PASSTHROUGH_FIELDS | IGNORED
EMPTY_MODEL = "model must not be empty: leave it out or give 'auto' to have the router choose"


def check_encoded_size(message: router_pb2.CompleteRequest) -> None:
    """A 413 for a request over gRPC's message limit: a body under the edge's limit can still pass it once its
    tool calls and passthrough fields are re-encoded as ASCII JSON (an emoji of 4 bytes becomes 12)."""
    if message.ByteSize() > MAX_MESSAGE_BYTES:
        limit = MAX_MESSAGE_BYTES
        raise ApiError(413, f"request over {limit} bytes once encoded for the router", code="request_too_large")


def parse_request(body: bytes, max_messages: int = MAX_MESSAGES) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    """Raises ApiError (400) for a body that is not a JSON object in UTF-8, a field that is unknown, cannot be
    honoured or has the wrong type, or an array longer than OpenAI takes."""
    raw = decode_json(body, lambda value: check_lengths(value, max_messages))
    if not isinstance(raw, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    for name in raw:
        if name not in KNOWN_FIELDS and name not in REFUSED:
            raise unknown_argument(name)
    if (fault := unservable(raw)) is not None:
        raise ApiError(400, fault.message, param=fault.param, code=fault.code)
    refuse_long_end_user_ids(raw)
    raw = {k: v for k, v in raw.items() if k not in REFUSED}  # each null: as if left out
    cost_as_written(raw)
    try:
        request = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        param, message = first_error(exc)
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_value") from None
    if (fault := crossed(request)) is not None:
        raise ApiError(400, fault.message, param=fault.param, code=fault.code)
    if request.model == "":
        # OpenAI's 400: routing is promised for a model left out or "auto", not for one sent empty (likely a bug).
        raise ApiError(400, EMPTY_MODEL, param="model", code="invalid_value")
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        # OpenAI's 400, in its words: served, max_tokens was dropped for max_completion_tokens, and a caller bounding
        # its answer (and its cost) by max_tokens was served and charged up to the other bound.
        raise ApiError(400, BOTH_MAX_TOKENS, param="max_tokens", code="invalid_parameter_combination")
    if request.stream_options is not None and not request.stream:
        # OpenAI's 400, in its words: sent on, OpenAI's upstream refused it (a generic "the provider refused the
        # request") and the others served it, as routing chose; asked for alone, usage rides on no stream.
        raise ApiError(400, STREAM_OPTIONS_ALONE, param="stream_options")
    refuse_bad_names(request.messages)
    refuse_unanswerable_tool_results(request.messages)
    refuse_unpaired_tool_calls(request.messages)
    refuse_misplaced_refusals(request.messages)
    refuse_function_calls(request.messages)
    if request.max_cost_usd is not None:
        try:
            cost = parse_amount(str(request.max_cost_usd))
        except AmountError as exc:
            raise ApiError(400, f"max_cost_usd {exc}", param="max_cost_usd", code="invalid_value") from None
        if cost < 0:
            message = "max_cost_usd must be a non-negative decimal number"
            raise ApiError(400, message, param="max_cost_usd", code="invalid_value")
    return request, raw


def unknown_argument(name: str, hint: str = "") -> ApiError:
    """OpenAI's 400 for a field the route does not know, named by its first 64 characters; `hint` follows the name."""
    shown = name[:64]
    return ApiError(400, f"unrecognized request argument: {shown!r}{hint}", param=shown, code="unknown_parameter")


def refuse_long_end_user_ids(raw: dict[str, Any]) -> None:
    """OpenAI's 400, in its words and with its code, for an end-user id past its bound (END_USER_ID_CHARS). One that
    is no string is left for the model's validation to refuse."""
    for name, bound in END_USER_ID_CHARS.items():
        check_string_length(raw.get(name), name, bound)


def refuse_bad_names(messages: list[Message]) -> None:
    """A 400 for a message's name too long or holding a control character (llmrouter/message_names.py), before
    routing: the router refuses it too, for its gRPC callers."""
    for i, message in enumerate(messages):
        if message.name is not None and (fault := name_fault(message.name, f"messages[{i}].name")) is not None:
            raise ApiError(400, fault.message, param=fault.param, code=fault.code)


def refuse_unanswerable_tool_results(messages: list[Message]) -> None:
    """A 400 for a tool result (a tool message; a Responses function_call_output) whose id answers no tool call made
    before it, as OpenAI refuses it: sent on, it was served or refused (a generic "the provider refused the request")
    as routing chose an upstream, OpenAI's and Anthropic's refusing it, a local model answering it. An id left out is
    "", as a provider's call without one is handed on."""
    called: set[str] = set()
    for i, message in enumerate(messages):
        called.update(call.id for call in message.tool_calls or ())
        if message.role == "tool" and (answered := message.tool_call_id or "") not in called:
            param = f"messages[{i}].tool_call_id"
            message_text = f"{param}: no tool call with id {answered[:64]!r} comes before this tool result"
            raise ApiError(400, message_text, param=param, code="invalid_value")


def refuse_unpaired_tool_calls(messages: list[Message]) -> None:
    """A 400 for tool calls and results not paired as OpenAI and Anthropic pair them (llmrouter/tool_pairing.py),
    before routing: the router refuses it too, for its gRPC callers."""
    turns = [Turn(m.role, [call.id for call in m.tool_calls or ()], m.tool_call_id or "") for m in messages]
    if (fault := pairing_fault(turns)) is not None:
        raise ApiError(400, fault.message, param=fault.param, code=fault.code)


def refuse_misplaced_refusals(messages: list[Message]) -> None:
    """A refusal (a content part, or the message's field) in any message but an assistant's is a 400 naming it, as
    OpenAI's: it would be sent on as words of that role, which a model never said."""
    for i, message in enumerate(messages):
        if message.role == "assistant":
            continue
        if message.refusal is not None:
            param = f"messages[{i}].refusal"
            raise ApiError(400, f"{param}: only an assistant message has a refusal", param=param, code="invalid_value")
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if isinstance(part, RefusalPart):
                param = f"messages[{i}].content[{j}].type"
                message_text = f"{param}: a refusal part is only allowed in an assistant message; a {message.role} "
                raise ApiError(400, message_text + "message's parts are text", param=param, code="invalid_value")


def refuse_function_calls(messages: list[Message]) -> None:
    """An assistant message's deprecated function_call (tolerated as an extra, as its SDK sends back null) is a 400
    naming it, as the request's functions and function_call are: dropped, the turn reached the model as if its
    assistant had called nothing."""
    for i, message in enumerate(messages):
        if (message.model_extra or {}).get("function_call") is not None:
            param = f"messages[{i}].function_call"
            told = f"{param} is not supported: the deprecated function calling is not served"
            raise ApiError(400, f"{told}: send the call as tool_calls", param=param, code="unsupported_parameter")


def check_lengths(raw: Any, max_messages: int) -> None:
    """OpenAI's bounds on arrays, checked on the parsed JSON before anything walks it whole: an 8 MB body of 200,000
    tiny messages held the event loop (every request of this process) for seconds."""
    if not isinstance(raw, dict):
        return
    messages = raw.get("messages")
    check_length(messages, "messages", max_messages)
    check_length(raw.get("tools"), "tools", MAX_TOOLS)
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(message, dict):
            check_length(message.get("tool_calls"), f"messages[{i}].tool_calls", MAX_TOOL_CALLS)
    check_content_parts(messages, "messages", ("content",))
    if isinstance(prediction := raw.get("prediction"), dict):
        check_length(prediction.get("content"), "prediction.content", MAX_CONTENT_PARTS)
    check_length(stop := raw.get("stop"), "stop", MAX_STOP)
    for i, sequence in enumerate(stop if isinstance(stop, list) else [stop]):
        check_string_length(sequence, "stop" if isinstance(stop, str) else f"stop[{i}]", MAX_STOP_CHARS)
    check_properties(raw.get("logit_bias"), "logit_bias", MAX_LOGIT_BIAS)
    check_properties(raw.get("metadata"), "metadata", MAX_METADATA)


def check_string_length(value: Any, param: str, limit: int) -> None:
    """A 400 in OpenAI's words for a string longer than its bound; a value of another type is left to validation."""
    if isinstance(value, str) and len(value) > limit:
        message = (
            f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, but got a string "
            f"with length {len(value)} instead."
        )
        raise ApiError(400, message, param=param, code="string_above_max_length")


def check_properties(value: Any, param: str, limit: int) -> None:
    """A 400 in OpenAI's words for an object with more keys than its bound; a value of another type is left to
    validation."""
    if isinstance(value, dict) and len(value) > limit:
        message = (
            f"Invalid '{param}': too many properties. Expected an object with at most {limit} properties, "
            f"but got an object with {len(value)} properties instead."
        )
        raise ApiError(400, message, param=param, code="object_above_max_properties")


def check_content_parts(items: Any, param: str, fields: tuple[str, ...]) -> None:
    """The content parts of each item (a message's `content`, a Responses item's `content` or `output`) within
    MAX_CONTENT_PARTS, and all of the items' within MAX_REQUEST_CONTENT_PARTS: counted, none read."""
    total = 0
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        for field in fields:
            parts = item.get(field)
            if not isinstance(parts, list):
                continue
            name = f"{param}[{i}].{field}"
            check_length(parts, name, MAX_CONTENT_PARTS)
            total += len(parts)
            if total > MAX_REQUEST_CONTENT_PARTS:
                message = (
                    f"Invalid '{name}': too many content parts. Expected at most {MAX_REQUEST_CONTENT_PARTS} "
                    f"across the request's {param}, but got more by this one."
                )
                raise ApiError(400, message, param=name, code="array_above_max_length")


def check_length(value: Any, param: str, limit: int) -> None:
    """A 400 in OpenAI's words for a list over its bound; a value of another type is left to validation."""
    if isinstance(value, list) and len(value) > limit:
        message = (
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(value)} instead."
        )
        raise ApiError(400, message, param=param, code="array_above_max_length")


def decode_json(body: bytes, check: Callable[[Any], None] | None = None) -> Any:
    """Strict JSON in UTF-8: no NaN or Infinity, no key given twice in an object (unique_keys), no nesting deeper
    than MAX_JSON_DEPTH and no lone UTF-16 surrogate (neither JSON nor protobuf strings can carry one onward). A body of
    more than MAX_JSON_CONTAINERS objects and arrays, or MAX_JSON_ITEMS items in them, is a 413, counted before the
    parse, which is what it would cost. `check` sees the value first: a bound it refuses costs only the parse, not the
    walks over every node (which take ~3x as long)."""
    if containers_over(body, MAX_JSON_CONTAINERS):
        message = f"request body has over {MAX_JSON_CONTAINERS} JSON objects and arrays"
        raise ApiError(413, message, code="request_too_large")
    if items_over(body, MAX_JSON_ITEMS):
        message = f"request body has over {MAX_JSON_ITEMS} JSON array elements and object members"
        raise ApiError(413, message, code="request_too_large")
    too_deep = f"request body is nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        text = body.decode()  # strict: UTF-8-encoded surrogates are refused here
        try:
            value = json.loads(
                text, parse_constant=_refuse_constant, parse_float=written_number, object_pairs_hook=unique_keys
            )
        except RepeatedKey:  # parsed again for its path, whose JSON errors past the key are the body's too
            path = repeated_key(text)
            message = f"request body gives {path!r} more than once: give each key once"
            raise ApiError(400, message, param=path, code="duplicate_parameter") from None
    except RecursionError:
        raise ApiError(400, too_deep, code="invalid_json") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise ApiError(400, f"request body is not valid JSON: {json_fault(exc)}", code="invalid_json") from None
    if check is not None:
        check(value)
    if nested_deeper(value):
        raise ApiError(400, too_deep, code="invalid_json")
    if "\\u" in text:  # only an escape can bring a lone surrogate
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ApiError(400, "request body has a lone UTF-16 surrogate in a string", code="invalid_json") from None
    return value


def json_fault(exc: ValueError) -> str:
    """What json.loads found wrong, in the caller's terms: an integer past Python's conversion limit is reported with
    advice to call sys.set_int_max_str_digits(), which only this process could follow. Recognised by its text, since
    a parse_int hook would cost a Python call per integer of every body."""
    if "integer string conversion" in str(exc):
        return f"an integer of more than {sys.get_int_max_str_digits()} digits is past a number's range"
    return str(exc)


class _Written(float):
    """A JSON number too long for its float to be sure to keep it: the float json.loads makes of it, and the text."""

    __slots__ = ("text",)
    text: str


# The least magnitude of a nonzero float at full precision (a subnormal has fewer digits).
_LEAST = sys.float_info.min


def written_number(text: str) -> float:
    """json.loads's parse_float: the float, kept with its text when the text is longer than a float is sure to keep.
    Every number with a fraction or an exponent comes here, millions in a body: a text of at most 15 characters has at
    most 15 significant digits, which a float at full precision keeps (DBL_DIG), so nearly all are a float alone, 24
    bytes. Kept with its text, each was a float with an attribute dict, ~450 bytes: 8 MiB of `0.5,` held ~1 GB. A
    longer text keeps its text whatever its value, so that max_cost_usd is judged as written (parse_amount)."""
    number = float(text)
    if not math.isfinite(number):  # 1e400: as Infinity, onward, it is no JSON at all
        raise ValueError(f"{text[:32]} is past a number's range")
    if len(text) <= 15 and (abs(number) >= _LEAST or _zero(text)):
        return number
    written = _Written(number)
    written.text = text
    return written


def _zero(text: str) -> bool:
    """Whether a JSON number's text is a zero (1e-400 is not: its float underflows to one)."""
    return not any(digit in "123456789" for digit in text.lower().partition("e")[0])


def cost_as_written(body: Any) -> Any:
    """A body's max_cost_usd written as a JSON number, as its caller wrote it (its text, which the field takes): as
    a float, one of more than 17 significant digits a hair under a whole pico-dollar amount (1.9999999999999999999e-6)
    was rounded up to it (2e-06), and a request could be charged past its cap. Needs numbers parsed by decode_json or
    loads_line (written_number); a body that is no object is returned as it is."""
    if isinstance(body, dict) and isinstance(body.get("max_cost_usd"), _Written):
        body["max_cost_usd"] = body["max_cost_usd"].text
    return body


def loads_line(text: str) -> Any:
    """A batch input file's line as JSON, its body's max_cost_usd as written (cost_as_written): the line is written
    out again as JSON for parse_request, which would otherwise see the float's shortest form."""
    line = json.loads(text, parse_float=written_number)
    if isinstance(line, dict):
        cost_as_written(line.get("body"))
    return line


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class ApiError(Exception):
    """An error as OpenAI reports it: HTTP status plus {"error": {message, type, param, code}}, its type one of
    OpenAI's (what a caller's code may branch on, the SDK's exception class being the status's): a caller's error
    invalid_request_error (401 invalid_api_key and 404 model_not_found too, as at OpenAI), a 429 insufficient_quota
    (its code too) or else requests (OpenAI's requests-per-minute limit: its code rate_limit_exceeded), a 5xx
    server_error. A 403 (an operator route, not OpenAI's API) is permission_error."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: str = "",
        charged_usd: str = "",
        request_id: str = "",
        retryable: bool = True,
        held_usd: str = "",
        cost_pending: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after
        # What the failed request was charged (its attempts' cost), when anything; a duplicate's: what the request
        # of its id was charged.
        self.charged_usd = charged_usd
        self.held_usd = held_usd  # a duplicate's whose charge is still open: the hold it has now
        # A completion its router dropped mid-call: perhaps admitted, then charged by the reconciler (its hold at most).
        self.cost_pending = cost_pending or bool(held_usd)
        self.request_id = request_id  # when the request reached the router: its access-log and ledger name
        # False when sending the same request again cannot succeed (a budget its spend alone has exhausted): OpenAI's
        # SDKs retry a 429 unless told `x-should-retry: false`.
        self.retryable = retryable

    def body(self) -> dict[str, Any]:
        if self.status == 429:
            kind = "insufficient_quota" if self.code == "insufficient_quota" else "requests"
        elif self.status >= 500:
            kind = "server_error"
        else:
            kind = "permission_error" if self.status == 403 else "invalid_request_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        body: dict[str, Any] = {"error": error}
        # What it cost, as an answer's x_router.cost_usd: a batch line's error file counts it. A charge still open
        # (or perhaps opened, by a router that went away) has no cost yet: it is pending, holding held_usd now.
        told: dict[str, Any] = {"cost_usd": self.charged_usd} if self.charged_usd else {}
        if self.cost_pending:
            told["cost_pending"] = True
        if self.held_usd:
            told["held_usd"] = self.held_usd
        if told:
            body["x_router"] = told
        return body


def completion_body(response: router_pb2.CompleteResponse) -> dict[str, Any]:
    # As OpenAI's: a refusal beside null content (what its SDK's .parse() reads as parsed None), else a null refusal.
    message: dict[str, Any] = {"role": "assistant", "content": response.content, "refusal": response.refusal or None}
    if response.refusal:
        message["content"] = response.content or None
    if response.tool_calls_json:
        # OpenAI sends null content, not "", when the model only called tools.
        message.update(content=response.content or None, tool_calls=json.loads(response.tool_calls_json))
    return {
        "id": f"chatcmpl-{response.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs(response),
                "finish_reason": response.finish_reason or "stop",
            }
        ],
        "usage": usage_body(response),
        "x_router": router_extension(response),
    }


def chunk_body(
    request_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    """One chunk of a stream; every chunk of a stream has the same `created`, the completion's, as OpenAI's."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def tool_calls_delta(response: router_pb2.CompleteResponse) -> dict[str, Any]:
    """A stream's tool calls, all whole in one delta (OpenAI streams them in pieces; SDKs join either)."""
    calls = json.loads(response.tool_calls_json)
    return {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}


def logprobs(response: router_pb2.CompleteResponse) -> dict[str, Any] | None:
    """choices[0].logprobs: the answer's when the request asked for them, else null, as OpenAI sends it."""
    return json.loads(response.logprobs_json) if response.logprobs_json else None


def usage_body(response: router_pb2.CompleteResponse) -> dict[str, Any]:
    """OpenAI's usage: of the prompt tokens, those the provider read from its prompt cache (billed at its cached
    price), and those it wrote to it when there were any (cache_write_tokens, as OpenAI's SDKs read it; Anthropic's
    cache writes, at its write price; also x_router.cache_write_input_tokens)."""
    usage = response.usage
    details: dict[str, int] = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_write_input_tokens:
        details["cache_write_tokens"] = usage.cache_write_input_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": details,
    }


def cost_told(response: router_pb2.CompleteResponse) -> dict[str, Any]:
    """An answer's cost in x_router: its exact charge, or, when the router could not read what the ledger charged it
    (cost_pending), no amount but that it is pending, as a failure whose charge is pending says it."""
    return {"cost_pending": True} if response.cost_pending else {"cost_usd": response.cost_usd}


def cost_headers(response: router_pb2.CompleteResponse) -> dict[str, str]:
    """cost_told as an answer's headers: x-router-cost-usd, or x-router-cost-pending in its stead."""
    return {"x-router-cost-pending": "true"} if response.cost_pending else {"x-router-cost-usd": response.cost_usd}


def router_extension(response: router_pb2.CompleteResponse) -> dict[str, Any]:
    """The router's accounting, beside OpenAI's fields (SDKs keep unknown fields as extras)."""
    return {
        **cost_told(response),
        "provider": response.provider,
        "latency_ms": response.latency_ms,
        "reason": response.decision.reason,
        "quality_target": round(response.decision.quality_target, 4),  # as applied, e.g. from a strong_share
        "cache_hit": response.cache_hit,
        "escalated": response.escalated,
        "escalation_signal": response.escalation_signal,
        "session_affinity": response.decision.session_affinity,
        "retries": response.retries,
        "tokens_estimated": response.usage.estimated,
        # Of the prompt tokens, those the provider wrote to its prompt cache (Anthropic's cache_creation_input_tokens),
        # billed at its cache write price.
        "cache_write_input_tokens": response.usage.cache_write_input_tokens,
        "candidates": [
            {"model": c.model, "quality": round(c.predicted_quality, 4), "estimated_cost_usd": c.estimated_cost_usd}
            for c in response.decision.candidates
        ],
    }


def models_body(models: list[common_pb2.ModelInfo]) -> dict[str, Any]:
    """OpenAI's model list, each entry with its prices, context window and the request parameters it honours
    (OpenRouter's supported_parameters); "auto" with those a routed request honours among the models listed."""
    routed = parameters.for_routed(m.supported_parameters for m in models)
    entries = [
        {"id": "auto", "object": "model", "created": 0, "owned_by": "llm-cost-router", "supported_parameters": routed}
    ]
    entries += [
        {
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": m.provider,
            "tier": m.tier,
            "input_usd_per_mtok": m.input_usd_per_mtok,
            "output_usd_per_mtok": m.output_usd_per_mtok,
            "context_window": m.context_window,
            "supported_parameters": list(m.supported_parameters),
            **(
                {
                    "batch_input_usd_per_mtok": m.batch_input_usd_per_mtok,
                    "batch_output_usd_per_mtok": m.batch_output_usd_per_mtok,
                }
                if m.batch_input_usd_per_mtok
                else {}
            ),
            **cache_prices(m),
        }
        for m in models
    ]
    return {"object": "list", "data": entries}


def cache_prices(model: common_pb2.ModelInfo) -> dict[str, str]:
    """The model's prompt-cache prices its registry entry gives (OpenAI's models have no write price)."""
    prices = {
        "cached_input_usd_per_mtok": model.cached_input_usd_per_mtok,
        "cache_write_usd_per_mtok": model.cache_write_usd_per_mtok,
    }
    return {name: price for name, price in prices.items() if price}


async def read_limited(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it passes `limit` bytes, declared or not: a chunked body has no
    length to check up front. A caller that leaves mid-body is a 499, never a 500."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    except ClientDisconnect:
        raise ApiError(499, "the client closed the request", code="client_closed_request") from None
    return bytes(body)
