"""Usage and cost of one generation: the provider's own counts when it gave them, local counts otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from llmrouter.registry import ModelSpec
from llmrouter.tokens import count_message_tokens, count_tokens
from llmrouter.v1 import common_pb2
from services.providers.gateways.base import Message


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


def decimal_str(value: Decimal) -> str:
    """Plain notation ("0.0000135", never "1.35E-5"), no trailing zeros."""
    return format(value.normalize(), "f")
