"""The providers service counts a call's input, when its upstream did not say it (estimated_input) or could not
(input_bound, a stream cut before its usage), from what the upstream bills: the messages and the passthrough fields
rendered into the prompt (tools), not the stop sequences, sampling settings or end-user ids read beside it. Counted,
a long stop sequence was charged as thousands of input tokens no provider billed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from llmrouter.registry import ModelSpec, Tokenizer
from services.providers.accounting import estimated_input, input_bound
from services.providers.gateways.base import Message, UpstreamRequest

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
BESIDE = {"stop": ["word " * 2_000], "user": "u" * 2_000, "seed": 7, "top_p": 0.5}


def model(tokenizer: Tokenizer) -> ModelSpec:
    return ModelSpec(
        name="m",
        provider="p",
        tier="t",
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("1"),
        context_window=100_000,
        quality_prior=0.5,
        tokenizer=tokenizer,
    )


def call(**passthrough: Any) -> UpstreamRequest:
    return UpstreamRequest(model="m", messages=[Message("user", "Look record 7 up.")], passthrough=passthrough)


@pytest.mark.parametrize("tokenizer", ["o200k_base", "cl100k_base", "utf8_bytes"])
async def test_the_fields_read_beside_the_prompt_are_not_counted(tokenizer: Tokenizer) -> None:
    spec = model(tokenizer)
    alone = call(tools=TOOLS)
    beside = call(tools=TOOLS, **BESIDE)
    assert await input_bound(spec, beside) == await input_bound(spec, alone) > await input_bound(spec, call())
    assert await estimated_input(spec, beside) == await estimated_input(spec, alone)
