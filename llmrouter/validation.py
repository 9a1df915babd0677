"""One validation of a generation request, shared by the router (CompleteRequest) and the providers service
(GenerateRequest): the chat messages and the fields both carry. A bad field is an INVALID_ARGUMENT naming it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from pydantic import ValidationError

from llmrouter.errors import invalid
from llmrouter.json_bounds import CONTAINER_MARKS, ITEM_MARKS, MAX_JSON_CONTAINERS, MAX_JSON_ITEMS, first_over
from llmrouter.json_depth import MAX_JSON_DEPTH, nested_deeper
from llmrouter.message_names import name_fault
from llmrouter.openai_fields import OpenAIFields, crossed, first_error, unservable
from llmrouter.passthrough import CALLER_FIELDS, END_USER_ID_CHARS, REQUEST_FIELDS
from llmrouter.repeated_keys import RepeatedKey, repeated_key, unique_keys
from llmrouter.tool_pairing import Turn, pairing_fault

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# OpenAI's bound on a chat's messages ("Invalid 'messages': array too long. Expected an array with maximum length
# 2048, ...": github.com/obot-platform/obot/issues/1009), which the edge holds REST callers to; gRPC callers may send
# one more, as the edge's Responses route does: its instructions, then up to 2048 input items. Past it, a caller's
# request would cost every message's validation, tokenizing and re-encoding before anything refused it.
MAX_MESSAGES = 2048
MAX_ROUTED_MESSAGES = MAX_MESSAGES + 1
# A decimal number as a caller writes one (JSON's form, a leading '+' or a bare '.5' too). Decimal() alone also takes
# '1_0' (read as 10), blanks around the number, non-ASCII digits (an Arabic-Indic one is 1), 'NaN' and 'Infinity':
# a cost cap written so is refused, not read as some other amount.
DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_decimal(text: str) -> Decimal | None:
    """text as a decimal number, or None when it is not one as written (DECIMAL) or its exponent is past any
    Decimal's."""
    if not DECIMAL.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except ArithmeticError:
        return None


# An amount of USD a caller writes (max_cost_usd, a budget's limit_usd, retry_budget_usd). Money is counted in
# pico-dollars (1e-12) and no amount allowed reaches 1e10: these bounds hold any amount written sensibly, with room to
# spare. Past them a digit means nothing, and arithmetic on `0.` then 5,000 zeros then a 1, or on 1e-100000, grows
# with its digits and exponent (a plain notation of either is thousands of characters).
MAX_AMOUNT_CHARS = 64
MAX_AMOUNT_DIGITS = 30
MAX_AMOUNT_PLACE = 30  # no digit below 10**-30 or above 10**30
AMOUNT_FORM = (
    f"a decimal number of at most {MAX_AMOUNT_DIGITS} significant digits and {MAX_AMOUNT_CHARS} characters, with no "
    f"digit below 1e-{MAX_AMOUNT_PLACE} or above 1e{MAX_AMOUNT_PLACE}"
)


class AmountError(ValueError):
    """Why a text is no amount, to follow the field's name in a refusal."""


def parse_amount(text: str) -> Decimal:
    """text as an amount of USD (AMOUNT_FORM; its sign and range are the caller's to check). An amount below a
    pico-dollar is kept, for its caller to round down (a cap of 1e-13 caps at 0, never at nothing)."""
    if not DECIMAL.fullmatch(text):
        raise AmountError(f"must be {AMOUNT_FORM}")
    amount = parse_decimal(text) if len(text) <= MAX_AMOUNT_CHARS else None
    if (
        amount is None
        or len(amount.as_tuple().digits) > MAX_AMOUNT_DIGITS
        or int(amount.as_tuple().exponent) < -MAX_AMOUNT_PLACE
        or amount.adjusted() > MAX_AMOUNT_PLACE
    ):
        raise AmountError(f"has more digits than an amount of USD needs: it must be {AMOUNT_FORM}")
    return amount


class ChatMessage(Protocol):
    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls_json: str


class GenerationRequest(Protocol):
    """The fields CompleteRequest and GenerateRequest share."""

    @property
    def messages(self) -> Sequence[ChatMessage]: ...

    max_tokens: int
    temperature: float
    passthrough_json: str

    def HasField(self, field_name: Any) -> bool: ...


@dataclass(frozen=True)
class Validated:
    """What validation parsed on the way, so nobody parses it twice."""

    tool_calls: list[list[dict[str, Any]]]  # per message, its tool calls (empty when none)
    passthrough: dict[str, Any]  # OpenAI-style extras, a JSON object
    # The first tool call whose arguments are no JSON object (object_arguments), named as OpenAI names the field
    # (messages[i].tool_calls[j].function.arguments); '' when there is none. Valid, and sent on as written to OpenAI,
    # but not to a model that takes them only as an object (registry `raw_tool_arguments`).
    raw_arguments_at: str


def check_message_count(messages: Sized) -> None:
    """Before anything reads the messages one by one."""
    if len(messages) > MAX_ROUTED_MESSAGES:
        raise invalid(f"messages must be at most {MAX_ROUTED_MESSAGES}, got {len(messages)}", "messages")


def validate(request: GenerationRequest) -> Validated:
    if not request.messages:
        raise invalid("messages must not be empty", "messages")
    check_message_count(request.messages)
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise invalid(
                f"messages[{i}].role must be one of {sorted(ROLES)}, got {message.role!r}", f"messages[{i}].role"
            )
        if (fault := name_fault(message.name, f"messages[{i}].name")) is not None:
            raise invalid(fault.message, fault.param)
    if not any(m.content.strip() for m in request.messages):
        raise invalid("messages have no content", "messages")
    if request.HasField("max_tokens") and request.max_tokens <= 0:
        raise invalid("max_tokens must be positive", "max_tokens")
    if request.HasField("temperature") and not 0 <= request.temperature <= 2:
        raise invalid("temperature must be within [0, 2]", "temperature")
    _check_json_size(request)
    tool_calls = [_tool_calls(m.tool_calls_json, i) for i, m in enumerate(request.messages)]
    _check_tool_pairing(request.messages, tool_calls)
    extras = passthrough(request.passthrough_json)
    _check_end_user_ids(extras)
    _check_openai_fields(extras)
    return Validated(tool_calls, extras, _raw_arguments_at(tool_calls))


# The most JSON objects and arrays, and items in them, a request's JSON fields (its messages' tool_calls_json and
# passthrough_json) hold together, counted before they are parsed. The edge bounds a REST body so (llmrouter/
# json_bounds.py), and what it sends on is part of the body, re-encoded: twice its bounds refuses nothing it sends.
# Unbounded, a gRPC caller's 16 MiB of `[[],[],...]` in a field sent nowhere held the router's event loop for tens of
# seconds, once to validate it and again each time it was sent on.
MAX_REQUEST_CONTAINERS = 2 * MAX_JSON_CONTAINERS
MAX_REQUEST_ITEMS = 2 * MAX_JSON_ITEMS


def _check_json_size(request: GenerationRequest) -> None:
    """The request's JSON fields within MAX_REQUEST_CONTAINERS and MAX_REQUEST_ITEMS, the field passing one named."""
    names = [f"messages[{i}].tool_calls_json" for i in range(len(request.messages))] + ["passthrough_json"]
    texts = [m.tool_calls_json.encode() for m in request.messages] + [request.passthrough_json.encode()]
    for marks, marks_allowed, bound, what in (
        (CONTAINER_MARKS, MAX_REQUEST_CONTAINERS, MAX_REQUEST_CONTAINERS, "JSON objects and arrays"),
        (ITEM_MARKS, MAX_REQUEST_ITEMS - 1, MAX_REQUEST_ITEMS, "JSON array elements and object members"),
    ):
        if (at := first_over(texts, marks, marks_allowed)) is not None:
            message = f"{names[at]} takes the request's tool calls and passthrough_json past {bound} {what}"
            raise invalid(message, names[at])


def check_request_fields(passthrough: dict[str, Any]) -> None:
    """A CompleteRequest's passthrough fields naming one of the request's own (REQUEST_FIELDS: max_tokens, max_cost_usd,
    temperature...): no provider reads them there, so the request would be served as if they were not set, uncapped;
    or one of those saying who pays and which request this is (CALLER_FIELDS: tenant, api_key, request_id), which the
    router reads from the request alone: a caller writing them there believed it was billed or deduplicated as it
    said, and was not. JSON null is a field left out."""
    for name in sorted((REQUEST_FIELDS | CALLER_FIELDS) & passthrough.keys()):
        if passthrough[name] is None:
            continue
        if name == "stream":
            # The request has no stream field, the method called is it: "call CompleteStream" was the wrong way for a
            # stream false on Complete, and for a stream on CompleteStream already.
            how = "the method called decides, CompleteStream streaming and Complete not"
            raise invalid(f"stream is not read from passthrough_json: {how}", name)
        raise invalid(
            f"{name} is not read from passthrough_json, where it would be ignored: set the request's own field", name
        )


def check_call_ids(tool_calls: list[list[dict[str, Any]]]) -> None:
    """A CompleteRequest's tool calls each give their id, as OpenAI and the edge require ("" is one: the router hands
    on an upstream's call that had none so). Without one, OpenAI refused the call and Anthropic's gateway made up an
    id and served it, as routing chose. Not the providers service's rule: a router of the version before hands on
    such calls, admitted and held for."""
    for i, calls in enumerate(tool_calls):
        for j, call in enumerate(calls):
            if "id" not in call:
                field = f"messages[{i}].tool_calls[{j}].id"
                raise invalid(f"Missing required parameter: '{field}'.", field)


def object_arguments(call: dict[str, Any]) -> dict[str, Any] | None:
    """A tool call's arguments (OpenAI's: the JSON text the model wrote) as the JSON object they hold, an empty one when
    none are given; None when they hold no object (`{`, `[1,2]`, a NaN, nesting past the parser's depth, no string)."""
    function = call.get("function")
    text = function.get("arguments") if isinstance(function, dict) else None
    if text is None or text == "":
        return {}
    try:
        value = _loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else None


def _raw_arguments_at(tool_calls: list[list[dict[str, Any]]]) -> str:
    """Validated.raw_arguments_at. Only an assistant message has tool calls (pairing refuses them elsewhere)."""
    for i, calls in enumerate(tool_calls):
        for j, call in enumerate(calls):
            if object_arguments(call) is None:
                return f"messages[{i}].tool_calls[{j}].function.arguments"
    return ""


def passthrough(raw: str) -> dict[str, Any]:
    """passthrough_json: a JSON object nested at most MAX_JSON_DEPTH levels (as the edge holds a REST body), or
    nothing."""
    if not raw.strip():
        return {}
    too_deep = f"passthrough_json is nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = _caller_json(raw)
    except RecursionError:  # past the parser's own depth, far past the bound
        raise invalid(too_deep, "passthrough_json") from None
    except _GivenTwice as twice:
        message = f"passthrough_json gives {twice.path!r} more than once: give each key once"
        raise invalid(message, _field_of(twice.path)) from None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise invalid("passthrough_json must be a JSON object, every number in it finite", "passthrough_json")
    if nested_deeper(value):
        raise invalid(too_deep, "passthrough_json")
    return value


def _loads(text: str) -> Any:
    """JSON as a caller wrote it for a provider, every number finite. NaN and Infinity are no JSON, and neither is what
    Python reads a number past a float's range as (1e999: infinity): read, each was written again for a provider to
    refuse (json.dumps writes Infinity)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


class _GivenTwice(Exception):
    """Caller-written JSON with a key given twice: `path`, the first such key's (as param_path spells one)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _caller_json(text: str) -> Any:
    """_loads for JSON a caller wrote for the router (passthrough_json, tool_calls_json), each key given once in an
    object (llmrouter/repeated_keys.py), as the edge holds a REST body: json.loads kept the last copy, so
    `{"max_tokens": 5, "max_tokens": null}` was served uncapped where anything reading the first copy saw a cap.
    A model's tool call arguments are no caller's: object_arguments reads them as written."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=unique_keys)
    except RepeatedKey:  # parsed again for its path; a JSON error past the key is the text's own (a ValueError)
        raise _GivenTwice(repeated_key(text)) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:32]} is past a number's range")
    return number


def _check_end_user_ids(extras: dict[str, Any]) -> None:
    """A gRPC caller's end-user ids, bounded as a REST caller's are (END_USER_ID_CHARS): of any length, one was hashed
    and stored with nothing to refuse it, and one of another type was sent on for the upstream to refuse after routing.
    JSON null is an id left out, as a REST caller may write one."""
    for name, bound in END_USER_ID_CHARS.items():
        value = extras.get(name)
        if value is not None and not (isinstance(value, str) and len(value) <= bound):
            got = f"{len(value)} characters" if isinstance(value, str) else f"a JSON {_json_type(value)}"
            raise invalid(f"{name} must be a string of at most {bound} characters, got {got}", name)


def _check_openai_fields(extras: dict[str, Any]) -> None:
    """A gRPC caller's passthrough fields, held to the rules the edge holds a REST caller's to (OpenAIFields, crossed,
    unservable): one of another shape (`{"tools": "x"}`, a top_p of 5) was routed, admitted and sent on for the upstream
    to refuse, an attempt that may be charged or fallen back on. JSON null is a field left out; a field OpenAI does not
    know is sent nowhere (llmrouter/passthrough.py). Refused naming the field set; the message names the path within."""
    if (fault := unservable(extras)) is not None:
        raise invalid(fault.message, fault.param)
    known = {name: value for name, value in extras.items() if name in OpenAIFields.model_fields and value is not None}
    try:
        fields = OpenAIFields.model_validate(known)
    except ValidationError as exc:
        path, message = first_error(exc)
        raise invalid(f"{path}: {message}", _field_of(path)) from None
    if (fault := crossed(fields)) is not None:
        raise invalid(fault.message, _field_of(fault.param))


def _field_of(path: str) -> str:
    """The passthrough field a path is within (`tools` of `tools[0].function.name`)."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _check_tool_pairing(messages: Sequence[ChatMessage], tool_calls: list[list[dict[str, Any]]]) -> None:
    """A gRPC caller's tool calls and results, paired as the edge holds a REST caller's to (llmrouter/tool_pairing.py):
    refused before routing, not sent on for OpenAI or Anthropic to refuse and another upstream to answer. A call's id
    is a string, or left out ("", as a provider's call without one is handed on)."""
    turns = []
    for i, (message, calls) in enumerate(zip(messages, tool_calls, strict=True)):
        for j, call in enumerate(calls):
            if not isinstance(call_id := call.get("id", ""), str):
                field = f"messages[{i}].tool_calls[{j}].id"
                raise invalid(f"{field} must be a string, got a JSON {_json_type(call_id)}", field)
        turns.append(Turn(message.role, [call.get("id", "") for call in calls], message.tool_call_id))
    if (fault := pairing_fault(turns)) is not None:
        raise invalid(fault.message, fault.param)


def _json_type(value: Any) -> str:
    """The JSON type of a value json.loads returned."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "boolean" if isinstance(value, bool) else "number"


def _tool_calls(raw: str, index: int) -> list[dict[str, Any]]:
    """A message's tool_calls_json: a JSON array of objects nested at most MAX_JSON_DEPTH levels, as passthrough_json
    and a REST body are (unbounded, a call nested 900 levels was sent on whole to an OpenAI-compatible upstream, and
    one past the parser's own limit was said to be no array), or nothing."""
    if not raw:
        return []
    field = f"messages[{index}].tool_calls_json"
    too_deep = f"{field} is nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        calls = _caller_json(raw)
    except RecursionError:  # past the parser's own depth, far past the bound
        raise invalid(too_deep, field) from None
    except _GivenTwice as twice:
        named = f"messages[{index}].tool_calls" + (twice.path if twice.path.startswith("[") else f".{twice.path}")
        raise invalid(f"{field} gives {named!r} more than once: give each key once", named) from None
    except ValueError:
        calls = None
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        raise invalid(f"{field} must be a JSON array of objects, every number in it finite", field)
    if nested_deeper(calls):
        raise invalid(too_deep, field)
    for j, call in enumerate(calls):
        _check_call_shape(call, f"messages[{index}].tool_calls[{j}]")
    return calls


def _check_call_shape(call: dict[str, Any], at: str) -> None:
    """A call in OpenAI's shape, as the edge types a REST caller's: its `function` an object naming the function, its
    arguments (when given) the JSON text the model wrote, its type (when given) "function" (OpenAI's gateway writes it
    when left out, as OpenAI's SDKs do). Sent on otherwise, a `function` of another type failed Anthropic's gateway
    (INTERNAL), and the rest went on for an upstream to refuse. Its id is required at the router's door alone
    (check_call_ids)."""
    function = call.get("function")
    if not isinstance(function, dict):
        raise invalid(f"{at}.function must be an object, got a JSON {_json_type(function)}", f"{at}.function")
    for name, required in (("name", True), ("arguments", False)):
        value = function.get(name)
        if not isinstance(value, str) and (required or value is not None):
            field = f"{at}.function.{name}"
            raise invalid(f"{field} must be a string, got a JSON {_json_type(value)}", field)
    if call.get("type", "function") != "function":
        raise invalid(f"{at}.type must be 'function'", f"{at}.type")
