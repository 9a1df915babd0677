"""Property: whatever body and headers a caller sends, the real edge (in front of the real router, classifier and
providers with fake upstreams) answers below 500, and every 4xx carries OpenAI's error body. Derandomized, so
every run tries the same examples; failures shrink to a minimal body.

By default 1,500 examples (about a tenth of the time of the full 10,000, the slowest test of the suite
otherwise); every kind of body, header and edge is still drawn hundreds of times, and the test asserts each edge
answered both a 4xx and a 200, streamed and not. EDGE_FUZZ_EXAMPLES=10000 runs the full count (or any other)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.edge.openai_api import KNOWN_FIELDS, REFUSED
from tests.integration.conftest import Chain

EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "1500"))

ODD_TEXT = st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "😀", "\U0010ffff", "=", "\\", '"', ""])
plain_text = st.text(max_size=12) | st.text(st.characters(codec="utf-8"), max_size=6)
text = st.one_of(plain_text, plain_text, plain_text, ODD_TEXT)
HUGE = st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**40)])
numbers = st.integers() | HUGE | st.floats()  # floats include NaN and the infinities
scalars = st.none() | st.booleans() | numbers | text
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6
)

ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"])
content = text | st.lists(st.fixed_dictionaries({"type": st.just("text") | text, "text": text}), max_size=2)
tool_call = st.fixed_dictionaries(
    {"id": text, "type": st.just("function"), "function": st.fixed_dictionaries({"name": text, "arguments": text})}
)
message = st.fixed_dictionaries(
    {"role": ROLES | json_values, "content": content | json_values},
    optional={"name": text, "tool_calls": st.lists(tool_call, max_size=2) | json_values, "tool_call_id": text},
)
tool = st.fixed_dictionaries(
    {
        "type": st.just("function") | text,
        "function": st.fixed_dictionaries({"name": text}, optional={"parameters": json_values, "description": text}),
    }
)
# Each field: a value of the type OpenAI documents, or anything at all.
TYPED: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["auto", "cheap-model", "strong-model", "gpt-17"]) | text,
    "messages": st.lists(message, max_size=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "max_tokens": st.integers(min_value=-5, max_value=5000) | HUGE,
    "max_completion_tokens": st.integers(min_value=-5, max_value=5000) | HUGE,
    "temperature": st.floats(min_value=-1, max_value=3),
    "n": st.integers(min_value=-1, max_value=3),
    "quality_target": st.floats(min_value=-0.5, max_value=1.5),
    "strong_share": st.floats(min_value=-0.5, max_value=1.5),
    "quality_kept": st.floats(min_value=-0.5, max_value=1.5),
    "max_cost_usd": st.decimals(allow_nan=True).map(str) | numbers,
    "max_latency_ms": st.integers(min_value=-5, max_value=10**6) | HUGE,
    "session_id": text,
    "escalation": st.sampled_from(["off", "auto", "strict"]) | text,
    "buffer_stream": st.booleans(),
    "verifier_threshold": st.floats(min_value=-0.5, max_value=1.5) | numbers,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])}),
    "top_p": st.floats(min_value=-1, max_value=2),
    "stop": text | st.lists(text, max_size=5),
    "seed": st.integers() | HUGE,
    "tools": st.lists(tool, max_size=2),
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | json_values,
    "parallel_tool_calls": st.booleans(),
    "presence_penalty": st.floats(min_value=-3, max_value=3),
    "frequency_penalty": st.floats(min_value=-3, max_value=3),
    "logit_bias": st.dictionaries(st.integers(0, 10**6).map(str) | text, st.integers(-200, 200), max_size=3),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(min_value=-1, max_value=30),
    "user": text,
    "safety_identifier": text,
    "prompt_cache_key": text,
    "metadata": st.dictionaries(text, text, max_size=3),
    "store": st.booleans(),
    "service_tier": st.sampled_from(["auto", "default", "flex", "scale", "priority", "fast"]) | text,
    "modalities": st.lists(st.sampled_from(["text", "audio"]), max_size=2),
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"]) | text,
    "verbosity": st.sampled_from(["low", "medium", "high"]) | text,
    "prediction": st.fixed_dictionaries({"type": st.just("content") | text, "content": content}),
    "prompt_cache_retention": st.sampled_from(["in_memory", "24h"]) | text,
    "prompt_cache_options": st.fixed_dictionaries(
        {}, optional={"mode": st.sampled_from(["implicit", "explicit"]), "ttl": st.just("30m") | text}
    ),
}
assert set(TYPED) == KNOWN_FIELDS
field_value = {name: strategy | json_values for name, strategy in TYPED.items()}
prompt = st.text(min_size=1, max_size=24).filter(str.strip) | text
plain_messages = st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": prompt}), min_size=1, max_size=2)


def one_field(values: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of([st.builds(lambda v, name=name: {name: v}, strategy) for name, strategy in values.items()])


def merged(parts: st.SearchStrategy[list[dict[str, Any]]]) -> st.SearchStrategy[dict[str, Any]]:
    return parts.map(lambda dicts: {k: v for d in dicts for k, v in d.items()})


# Mostly well-formed requests with a few fields of the right type (but any value), so that many reach the router
# and the providers; then requests with any value in any field, refused fields included; then any JSON at all.
typed_field = one_field({k: v for k, v in TYPED.items() if k not in ("messages", "stream")})
near_valid = st.builds(
    lambda messages, stream, extra: {"messages": messages, "stream": stream, **extra},
    plain_messages,
    st.booleans(),
    merged(st.lists(typed_field, max_size=2)),
)
any_field = one_field({**field_value, **dict.fromkeys(REFUSED, json_values), "frobnicate": json_values})
anything_anywhere = merged(st.lists(any_field, min_size=1, max_size=6))


def encode(value: Any, how: str = "ascii") -> bytes:
    if how == "ascii":
        return json.dumps(value).encode()  # surrogates travel as \ud800 escapes
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")  # or as raw (invalid) bytes


bodies = st.one_of(
    near_valid.map(encode),
    near_valid.map(encode),
    near_valid.map(encode),
    st.tuples(anything_anywhere, st.sampled_from(["ascii", "raw"])).map(lambda t: encode(*t)),
    json_values.map(encode),
    st.binary(max_size=64),
)

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
header_value = header_text.map(lambda s: s.strip().encode("latin-1")) | st.sampled_from(
    [b"nan", b"inf", b"-1", b"1e999", b"99999999999999999999", b"0.5", b"0", b"abc"]
)
HEADERS = (
    "x-router-quality-target",
    "x-router-strong-share",
    "x-router-max-latency-ms",
    "x-router-max-cost-usd",
    "x-router-session-id",
    "x-router-tenant",
    "authorization",
    "content-type",
)
headers = merged(st.lists(one_field(dict.fromkeys(HEADERS, header_value)), max_size=3))


def check(http: httpx.Client, url: str, body: bytes, sent_headers: dict[str, bytes]) -> str:
    """Asserts the reply is well-formed; returns its kind: "error", "stream" or "answer"."""
    reply = http.post(url, content=body, headers={name.encode(): value for name, value in sent_headers.items()})
    assert reply.status_code < 500, (reply.status_code, reply.text)
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert isinstance(error["message"], str) and error["message"], reply.text
        assert isinstance(error["type"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        return "error"
    if reply.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" or "error" in json.loads(events[-1]), reply.text
        return "stream"
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    return "answer"


# Which edge: mostly the anonymous one; the keyed one with whatever authorization was drawn, or a valid key.
EDGES = st.sampled_from(["anonymous", "anonymous", "anonymous", "keyed", "keyed with a valid key"])


async def test_no_body_or_header_makes_the_edge_fail(chain: Chain) -> None:
    urls = {"anonymous": f"{chain.base_url}/chat/completions", "keyed": f"{chain.keyed_url}/chat/completions"}
    valid_key = f"Bearer {chain.keys['acme'][1]}".encode()
    tried = 0
    seen: set[tuple[str, str]] = set()  # (edge, kind of reply)

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies, sent_headers=headers, edge=EDGES)
    def property_holds(body: bytes, sent_headers: dict[str, bytes], edge: str) -> None:
        nonlocal tried
        tried += 1
        if edge == "keyed with a valid key":
            sent_headers = {**sent_headers, "authorization": valid_key}
        seen.add((edge, check(http, urls[edge.split()[0]], body, sent_headers)))

    # In a thread: the services run on this event loop and must keep serving while the examples run.
    with httpx.Client(timeout=30) as http:
        await asyncio.to_thread(property_holds)
    assert tried >= EXAMPLES
    # The sample reached every edge's validation and the providers behind it, answered and streamed.
    # (A drawn authorization is refused: the keyed edge without a valid key only ever answers an error.)
    kinds = ("error", "stream", "answer")
    assert {(edge, kind) for edge in ("anonymous", "keyed with a valid key") for kind in kinds} <= seen, seen
    assert ("keyed", "error") in seen
