"""The most input tokens a model's provider can bill for a prompt, per model: what holds, max_cost_usd
eligibility and the output money allows are computed from. Counted once per tokenizer the registry names: a
model with a bundled tokenizer (OpenAI's) by an exact count, any other by the UTF-8 byte bound
(llmrouter/byte_bound.py). Never above the model's context window: a provider refuses a prompt over its
window, unbilled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmrouter.byte_bound import utf8_bound
from llmrouter.registry import UTF8_BYTES, ModelSpec, Registry, Tokenizer
from llmrouter.tokens import PromptMessage, count_prompt_tokens
from llmrouter.validation import Validated


@dataclass(frozen=True)
class InputBound:
    """Per tokenizer, the prompt's input tokens counted high; a count over `ceiling` stopped there."""

    counts: Mapping[Tokenizer, int]  # always has UTF8_BYTES, which bounds every tokenizer, and cl100k_base (estimate)
    ceiling: int

    def tokens(self, model: ModelSpec) -> int:
        count = self.counts.get(model.tokenizer, self.counts[UTF8_BYTES])
        return model.context_window if count > self.ceiling else min(count, model.context_window)

    def estimate(self, model: ModelSpec) -> int:
        """The prompt's input as the providers estimate one no upstream reported (a stream cut before its usage:
        services/providers/accounting.py): in the model's estimating encoding, its own where it is bundled (o200k_base:
        gpt-4o), cl100k_base for any other (or for a model the registry gained since, not counted here)."""
        count = self.counts.get(model.estimating_encoding, self.counts["cl100k_base"])
        return min(count, model.context_window)


async def bound_input(
    registry: Registry,
    messages: Sequence[PromptMessage],
    passthrough_json: str,
    valid: Validated,
    tools: bool,
    cl100k_count: int,
    ceiling: int,
) -> InputBound:
    """The bound for every tokenizer of `registry`, given the prompt's cl100k_base count (already made: the
    estimate that sizes the prompt against context windows) and what validation parsed. A model the
    registry gains later is bounded by the byte bound."""
    counts: dict[Tokenizer, int] = {
        "cl100k_base": cl100k_count,
        UTF8_BYTES: utf8_bound(messages, valid.tool_calls, valid.passthrough, tools, ceiling),
    }
    if any(m.tokenizer == "o200k_base" for m in registry.models):
        counts["o200k_base"] = await count_prompt_tokens(messages, passthrough_json, tools, ceiling, "o200k_base")
    return InputBound(counts, ceiling)
