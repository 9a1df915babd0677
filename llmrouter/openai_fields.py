"""OpenAI's chat-completions fields beside the messages, as the router takes them from any caller: typed as OpenAI
documents them (a wrong type is the caller's error, never a coercion, nor a provider's refusal after routing), the
rules between them, and those the router cannot honour. One set of rules for both doors: the edge validates a REST
caller's body with them (services/edge/openai_api.py), the router and the providers service a gRPC caller's
passthrough_json (llmrouter/validation.py). Out of them, a gRPC caller's `{"tools": "x"}` was routed, admitted and
sent on for the upstream to refuse, an attempt that may be charged or retried elsewhere."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    FailFast,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmrouter.passthrough import MAX_STOP, MAX_STOP_CHARS, TOP_LOGPROBS_ALONE

# How pydantic names a union member in an error's path: a type (str, float, constrained-str, list[TextPart], TextPart,
# function-after[...]), never one of the API's field names, which are lowercase words.
UNION_MEMBER = re.compile(r"(str|int|float|bool|none|constrained-\w+|[A-Z]\w*|[\w-]+\[.*\])")
# Fields OpenAI knows that the router cannot honour, whatever their value (null is as if left out): refused by name,
# as serving the request without them would give another answer than asked for, or a bill that the registry's
# prices do not cover.
REFUSED = {
    "audio": "the router serves no audio output (it is billed apart)",
    "web_search_options": "the router runs no web search (it is billed per call, apart from tokens)",
    "moderation": "the router runs no moderation of the input or the output",
    "functions": "the deprecated function calling is not served: send tools",
    "function_call": "the deprecated function calling is not served: send tool_choice",
}
# OpenAI's bounds on the arrays and objects a caller sizes whose every item is validated (unbounded, one of 400,000 bad
# items held the event loop for seconds while pydantic reported each): stop 4 (MAX_STOP) and metadata 16 (its API
# reference), logit_bias 1024 ("Invalid 'logit_bias': too many properties. Expected an object with at most 1024
# properties, ...": tlyleung, "Experiments in Constrained LLM Decoding"), tools 128
# (github.com/vishalmysore/Tools4AI/issues/16). The bounds are checked before the items.
MAX_METADATA = 16
MAX_LOGIT_BIAS = 1024
MAX_TOOLS = 128
# service_tier values the router cannot buy at the registry's price: priority (and fast, its alias) is billed above
# it, flex and scale are tiers the registry has no price for.
REFUSED_TIERS = ("priority", "fast", "flex", "scale")


class FirstError(FailFast):
    """pydantic's FailFast (a list's validation stops at its first bad item), hashable: as a member of a union
    (`StrictStr | Annotated[list[...], FirstError()]`) it must be."""

    __hash__ = object.__hash__


class Closed(BaseModel):
    """A model that takes no field it does not know. pydantic reports each unknown key (and each bad item of a list)
    as an error of its own, and turning 400,000 of them into errors held the event loop for seconds: an object with
    more keys than the model has fields is refused by its first unknown key alone (lists are FailFast, and the
    dicts a caller sizes bounded before validation: the edge's check_lengths)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) > len(cls.model_fields):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            unknown = next((key for key in data if key not in known), None)
            if unknown is not None:
                shown = str(unknown)[:64]
                raise PydanticCustomError("extra_forbidden", "Extra inputs are not permitted: {key}", {"key": shown})
        return data


class TextPart(Closed):
    type: Literal["text"]
    text: StrictStr


JsonObject = dict[StrictStr, Any]
Penalty = Annotated[StrictFloat | StrictInt, Field(ge=-2, le=2)]
# OpenAI's rule for a tool's function name and a json_schema format's name: another is its 400 naming the param. Sent
# on, such a name was refused by OpenAI's upstream and served by others, as routing chose.
OPENAI_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
Name = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=OPENAI_NAME)]
StopSequence = Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)]


class FunctionDefinition(Closed):
    name: Name
    description: StrictStr | None = None
    parameters: JsonObject | None = None
    strict: StrictBool | None = None


class Tool(Closed):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Closed):
    name: Name  # a tool's (OPENAI_NAME): unbounded, a 100 kB name was read whole before anything refused it


class NamedToolChoice(Closed):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Closed):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name
    description: StrictStr | None = None
    json_schema: JsonObject | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(Closed):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Prediction(Closed):
    type: Literal["content"]
    content: StrictStr | Annotated[list[TextPart], FirstError()]


class PromptCacheOptions(Closed):
    mode: Literal["implicit", "explicit"] | None = None
    ttl: Literal["30m"] | None = None


class StreamOptions(Closed):
    include_usage: StrictBool = False
    # OpenAI pads stream events with an `obfuscation` field unless this is false; the edge never pads, so either
    # value is served as it is (a caller saving bandwidth with false gets what it asked for).
    include_obfuscation: StrictBool | None = None


class OpenAIFields(Closed):
    """The fields passed through to a provider (llmrouter/passthrough.py), those the edge accepts and sends to no
    provider (its IGNORED), and n and stream_options, as OpenAI types and bounds them. The end-user ids' lengths are
    bounded apart (END_USER_ID_CHARS), each door refusing in its own words."""

    # Passed through (llmrouter/passthrough.py).
    response_format: ResponseFormat | None = None
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    # The count's bound is the list's (the edge's check_lengths too): on the union it bounded a single stop string to 4
    # characters. Each sequence is bounded apart (MAX_STOP_CHARS).
    stop: StopSequence | Annotated[list[StopSequence], FirstError(), Field(max_length=MAX_STOP)] | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    tools: Annotated[list[Tool], FirstError()] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: (
        dict[Annotated[StrictStr, Field(pattern=r"^[0-9]{1,9}$")], Annotated[StrictInt, Field(ge=-100, le=100)]] | None
    ) = Field(default=None, max_length=MAX_LOGIT_BIAS)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    # Accepted and sent to no provider (the edge's IGNORED).
    metadata: dict[Annotated[StrictStr, Field(max_length=64)], Annotated[StrictStr, Field(max_length=512)]] | None = (
        Field(default=None, max_length=MAX_METADATA)
    )
    store: StrictBool | None = None
    service_tier: Literal["auto", "default"] | None = None
    modalities: Annotated[list[Literal["text"]], FirstError()] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prediction: Prediction | None = None
    prompt_cache_retention: Literal["in_memory", "in-memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    # Mapped by the edge to the router's request (one choice; usage on the stream), and sent nowhere from a gRPC
    # caller's passthrough_json, but typed for both: a gRPC caller's n of "2" or stream_options of [] was served as if
    # it asked for nothing, where OpenAI and the edge refuse it.
    n: StrictInt | None = Field(default=None, ge=1, le=1)  # more choices would multiply the output's cost
    stream_options: StreamOptions | None = None


@dataclass(frozen=True)
class Fault:
    """Why fields are refused, in OpenAI's words: the param it names, and its code (None where OpenAI's is null)."""

    param: str
    message: str
    code: str | None = "invalid_value"


def unservable(raw: dict[str, Any]) -> Fault | None:
    """A field OpenAI knows that the router cannot honour (REFUSED, a tier, audio, more than one choice)."""

    def refused(name: str, message: str) -> Fault:
        return Fault(name, message, "unsupported_parameter")

    for name, reason in REFUSED.items():
        if raw.get(name) is not None:
            return refused(name, f"{name} is not supported: {reason}")
    if (tier := raw.get("service_tier")) in REFUSED_TIERS:
        return refused("service_tier", f"service_tier {tier!r} is not supported: the router serves the default tier")
    if isinstance(modalities := raw.get("modalities"), list) and "audio" in modalities:
        return refused("modalities", "modalities with audio is not supported: the router serves text only")
    if isinstance(n := raw.get("n"), int) and not isinstance(n, bool) and n > 1:
        return refused("n", "n above 1 is not supported: the router returns one choice")
    return None


def crossed(fields: OpenAIFields) -> Fault | None:
    """OpenAI's 400s, in its words, for fields each valid that do not go together: sent on, each was served by an
    upstream that ignores the mismatch and refused by OpenAI's, as routing happened to choose."""
    if fields.top_logprobs is not None and fields.logprobs is not True:
        return Fault("top_logprobs", TOP_LOGPROBS_ALONE)
    if (asked := fields.response_format) is not None and asked.type == "json_schema" and asked.json_schema is None:
        message = "Missing required parameter: 'response_format.json_schema'."
        return Fault("response_format.json_schema", message, "missing_required_parameter")
    if not fields.tools:
        for name in ("tool_choice", "parallel_tool_calls"):  # even tool_choice "none"; OpenAI's code is null
            if getattr(fields, name) is not None:
                return Fault(
                    name, f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified.", None
                )
        return None
    if (twice := twice_named(fields.tools)) is not None:
        return twice
    choice = fields.tool_choice
    if isinstance(choice, NamedToolChoice) and all(tool.function.name != choice.function.name for tool in fields.tools):
        shown = choice.function.name[:64]
        message = (
            f"Invalid value for 'tool_choice': no function named {shown!r} was specified in the 'tools' parameter."
        )
        return Fault("tool_choice", message)
    return None


def twice_named(tools: list[Tool]) -> Fault | None:
    """Two functions of one name: a call names both. Anthropic's Messages API refuses them ("tools: Tool names must
    be unique."), as do other OpenAI-compatible APIs; an upstream taking them calls one of them, which, no one says."""
    first: dict[str, int] = {}
    for i, tool in enumerate(tools):
        name = tool.function.name
        if name in first:
            param = f"tools[{i}].function.name"
            message = (
                f"Invalid '{param}': the function name {name!r} is given twice (tools[{first[name]}] too): each "
                "tool's name must be unique."
            )
            return Fault(param, message)
        first[name] = i
    return None


NOT_AN_OBJECT = "Input should be a JSON object"


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The field path and message a caller can act on. A value that fits no member of a union fails once per
    member, each path naming the member's type (`temperature.float`, `content.list[TextPart].0.type`): the
    deepest failure is the most specific (an image part: its type should be 'text'), and the type names are
    pydantic's, not fields of the API."""
    deepest = max(exc.errors(), key=lambda e: len(e["loc"]))  # the first of the deepest: max keeps the earliest
    # Pydantic's words for an object sent as another type name the class it validates with, not the API's field.
    message = NOT_AN_OBJECT if deepest["type"] == "model_type" else deepest["msg"]
    return param_path(deepest["loc"])[:256], message


def param_path(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as OpenAI spells a param: indexes in brackets, keys after dots
    (`messages[0].content[1].type`). Union members' type names are pydantic's, not the API's, and so is the
    `[key]` that marks a mapping's key as the failure (its message says so): both left out."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]" and not UNION_MEMBER.fullmatch(part):
            path += f".{part}" if path else part
    return path
