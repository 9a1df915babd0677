"""Usage and cost of one generation: the provider's own counts when it gave them, local counts otherwise."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal

from llmrouter.byte_bound import utf8_bound
from llmrouter.output_charged import output_charged
from llmrouter.passthrough import prompt_fields, prompt_json
from llmrouter.registry import ModelSpec
from llmrouter.tokens import count_prompt_tokens, count_text_tokens
from llmrouter.v1 import common_pb2
from services.providers import metrics
from services.providers.gateways.base import UpstreamRequest

log = logging.getLogger("llmrouter.providers")

# An honest upstream's output count is never below 1/UNDER_COUNT_FACTOR of ours. Ours (cl100k_base, o200k_base: byte
# level BPE) is never past the text's UTF-8 bytes, so an honest count under it would need the upstream's tokens to
# average over 32 bytes each across a whole answer: real tokenizers average 3 to 5 in English, about 12 where a
# tokenizer made for a script whole-word-tokenizes it (Hindi, Tamil) that ours splits near byte by byte, and tokens
# as long as 32 bytes exist only for runs of spaces or punctuation, which ours merges too. The JSON framing of tool
# calls counted here (ids, keys) and not billed stays within that too (about 30 tokens a call, against 5 at least).
UNDER_COUNT_FACTOR = 32


async def settle(
    model: ModelSpec,
    request: UpstreamRequest,
    content: str,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
) -> tuple[common_pb2.Usage, str]:
    """Usage (flagged estimated when any count was made locally) and the exact cost as a decimal string. The cache
    counts are parts of input_tokens: an input counted here has none (all of it at the input price). A count the
    answer belies (implausible_input, implausible_output) is taken for none: counted here, so an answer never goes
    out free from an upstream that under-reports (a buggy self-hosted server, a proxy zeroing usage). An output count
    past the call's max_tokens is charged max_tokens (output_charged)."""
    if input_tokens is not None and await implausible_input(model, request, input_tokens):
        count_implausible(model, "input")
        input_tokens = None
    output_tokens, past_max_tokens = output_charged(output_tokens, request.max_tokens)
    if past_max_tokens:
        count_implausible(model, "output", "high; charged max_tokens")
    elif output_tokens is not None and await implausible_output(model, request.max_tokens, content, output_tokens):
        count_implausible(model, "output")
        output_tokens = None
    estimated = input_tokens is None or output_tokens is None or past_max_tokens
    if input_tokens is None:
        input_tokens = await estimated_input(model, request)
        cached_input_tokens = cache_write_input_tokens = 0
    if output_tokens is None:
        output_tokens = await counted_output(model, request, content)
    usage = common_pb2.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        estimated=estimated,
        cached_input_tokens=cached_input_tokens,
        cache_write_input_tokens=cache_write_input_tokens,
    )
    return usage, decimal_str(model.usage_cost_usd(usage))


async def implausible_input(model: ModelSpec, request: UpstreamRequest, reported: int) -> bool:
    """Whether `reported` input tokens are too few for the prompt sent: none for a prompt with a message (no upstream
    reads one for nothing: each message's role and framing are tokens of their own), or under 1/UNDER_COUNT_FACTOR of
    the tokens counted here (as estimated_input counts them) of its messages' roles and texts, which no honest
    upstream's count is (UNDER_COUNT_FACTOR says why). Only what every gateway sends is judged: the local one sends
    no tool calls, tool definitions or names, Groq's no names, and an honest count of a prompt mostly made of those is
    far under ours of all of it. A prompt read from the provider's cache is counted in the input too. Counted only when
    the texts' UTF-8 bytes leave the report in doubt, and only as far as it takes to pass it. A count below nothing is
    left to the router, which charges it the hold."""
    if not request.messages or reported < 0:
        return False
    if reported == 0:
        return True
    believed = reported * UNDER_COUNT_FACTOR  # a count past it belies the report
    if believed >= sum(len(m.content.encode("utf-8", "surrogatepass")) for m in request.messages):
        return False
    sent_by_all = [_Counted(m.role, m.content, "", "", "") for m in request.messages]
    return await count_prompt_tokens(sent_by_all, "", False, believed, model.estimating_encoding) > believed


async def implausible_output(model: ModelSpec, max_tokens: int | None, answer: str, reported: int) -> bool:
    """Whether `reported` output tokens are too few for the answer delivered (its text, refusal, tool calls): none
    for any of it, or under 1/UNDER_COUNT_FACTOR of its tokens counted here (within max_tokens, as counted_output).
    Counted only when its UTF-8 bytes (which our count never passes) leave the report in doubt: an honest report's
    answer is seldom counted at all. A count below nothing is left to the router, which charges it the hold."""
    if not answer or reported * UNDER_COUNT_FACTOR >= len(answer.encode("utf-8", "surrogatepass")):
        return False
    if reported <= 0:
        return reported == 0
    believed = reported * UNDER_COUNT_FACTOR  # a count past it belies the report
    if max_tokens is not None and max_tokens <= believed:
        return False
    # Counted only as far as it takes to pass `believed`: a belied answer is counted whole once, to be charged.
    return await count_text_tokens(answer, model.estimating_encoding, stop_above=believed) > believed


def count_implausible(model: ModelSpec, direction: str, how: str = "low; counted here") -> None:
    metrics.USAGE_IMPLAUSIBLE.labels(model.provider, model.name, direction).inc()
    log.warning(
        f"usage reported implausibly {how}",
        extra={"provider": model.provider, "model": model.name, "direction": direction},
    )


async def counted_output(model: ModelSpec, request: UpstreamRequest, text: str) -> int:
    """The output tokens of `text`, as no upstream said: counted in the model's estimating encoding, never past the
    call's max_tokens, which no upstream writes past. A count over it is the estimating tokenizer's (cl100k_base counts
    Hindi near three times Llama 3's tokens): tokens never billed."""
    counted = await count_text_tokens(text, model.estimating_encoding)
    return counted if request.max_tokens is None else min(counted, request.max_tokens)


async def estimated_input(model: ModelSpec, request: UpstreamRequest) -> int:
    """The input of a call whose upstream did not say, counted as the router counts a prompt (the model's estimating
    encoding, OpenAI's framing): everything the upstream reads and bills, tool definitions, tool calls and names
    included, not only the messages' text, which left a prompt's tools (often thousands of tokens) unpaid. The
    passthrough fields read beside the prompt (stop sequences, sampling settings) are not billed, nor counted."""
    tools = bool(request.passthrough.get("tools"))
    count = await count_prompt_tokens(
        _counted(request), prompt_json(request.passthrough), tools, model.context_window, model.estimating_encoding
    )
    return min(count, model.context_window)


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
    tool calls and the passthrough fields rendered into the prompt count, as the upstream bills them."""
    tools = bool(request.passthrough.get("tools"))
    ceiling, tokenizer = model.context_window, model.tokenizer
    if tokenizer == "utf8_bytes":
        calls = [m.tool_calls for m in request.messages]
        count = utf8_bound(request.messages, calls, prompt_fields(request.passthrough), tools, ceiling)
    else:
        count = await count_prompt_tokens(
            _counted(request), prompt_json(request.passthrough), tools, ceiling, tokenizer
        )
    return min(count, ceiling)


def _counted(request: UpstreamRequest) -> list[_Counted]:
    return [
        _Counted(m.role, m.content, m.name, m.tool_call_id, json.dumps(m.tool_calls) if m.tool_calls else "")
        for m in request.messages
    ]


def decimal_str(value: Decimal) -> str:
    """Plain notation ("0.0000135", never "1.35E-5"), no trailing zeros."""
    return format(value.normalize(), "f")
