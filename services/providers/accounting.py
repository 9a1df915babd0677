"""Usage and cost of one generation: the provider's own counts when it gave them, local counts otherwise."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from llmrouter.byte_bound import utf8_bound
from llmrouter.registry import ModelSpec
from llmrouter.tokens import count_message_tokens, count_prompt_tokens, count_tokens
from llmrouter.v1 import common_pb2
from services.providers.gateways.base import Message, UpstreamRequest


def settle(
    model: ModelSpec,
    messages: Sequence[Message],
    content: str,
    input_tokens: int | None,
    output_tokens: int | None,
) -> tuple[common_pb2.Usage, str]:
    """Usage (flagged estimated when any count was made locally) and the exact cost as a decimal string."""
    estimated = input_tokens is None or output_tokens is None
    if input_tokens is None:
        input_tokens = count_message_tokens(messages)
    if output_tokens is None:
        output_tokens = count_tokens(content)
    usage = common_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens, estimated=estimated)
    return usage, decimal_str(model.cost_usd(input_tokens, output_tokens))


@dataclass
class _Counted:
    """A message as llmrouter.tokens counts it: its tool calls as JSON."""

    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls_json: str


async def input_bound(model: ModelSpec, request: UpstreamRequest) -> int:
    """The most input the upstream can bill for `request`, bounded as the router holds for it (README, Money): for
    an attempt that consumed its prompt without saying how much (a stream cut before its usage). Tool definitions,
    tool calls and the other passthrough fields count, as the upstream bills them."""
    tools = bool(request.passthrough.get("tools"))
    ceiling, tokenizer = model.context_window, model.tokenizer
    if tokenizer == "utf8_bytes":
        calls = [m.tool_calls for m in request.messages]
        count = utf8_bound(request.messages, calls, request.passthrough, tools, ceiling)
    else:
        counted = [
            _Counted(m.role, m.content, m.name, m.tool_call_id, json.dumps(m.tool_calls) if m.tool_calls else "")
            for m in request.messages
        ]
        count = await count_prompt_tokens(counted, json.dumps(request.passthrough), tools, ceiling, tokenizer)
    return min(count, ceiling)


def decimal_str(value: Decimal) -> str:
    """Plain notation ("0.0000135", never "1.35E-5"), no trailing zeros."""
    return format(value.normalize(), "f")
