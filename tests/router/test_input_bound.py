"""The most input a model's provider can bill, per model: OpenAI's models counted exactly with their own
tokenizer (o200k_base bundled and checked), any other bounded by UTF-8 bytes plus its chat template, and
never above the context window; admission holds that, not the cl100k_base estimate."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmrouter.byte_bound import MESSAGE_ALLOWANCE, REQUEST_ALLOWANCE, utf8_bound, widest_json_bytes
from llmrouter.registry import Registry
from llmrouter.tokens import REPLY_PRIMING, count_prompt_tokens, count_tokens, encoding
from llmrouter.v1 import common_pb2, router_pb2
from llmrouter.validation import validate
from services.router import admission, policy, routing
from services.router.costs import worst_pico
from services.router.input_bound import InputBound
from services.router.routed import Routed
from services.router.serving import worst_usd
from services.router.settings import RouterSettings
from services.router.store import PICO, Account, MemoryStore
from tests.router.test_admission import scratch_outbox

NO_LIMIT = 10**9
REGISTRY = Registry.model_validate(
    {
        "tiers": ["economy", "premium"],
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": [
            {"name": "mixtral-like", "provider": "p", "tier": "economy", "input_usd_per_mtok": "0.60",
             "output_usd_per_mtok": "0.60", "context_window": 32768, "quality_prior": 0.8},
            {"name": "gpt-4o-like", "provider": "p", "tier": "premium", "input_usd_per_mtok": "2.50",
             "output_usd_per_mtok": "10", "context_window": 128000, "max_output_tokens": 16384,
             "quality_prior": 0.95, "tokenizer": "o200k_base"},
        ],
    }
)  # fmt: skip
MIXTRAL, GPT4O = REGISTRY.models
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


def message(role: str, content: str, **fields: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content, **fields)


def test_o200k_base_is_openais_own() -> None:
    """The bundled ranks are checked against OpenAI's published hash at load; these ids are gpt-4o's."""
    assert encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert encoding("o200k_base").n_vocab == 200019


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_a_byte_level_tokenizer_never_makes_more_tokens_than_utf8_bytes(text: str) -> None:
    for name in ("cl100k_base", "o200k_base"):
        assert count_tokens(text, name) <= len(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_json_is_counted_at_its_indented_ascii_rendering(value: Any) -> None:
    widest = len(json.dumps(value, indent=4, ensure_ascii=True))
    assert widest_json_bytes(value, NO_LIMIT) == widest
    assert widest >= len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def test_deep_json_is_not_rendered_and_counting_stops_past_the_limit() -> None:
    deep: Any = 0
    for _ in range(900):  # as deep as the JSON parser allows: rendered indented, gigabytes for a large file
        deep = [deep, "x" * 1000]
    started = time.perf_counter()
    assert widest_json_bytes([deep] * 10_000, 200_000) > 200_000  # 58 GB rendered: counted whole, 100 s
    assert time.perf_counter() - started < 1.0  # about 10 ms on a quiet machine


def test_the_byte_bound_counts_every_byte_and_the_template() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q": "é"}'}}]
    messages = [
        message("system", "Réponds brièvement."),  # non-ASCII: 2 bytes a character
        message("user", "🙂 weather?"),  # 4 bytes
        message("assistant", "", tool_calls_json=json.dumps(calls)),
        message("tool", 'says "rain"\n', tool_call_id="c1", name="f"),  # escaped: quotes and newline 2 bytes each
    ]
    request = router_pb2.CompleteRequest(messages=messages, passthrough_json=json.dumps({"tools": tools}))
    valid = validate(request)
    text = sum(len(f.encode()) for m in messages[:3] for f in (m.role, m.content, m.name, m.tool_call_id))
    text += len("tool") + len(json.dumps(messages[3].content)) + len("c1") + len("f")
    rendered = len(json.dumps(calls, indent=4)) + len(json.dumps({"tools": tools}, indent=4))
    expected = REQUEST_ALLOWANCE + 400 + 4 * MESSAGE_ALLOWANCE + text + rendered
    assert utf8_bound(messages, valid.tool_calls, valid.passthrough, True, NO_LIMIT) == expected


def test_a_model_is_billed_at_most_its_context_window() -> None:
    assert InputBound({"utf8_bytes": 50_000, "o200k_base": 9_000}, NO_LIMIT).tokens(MIXTRAL) == 32768
    assert InputBound({"utf8_bytes": 50_000, "o200k_base": 9_000}, NO_LIMIT).tokens(GPT4O) == 9_000
    # Counting stopped past the ceiling: only the window bounds it then (a window larger than the ceiling).
    big = MIXTRAL.model_copy(update={"context_window": 1_000_000})
    assert InputBound({"utf8_bytes": 200_001}, 200_000).tokens(big) == 1_000_000
    assert InputBound({"utf8_bytes": 50_000}, 200_000).tokens(GPT4O) == 50_000  # a tokenizer not counted: bytes


async def admitted(request: router_pb2.CompleteRequest) -> Routed:
    gate = admission.Admission(RouterSettings(min_output_tokens=16), REGISTRY, MemoryStore(), scratch_outbox())
    limits = await gate.limits(request)
    plan = policy.explicit(policy.evaluate(REGISTRY.models, None, limits), request.model, limits)
    decision = routing.decision(plan, limits, "")
    routed = Routed(
        request,
        uuid.uuid4().hex,
        Account("t", "k"),
        limits,
        plan,
        decision,
        admission.output_caps(plan, limits, decision),
    )
    await gate.admit(routed)
    return routed


async def test_an_openai_model_is_held_at_its_exact_count_and_any_other_at_the_byte_bound() -> None:
    text = " international" * 2_000  # a token a word in OpenAI's tokenizers, 14 bytes
    messages = [message("system", "Be brief."), message("user", text)]
    o200k = REPLY_PRIMING + sum(
        3 + count_tokens(m.role, "o200k_base") + count_tokens(m.content, "o200k_base") for m in messages
    )
    assert o200k == await count_prompt_tokens(messages, "", False, NO_LIMIT, "o200k_base")

    gpt = await admitted(router_pb2.CompleteRequest(messages=messages, model="gpt-4o-like", max_tokens=100))
    assert gpt.limits.billed_input(GPT4O) == o200k
    assert gpt.hold is not None and gpt.hold.pico == worst_pico(GPT4O, o200k, 100)

    mixtral = await admitted(router_pb2.CompleteRequest(messages=messages, model="mixtral-like", max_tokens=100))
    utf8 = REQUEST_ALLOWANCE + sum(MESSAGE_ALLOWANCE + len(m.role) + len(m.content.encode()) for m in messages)
    assert mixtral.limits.billed_input(MIXTRAL) == utf8 > 10 * mixtral.limits.input_tokens
    assert mixtral.hold is not None and mixtral.hold.pico == worst_pico(MIXTRAL, utf8, 100)
    # What a fallback or an escalation is covered for, and a failed attempt owes when its outcome is unknown.
    assert worst_usd(mixtral, MIXTRAL) * PICO == worst_pico(MIXTRAL, utf8, 100)


async def test_max_cost_usd_pays_for_the_byte_bound_first() -> None:
    """A cap just above what the cl100k_base estimate would cost leaves a byte-bounded model no room to write:
    it is not eligible. A cap that pays for the bound and a short answer lowers max_tokens to that answer."""
    messages = [message("user", " international" * 2_000)]
    estimate = await count_prompt_tokens(messages, "", False, NO_LIMIT)
    utf8 = REQUEST_ALLOWANCE + MESSAGE_ALLOWANCE + len("user") + len(messages[0].content)
    gate = admission.Admission(RouterSettings(min_output_tokens=16), REGISTRY, MemoryStore(), scratch_outbox())
    near_estimate = MIXTRAL.cost_usd(estimate, 1000)
    limits = await gate.limits(router_pb2.CompleteRequest(messages=messages, max_cost_usd=str(near_estimate)))
    (option,) = [o for o in policy.evaluate([MIXTRAL], None, limits)]
    assert "max_cost_usd" in option.excluded

    cap = MIXTRAL.cost_usd(utf8, 20)
    request = router_pb2.CompleteRequest(messages=messages, model="mixtral-like", max_cost_usd=str(cap))
    routed = await admitted(request)
    assert routed.max_tokens["mixtral-like"] == 20 and routed.decision.max_tokens_capped == 20
    assert routed.hold is not None and routed.hold.pico == worst_pico(MIXTRAL, utf8, 20)
