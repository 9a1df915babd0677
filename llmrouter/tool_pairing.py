"""Tool calls and their results paired as OpenAI and Anthropic pair them, one check for the edge's REST callers and
the router's gRPC callers (llmrouter/validation.py): an assistant turn's tool calls have ids of their own (a result
names its call by its id alone), and the tool messages right after the turn answer each of them, once, and nothing
else. OpenAI and Anthropic refuse any other conversation; an upstream taking it (a local model) answered it, so the
same request was served or refused as routing chose an upstream. Refused in OpenAI's words where it has some; so
are tool calls on a message that is no assistant's, and the id of a call answered on one that is no tool message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmrouter.openai_fields import Fault

UNANSWERED_CALLS = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
    "The following tool_call_ids did not have response messages: {ids}"
)
DUPLICATE_RESULT = (
    "Invalid parameter: Duplicate value for 'tool_call_id' of {id!r}, in messages[{first}] and messages[{again}]."
)
DUPLICATE_CALL = (
    "Invalid parameter: Duplicate value for 'id' of {id!r}, in messages[{i}].tool_calls[{first}] and "
    "messages[{i}].tool_calls[{again}]: a tool result could not say which of the two it answers."
)
STRAY_RESULT = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."
)
# A field of one role's messages on another's. OpenAI refuses it with a 400; sent on, Anthropic's gateway put a user
# message's tool calls in a user turn (Anthropic's 400) and a local model read them as the user's, as routing chose.
MISPLACED = "Invalid parameter: only messages with role '{owner}' can have '{field}'; messages[{i}] has role '{role}'."
OWNERS = {"tool_calls": "assistant", "tool_call_id": "tool"}
SHOWN = 64  # of an id a caller wrote, the characters a message quotes


@dataclass(frozen=True)
class Turn:
    """What pairing reads of a chat message: its role, its tool calls' ids ("" for a call without one, as a
    provider's is handed on) and, a tool message's, the id of the call it answers."""

    role: str
    call_ids: Sequence[str] = ()
    answers: str = ""


def pairing_fault(turns: Sequence[Turn]) -> Fault | None:
    """The first turn refused, named as OpenAI names it: messages[i].tool_calls[j].id, messages[i].tool_calls or a
    tool message's messages[i].tool_call_id."""
    calls: dict[str, int] = {}  # the calls the tool messages now read may answer: the last turn's with calls
    answered: dict[str, int] = {}  # of those, the ones answered, by the tool message that did
    caller = -1  # that turn's index; -1 when the message before is no tool message or turn with calls
    for i, turn in enumerate(turns):
        if (fault := _misplaced(i, turn)) is not None:
            return fault
        if turn.role == "tool":
            if caller < 0 or turn.answers not in calls:
                return Fault(f"messages[{i}].tool_call_id", STRAY_RESULT, None)
            if (first := answered.get(turn.answers)) is not None:
                text = DUPLICATE_RESULT.format(id=turn.answers[:SHOWN], first=first, again=i)
                return Fault(f"messages[{i}].tool_call_id", text, None)
            answered[turn.answers] = i
            continue
        if (fault := _unanswered(caller, calls, answered)) is not None:
            return fault
        calls, answered, caller = {}, {}, -1
        if turn.role == "assistant" and turn.call_ids:
            for j, call_id in enumerate(turn.call_ids):
                if (first := calls.get(call_id)) is not None:
                    text = DUPLICATE_CALL.format(id=call_id[:SHOWN], i=i, first=first, again=j)
                    return Fault(f"messages[{i}].tool_calls[{j}].id", text)
                calls[call_id] = j
            caller = i
    return _unanswered(caller, calls, answered)


def _misplaced(i: int, turn: Turn) -> Fault | None:
    """Tool calls on any message but an assistant's, or the id of the call answered on any but a tool message's."""
    for field, given in (("tool_calls", bool(turn.call_ids)), ("tool_call_id", bool(turn.answers))):
        if given and turn.role != OWNERS[field]:
            text = MISPLACED.format(owner=OWNERS[field], field=field, i=i, role=turn.role[:SHOWN])
            return Fault(f"messages[{i}].{field}", text)
    return None


def _unanswered(caller: int, calls: dict[str, int], answered: dict[str, int]) -> Fault | None:
    if missing := [call_id[:SHOWN] for call_id in calls if call_id not in answered]:
        return Fault(f"messages[{caller}].tool_calls", UNANSWERED_CALLS.format(ids=", ".join(missing)))
    return None
