"""A gRPC caller's passthrough_json is held to the rules the edge holds a REST caller's body to (one set of them:
llmrouter/openai_fields.py): a field of another shape, fields that do not go together, or one the router cannot honour
is an INVALID_ARGUMENT naming the field, before anything is routed. `{"tools": "x"}` was routed, admitted and sent on
for the upstream to refuse (an attempt that may be charged, retried or fallen back on). Each refused here is refused by
the edge too, naming the same field; every passthrough the edge accepts (and sends on, or drops) is served. A real
router gRPC server over the in-process store, a providers gRPC server on loopback answering."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.json_bounds import MAX_JSON_CONTAINERS, MAX_JSON_ITEMS
from llmrouter.passthrough import CALLER_FIELDS, PASSTHROUGH_FIELDS
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.edge.openai_api import ApiError, parse_request
from services.router.store import MemoryStore
from tests.router.servicer_kit import served_router
from tests.router.test_cache_money import Answering, ask

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
LOOKUP = {"type": "function", "function": {"name": "lookup"}}
# (the field named, the passthrough fields)
REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("tools", {"tools": "x"}),
    ("tools", {"tools": [{"type": "function", "function": {"name": "no spaces"}}]}),
    ("tools", {"tools": [{"type": "retrieval"}]}),
    ("tool_choice", {"tool_choice": "auto"}),
    ("tool_choice", {"tools": [TOOL], "tool_choice": "sometimes"}),
    ("tool_choice", {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}),
    ("parallel_tool_calls", {"parallel_tool_calls": True}),
    ("tools", {"tools": [TOOL, LOOKUP]}),  # two functions of one name: Anthropic's 400, the others' guess
    ("response_format", {"response_format": {"type": "json_schema"}}),
    ("response_format", {"response_format": {"type": "json_object", "strict": True}}),
    ("logprobs", {"logprobs": "yes"}),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 21}),
    ("functions", {"functions": [{"name": "lookup"}]}),
    ("function_call", {"function_call": "auto"}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("n", {"n": 2}),
    # Of the types OpenAI refuses: once sent nowhere unchecked (only an integer n above 1 was refused).
    ("n", {"n": "2"}),
    ("n", {"n": True}),
    ("n", {"n": 1.0}),
    ("n", {"n": 0}),
    ("stream_options", {"stream_options": []}),
    ("stream_options", {"stream_options": "yes"}),
    ("stream_options", {"stream_options": {"include_usage": "yes"}}),
    ("stream_options", {"stream_options": {"include_usage": True, "unknown": 1}}),
    ("service_tier", {"service_tier": "priority"}),
    ("metadata", {"metadata": {"k": 5}}),
    ("store", {"store": "yes"}),
    ("reasoning_effort", {"reasoning_effort": "extreme"}),
    ("prediction", {"prediction": {"type": "content"}}),
]
ACCEPTED: list[dict[str, Any]] = [
    {"tools": [TOOL], "tool_choice": LOOKUP, "parallel_tool_calls": True},
    {"tools": [TOOL], "tool_choice": "none"},
    {"response_format": {"type": "json_object"}},
    {"seed": 7, "top_p": 0.5, "stop": ["\n"]},  # logprobs: "cheap" returns none (test_admission.py has them)
    {"logit_bias": {"50256": -100}, "presence_penalty": 1, "frequency_penalty": -1},
    {"metadata": {"k": "v"}, "store": False, "service_tier": "auto", "modalities": ["text"], "n": 1},
    {"reasoning_effort": "low", "verbosity": "high", "prediction": {"type": "content", "content": "x"}},
    {"user": "u1", "tool_choice": None, "functions": None},
]


def edge_fault(fields: dict[str, Any]) -> str:
    """The field the edge names refusing a body of these fields."""
    body = {"messages": [{"role": "user", "content": "hello"}], **fields}
    with pytest.raises(ApiError) as refused:
        parse_request(json.dumps(body).encode())
    assert refused.value.status == 400
    return str(refused.value.param).partition(".")[0].partition("[")[0]


def edge_passthrough(fields: dict[str, Any]) -> str:
    """The passthrough_json the edge sends the router for a body of these fields (it accepts it)."""
    parsed, raw = parse_request(json.dumps({"messages": [{"role": "user", "content": "hello"}], **fields}).encode())
    return parsed.to_router(raw, "acme", "", "r1").passthrough_json


@asynccontextmanager
async def router_over(tmp_path: Path, provider: Answering) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    """A router over the in-process store and `provider`, served on loopback, and a stub calling it."""
    async with (
        served_router(tmp_path, MemoryStore(), provider) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield router_pb2_grpc.RouterStub(channel)


async def refusal(call: Awaitable[Any]) -> ServiceError:
    """The INVALID_ARGUMENT the router ends `call` with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    refused = ServiceError.from_rpc_error(caught.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, refused
    return refused


async def streamed(router: router_pb2_grpc.RouterStub, request: router_pb2.CompleteRequest) -> None:
    """`request`'s CompleteStream, read to its end."""
    async for _ in router.CompleteStream(request, timeout=10):
        pass


async def test_passthrough_fields_the_edge_refuses_are_refused_naming_them_before_routing(tmp_path: Path) -> None:
    named: list[str | None] = []
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        for field, fields in REFUSED:
            assert edge_fault(fields) == field
            request = ask("hello", "acme", passthrough_json=json.dumps(fields))
            named.append((await refusal(router.Complete(request, timeout=10))).metadata.get("field"))
    assert provider.generated == 0
    assert named == [field for field, _ in REFUSED]


@pytest.mark.parametrize("fields", ACCEPTED)
async def test_passthrough_fields_the_edge_accepts_are_served(tmp_path: Path, fields: dict[str, Any]) -> None:
    """As the edge sends them on, and as a gRPC caller may write them (the fields the edge drops included)."""
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        for prompt, written in (("from the edge", edge_passthrough(fields)), ("written so", json.dumps(fields))):
            answer = await router.Complete(ask(prompt, "acme", passthrough_json=written), timeout=10)
            assert answer.content == f"the answer to {prompt}"
    assert provider.generated == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 1, "stream_options": {"include_usage": True}},
        {"n": None, "stream_options": {"include_usage": False, "include_obfuscation": False}},
    ],
)
async def test_n_and_stream_options_of_openais_types_are_served_to_a_grpc_caller(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    """Typed as OpenAI types them: the edge maps them itself, a gRPC caller's are sent nowhere."""
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        written = json.dumps(fields)
        answer = await router.Complete(ask("once", "acme", passthrough_json=written), timeout=10)
        assert answer.content == "the answer to once"
    assert provider.generated == 1


@pytest.mark.parametrize("fields", [{"n": "2"}, {"stream_options": {"include_usage": "yes"}}])
async def test_n_and_stream_options_of_other_types_are_refused_on_a_stream_too(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    """CompleteStream is admitted as Complete is: refused before anything is routed."""
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        refused = await refusal(streamed(router, ask("hello", "acme", passthrough_json=json.dumps(fields))))
    assert refused.metadata.get("field") == next(iter(fields))
    assert provider.generated == 0


# The chat body's fields the request carries itself (the edge maps a REST caller's there), written in passthrough_json.
OWN_FIELDS: list[dict[str, Any]] = [
    {"max_tokens": 5},
    {"max_completion_tokens": 5},
    {"max_cost_usd": "0.000001"},
    {"max_latency_ms": 1},
    {"temperature": 0.2},
    {"quality_target": 0},
    {"session_id": "s1"},
    {"model": "cheap"},
    {"messages": []},
    {"stream": False},
    {"strong_share": 0.5},
    {"quality_kept": 0.9},
    {"escalation": "off"},
    {"buffer_stream": True},
    {"verifier_threshold": 0.5},
]


async def test_the_requests_own_fields_written_in_passthrough_are_refused_naming_them(tmp_path: Path) -> None:
    """Sent to no provider, they were ignored: a gRPC caller's `{"max_cost_usd": ...}` or `{"max_tokens": 5}` there was
    served uncapped, and charged so, where the edge applies a REST caller's. Refused before anything is routed, as a
    cap the edge cannot read (a misspelt header) is."""
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        for fields in OWN_FIELDS:
            (field,) = fields
            refused = await refusal(
                router.Complete(ask("hello", "acme", passthrough_json=json.dumps(fields)), timeout=10)
            )
            assert refused.metadata.get("field") == field and "passthrough_json" in refused.message
    assert provider.generated == 0


@pytest.mark.parametrize(("method", "stream"), [("Complete", False), ("CompleteStream", True), ("Complete", True)])
async def test_a_stream_written_in_passthrough_is_refused_saying_the_method_decides(
    tmp_path: Path, method: str, stream: bool
) -> None:
    """Whatever it says: told to call CompleteStream, a caller that asked Complete not to stream, or was streaming
    already, was sent the wrong way."""
    provider = Answering()
    request = ask("hello", "acme", passthrough_json=json.dumps({"stream": stream}))
    async with router_over(tmp_path, provider) as router:
        call = streamed(router, request) if method == "CompleteStream" else router.Complete(request, timeout=10)
        refused = await refusal(call)
    assert refused.metadata.get("field") == "stream"
    assert refused.message == (
        "stream is not read from passthrough_json: the method called decides, CompleteStream streaming and Complete not"
    )
    assert provider.generated == 0


async def test_the_requests_own_fields_written_null_in_passthrough_are_left_out(tmp_path: Path) -> None:
    """JSON null is a field left out, as everywhere in passthrough_json: a caller writing every field OpenAI knows, the
    ones it does not set null, is served."""
    provider = Answering()
    written = json.dumps({name: None for fields in OWN_FIELDS for name in fields})
    async with router_over(tmp_path, provider) as router:
        answer = await router.Complete(ask("hello", "acme", passthrough_json=written), timeout=10)
    assert answer.content == "the answer to hello"
    assert provider.generated == 1


# The request's fields saying who pays and which request it is, which the edge sets for a REST caller (no REST body
# names them: a 400 there, an unknown parameter) and never writes in passthrough_json (it writes PASSTHROUGH_FIELDS).
CALLER_WRITTEN: list[dict[str, Any]] = [
    {"tenant": "someone-else"},
    {"api_key": "sk-someone-else"},
    {"api_key_id": "0123456789abcdef"},
    {"request_id": "r-once"},
]


async def test_who_pays_and_the_request_id_written_in_passthrough_are_refused_naming_them(tmp_path: Path) -> None:
    """Read from the request alone, they were ignored there: a caller writing `{"request_id": ...}` believed its retry
    deduplicated, and one writing `{"tenant": ...}` believed it was billed so. OpenAI's `user` and `metadata`, which the
    edge accepts, are served (ACCEPTED)."""
    assert not CALLER_FIELDS & PASSTHROUGH_FIELDS
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        for fields in CALLER_WRITTEN:
            (field,) = fields
            assert edge_fault(fields) == field
            for method in ("Complete", "Decide"):
                request = ask("hi", "acme", passthrough_json=json.dumps(fields))
                refused = await refusal(getattr(router, method)(request, timeout=10))
                assert refused.metadata.get("field") == field and "passthrough_json" in refused.message
        served = await router.Complete(ask("hi", "acme", passthrough_json='{"tenant": null}'), timeout=10)
        assert served.content == "the answer to hi"  # null: a field left out, as for the request's own fields
    assert provider.generated == 1


# passthrough_json with a key given twice (the field named, the path in the message, the text). json.loads kept the
# last copy: the first two were served uncapped and unrefused, whatever anything reading the first copy saw.
GIVEN_TWICE: list[tuple[str, str, str]] = [
    ("max_tokens", "max_tokens", '{"max_tokens": 5, "max_tokens": null}'),
    ("tenant", "tenant", '{"tenant": "someone-else", "tenant": null}'),
    ("user", "user", '{"user": "u1", "user": "u2"}'),
    ("seed", "seed", '{"seed": 1, "s\\u0065ed": 2}'),  # one key to JSON, though not to a proxy comparing the text
    (
        "tools",
        "tools[0].function.name",
        '{"tools": [{"type": "function", "function": {"name": "a", "name": "b"}}]}',
    ),
]


@pytest.mark.parametrize(("field", "path", "text"), GIVEN_TWICE)
async def test_a_key_given_twice_in_passthrough_is_refused_naming_it(
    tmp_path: Path, field: str, path: str, text: str
) -> None:
    """As the edge refuses a REST body with one (tests/edge/test_repeated_json_keys.py)."""
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        refused = await refusal(router.Complete(ask("hi", "acme", passthrough_json=text), timeout=10))
    assert refused.metadata.get("field") == field
    assert refused.message == f"passthrough_json gives {path!r} more than once: give each key once"
    assert provider.generated == 0


async def test_a_key_given_twice_in_a_tool_call_is_refused_naming_it(tmp_path: Path) -> None:
    """`{"id": "c1", "id": "c2"}`: the result answering c2 was paired with the copy json.loads kept."""
    call = '[{"id": "c1", "id": "c2", "type": "function", "function": {"name": "look", "arguments": "{}"}}]'
    asked = ask("hi", "acme")
    asked.messages.add(role="assistant", content="", tool_calls_json=call)
    asked.messages.add(role="tool", content="blue", tool_call_id="c2")
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        refused = await refusal(router.Complete(asked, timeout=10))
    field = "messages[1].tool_calls[0].id"
    assert refused.metadata.get("field") == field
    assert refused.message == f"messages[1].tool_calls_json gives {field!r} more than once: give each key once"
    assert provider.generated == 0


async def test_json_fields_past_twice_the_edges_bounds_are_refused_before_they_are_parsed(tmp_path: Path) -> None:
    """A gRPC caller's 16 MiB of `[[],[],...]` in a field sent nowhere held the router's event loop for seconds, once
    to validate it and again each time it was sent on. Counted together, the tool calls and passthrough_json are
    bounded at twice what the edge takes in a REST body (what it sends on is part of one), the field passing it named;
    commas and brackets within strings count for nothing, and a field of the edge's bounds is served."""
    call = {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}, "x": [0] * 300_000}
    with_calls = ask("hi", "acme")
    with_calls.messages.add(role="assistant", content="", tool_calls_json=json.dumps([call]))
    with_calls.messages.add(role="tool", content="blue", tool_call_id="c1")
    with_calls.passthrough_json = json.dumps({"x": [0] * 100_000})  # within the bound alone, past it with the call
    containers = ask("hi", "acme", passthrough_json=json.dumps({"x": [[]] * (2 * MAX_JSON_CONTAINERS)}))
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        refused = [await refusal(router.Complete(asked, timeout=30)) for asked in (containers, with_calls)]
        within = {"x": [[]] * (MAX_JSON_CONTAINERS - 1), "y": "[{,}]" * 500_000}
        served = await router.Complete(ask("hi", "acme", passthrough_json=json.dumps(within)), timeout=30)
    assert [(error.metadata.get("field"), error.message) for error in refused] == [
        (
            "passthrough_json",
            "passthrough_json takes the request's tool calls and passthrough_json past 200000 JSON objects and arrays",
        ),
        (
            "passthrough_json",
            "passthrough_json takes the request's tool calls and passthrough_json past 400000 JSON array elements and "
            "object members",
        ),
    ]
    assert served.content == "the answer to hi"
    assert provider.generated == 1


def at_the_bound(call_items: list[Any], passthrough_items: list[Any]) -> router_pb2.CompleteRequest:
    """A turn whose one tool call carries `call_items` (beside its id, type and function) answered, and
    passthrough_json carrying `passthrough_items`."""
    call = {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}, "x": call_items}
    asked = ask("hi", "acme", passthrough_json=json.dumps({"x": passthrough_items}))
    asked.messages.add(role="assistant", content="", tool_calls_json=json.dumps([call]))
    asked.messages.add(role="tool", content="blue", tool_call_id="c1")
    return asked


async def test_json_fields_summed_to_twice_the_edges_bounds_are_served_and_one_more_is_refused(
    tmp_path: Path,
) -> None:
    """The bounds, at their edge, across a tool call and passthrough_json. Containers: the call's list, the call, its
    function and its x (its arguments' braces are within a string) and passthrough_json's object and x: 6 besides the
    empty arrays. Items are counted by the commas between them (MAX_REQUEST_ITEMS less one): the call's four members
    and its function's two make 4, and the two arrays' N items N - 1 each, so their items total the commas less 2."""
    containers = 2 * MAX_JSON_CONTAINERS - 6  # empty arrays, split between the call and passthrough_json
    commas = 2 * MAX_JSON_ITEMS - 1 - 2  # zeros, split between them
    served_asks = [
        at_the_bound([[]] * 1_000, [[]] * (containers - 1_000)),
        at_the_bound([0] * 1_000, [0] * (commas - 1_000)),
    ]
    refused_asks = [
        at_the_bound([[]] * 1_000, [[]] * (containers - 1_000 + 1)),
        at_the_bound([0] * 1_000, [0] * (commas - 1_000 + 1)),
    ]
    provider = Answering()
    async with router_over(tmp_path, provider) as router:
        served = [(await router.Complete(asked, timeout=30)).content for asked in served_asks]
        refused = [await refusal(router.Complete(asked, timeout=30)) for asked in refused_asks]
    assert served == ["the answer to blue"] * 2
    assert [error.metadata.get("field") for error in refused] == ["passthrough_json"] * 2
    assert "past 200000 JSON objects and arrays" in refused[0].message
    assert "past 400000 JSON array elements and object members" in refused[1].message
    assert provider.generated == 2
