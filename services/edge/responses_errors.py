"""A Responses request's errors naming the fields its caller sent. The chat path names the chat request it was
translated into (`messages[1].tool_calls[1].function.arguments`, `messages[3].content`, `response_format`), which a
Responses caller never sent: each name is mapped back to the field it came from (`input[4].arguments`,
`input[2].content`, `text.format`), through where each chat message came from (Origin, kept by to_messages)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.edge.openai_api import ApiError

# The chat request's fields that name one of the Responses request in an error (a model that cannot honour it, a
# prompt with no content or over every context window: the router names the conversation `messages`).
CHAT_PARAMS = {
    "response_format": "text.format",
    "max_completion_tokens": "max_output_tokens",
    "tools": "tools",
    "messages": "input",
}

# A chat message's fields (what follows `messages[i]`) as the Responses field that became them, by what the message
# was made of. The instructions or a string input is the message's whole content.
WHOLE = {"": "", ".role": "", ".content": ""}
MESSAGE_ITEM = {"": "", ".role": ".role", ".content": ".content"}
OUTPUT_ITEM = {"": "", ".role": ".type", ".content": ".output", ".tool_call_id": ".call_id"}
# An assistant turn of function_call items alone is named by its first (its role and null content are theirs).
CALLS_ONLY = {"": "", ".role": ".type", ".content": ""}
# A tool call's fields (what follows `tool_calls[j]`) as its function_call item's.
CALL_ITEM = {
    "": "",
    ".id": ".call_id",
    ".type": ".type",
    ".function": "",
    ".function.name": ".name",
    ".function.arguments": ".arguments",
}
# The router and the chat route's validation (llmrouter.openai_fields.param_path) name an index in brackets, as
# OpenAI does.
INDEX = r"\[(\d{1,9})\]"
MESSAGE_PATH = re.compile(rf"messages{INDEX}(.*)")
CALL_PATH = re.compile(rf"\.tool_calls{INDEX}(.*)")
TOOL_PATH = re.compile(rf"tools{INDEX}\.function(\..*)")
# A path into `messages` as an error's message writes one, whole (messages[1].tool_calls[0], not its start): a message
# may name more than its param (a tool result's call answered twice: in messages[2] and messages[4]).
MESSAGE_PATHS = re.compile(rf"messages{INDEX}(?:\.\w+|{INDEX})*")
WHOLE_CALLS = (".tool_calls", ".tool_calls_json")  # the turn's calls as a whole: named by its first item


@dataclass(frozen=True)
class Origin:
    """Where one chat message came from: `at` the Responses field (`instructions`, `input` when a string, or an
    input item: `input[3]`), `fields` its fields' names there, `calls` the input index of each of its tool calls'
    function_call items (merged into one assistant turn)."""

    at: str
    fields: Mapping[str, str]
    calls: list[int] = field(default_factory=list)


def sent_name(chat_param: str, origins: Sequence[Origin]) -> str | None:
    """The Responses field a chat path into `messages` names; None for any other path, or one no message maps."""
    match = MESSAGE_PATH.fullmatch(chat_param)
    if match is None or int(match[1]) >= len(origins):
        return None
    origin, rest = origins[int(match[1])], match[2]
    if rest in WHOLE_CALLS:
        return f"input[{origin.calls[0]}]" if origin.calls else None
    if call := CALL_PATH.fullmatch(rest):
        index, sub_field = int(call[1]), CALL_ITEM.get(call[2])
        if index >= len(origin.calls) or sub_field is None:
            return None
        return f"input[{origin.calls[index]}]{sub_field}"
    sub_field = origin.fields.get(rest)
    return None if sub_field is None else origin.at + sub_field


def named_as_sent(error: ApiError, origins: Sequence[Origin]) -> ApiError:
    """The chat path's error naming the field as the caller sent it, in its message too where that names the path
    (`messages[1].tool_calls[1].function.arguments must be a JSON object for ...`) or another message's (the first
    result of a call answered twice). Names not mapped stay."""
    chat_param = error.param or ""
    sent = sent_name(chat_param, origins)
    if sent is None and (tool := TOOL_PATH.fullmatch(chat_param)):
        sent = f"tools[{tool[1]}]{tool[2]}"  # a Responses function tool is flat: its name beside its type
    if sent is None:
        error.param = CHAT_PARAMS.get(chat_param, error.param)
        return error
    error.param = sent
    # The whole path only: not the start of a longer one (messages[1].tool_calls within messages[1].tool_calls[0]).
    error.message = re.sub(rf"{re.escape(chat_param)}(?![\w\[]|\.\w)", lambda _: sent, error.message)
    error.message = MESSAGE_PATHS.sub(lambda path: sent_name(path[0], origins) or path[0], error.message)
    return error
