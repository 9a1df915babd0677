"""A stream cut by the call's deadline after its upstream said it had finished and what it bills (OpenAI's usage chunk
after the finish, Anthropic's message_delta), only its end marker ([DONE], message_stop) still to come: nothing
unknown is left, so the failure carries that usage, marked whole (usage_final), for the router to charge it rather
than the attempt's worst case. Cut before the usage, the outcome is unknown, as before: no measure, no mark. An
answer of tool calls alone, which delivers nothing before the end; real providers service, upstreams on loopback.
Only a caller that asks (GenerateRequest.usage_final) is told so: a router of the version before charges a timeout's
worst case on top of what its metadata measures, and would pay that usage twice. No `consumed` chunk carries it
either: no retry follows, and a router that got the chunk but never the failure (its caller left between them) owes
the worst case on top of what the chunk said."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import USAGE_FINAL, ServiceError
from llmrouter.v1 import provider_pb2, provider_pb2_grpc
from tests.fakes.raw_upstream import StallingUpstream
from tests.providers.conftest import model_entry, providers_service
from tests.providers.helpers import cost, error_of, request, stream_to_failure
from tests.providers.test_hostile_upstream import MESSAGE_START, RawUpstream, events, openai_chunk

ARGUMENTS = json.dumps({"query": "the capital of France"})
OUTPUT_TOKENS = 40  # as the upstreams report it: at least what the tool call counts to


def openai_wire(with_usage: bool) -> bytes:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ARGUMENTS}}
    usage = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 25, "completion_tokens": OUTPUT_TOKENS},
    }
    told = [openai_chunk({"role": "assistant", "tool_calls": [call]}), openai_chunk({}, "tool_calls")]
    return events(*told, *([usage] if with_usage else []))  # and no [DONE]: the upstream stalls


def anthropic_wire(with_usage: bool) -> bytes:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": OUTPUT_TOKENS}}
    return events(
        MESSAGE_START,  # input 10
        {"type": "content_block_start", "index": 0, "content_block": tool},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ARGUMENTS}},
        {"type": "content_block_stop", "index": 0},
        *([delta] if with_usage else []),  # and no message_stop: the upstream stalls
        anthropic=True,
    )


@asynccontextmanager
async def stalled_after(tmp_path: Path, wire: bytes, **providers: Any) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    """The providers service before an upstream that sends `wire` then stalls: cut by its total timeout (1 s), its read
    timeout left far off."""
    async with (
        StallingUpstream(wire) as upstream,
        providers_service(
            tmp_path, upstream.url, upstream.url, total_timeout_s=1.0, read_timeout_s=10.0, **providers
        ) as stub,
    ):
        yield stub


def told_the_whole_usage(err: ServiceError, input_tokens: int, input_price: str, output_price: str) -> None:
    """The failure carries the usage the upstream billed, marked whole, and its cost at the model's prices."""
    assert err.metadata.get(USAGE_FINAL) == "true"
    assert (err.metadata["input_tokens"], err.metadata["output_tokens"]) == (str(input_tokens), str(OUTPUT_TOKENS))
    assert err.metadata["cost_usd"] == cost(input_tokens, OUTPUT_TOKENS, input_price, output_price)


# (model, its wire, the input it reports, its prices per million input and output tokens)
CASES = [("cheap", openai_wire, 25, "0.15", "0.60"), ("claude", anthropic_wire, 10, "3.00", "15.00")]


@pytest.mark.parametrize(("model", "wire", "input_tokens", "input_price", "output_price"), CASES)
async def test_a_stream_cut_after_its_whole_usage_carries_that_usage_marked_whole(
    tmp_path: Path,
    model: str,
    wire: Callable[[bool], bytes],
    input_tokens: int,
    input_price: str,
    output_price: str,
) -> None:
    async with stalled_after(tmp_path, wire(True)) as stub:
        chunks, err = await chunks_to_failure(stub, request(model, usage_final=True))
    assert chunks == []  # tool calls alone: nothing delivered before the end; no `consumed` chunk either
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    told_the_whole_usage(err, input_tokens, input_price, output_price)
    assert err.metadata["estimated"] == "false"


@pytest.mark.parametrize(("model", "wire"), [(model, wire) for model, wire, *_ in CASES])
async def test_a_stream_cut_before_its_usage_is_of_unknown_outcome(
    tmp_path: Path, model: str, wire: Callable[[bool], bytes]
) -> None:
    async with stalled_after(tmp_path, wire(False)) as stub:
        _, err = await stream_to_failure(stub, request(model, usage_final=True))
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert USAGE_FINAL not in err.metadata and "cost_usd" not in err.metadata  # the router owes its worst case


@pytest.mark.parametrize(("model", "wire"), [(model, wire) for model, wire, *_ in CASES])
async def test_a_caller_that_does_not_ask_is_told_an_unknown_outcome_as_before(
    tmp_path: Path, model: str, wire: Callable[[bool], bytes]
) -> None:
    async with stalled_after(tmp_path, wire(True)) as stub:
        chunks, err = await chunks_to_failure(stub, request(model))
    assert chunks == []
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    # Its worst case is all it is charged: the usage measured on top would be that attempt's tokens paid twice.
    assert USAGE_FINAL not in err.metadata and "cost_usd" not in err.metadata


async def chunks_to_failure(
    stub: provider_pb2_grpc.ProviderStub, req: provider_pb2.GenerateRequest
) -> tuple[list[provider_pb2.GenerateChunk], ServiceError]:
    """A stream that must end in an error: every chunk it sent first (of any kind), and that error."""
    chunks: list[provider_pb2.GenerateChunk] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in stub.GenerateStream(req):
            chunks.append(chunk)
    return chunks, error_of(caught.value)


def openai_wire_counting_as_it_goes() -> bytes:
    """A server that reports the usage so far with every chunk (vLLM's continuous usage stats), cut before its finish:
    the count it last gave is not the whole answer's."""
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ARGUMENTS}}
    told = openai_chunk({"role": "assistant", "tool_calls": [call]})
    told["usage"] = {"prompt_tokens": 25, "completion_tokens": 12}
    return events(told)  # and no finish: the upstream stalls while still generating


def anthropic_wire_reporting_nothing_written() -> bytes:
    """A finish whose count the answer belies: no output for a tool call's arguments (a proxy zeroing usage)."""
    tool = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 0}}
    return events(
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": tool},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ARGUMENTS}},
        {"type": "content_block_stop", "index": 0},
        delta,
        anthropic=True,
    )


@pytest.mark.parametrize(
    ("model", "wire"),
    [("cheap", openai_wire_counting_as_it_goes), ("claude", anthropic_wire_reporting_nothing_written)],
)
async def test_a_usage_before_the_finish_or_one_the_answer_belies_is_no_whole_bill(
    tmp_path: Path, model: str, wire: Callable[[], bytes]
) -> None:
    async with stalled_after(tmp_path, wire()) as stub:
        _, err = await stream_to_failure(stub, request(model, usage_final=True))
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    assert USAGE_FINAL not in err.metadata and "cost_usd" not in err.metadata  # the router owes its worst case


async def test_a_whole_usage_priced_at_nothing_is_told_with_its_counts(tmp_path: Path) -> None:
    """A model the providers' registry prices at 0 (reloaded on its own, it may differ from the prices the router
    admitted the request at, which it charges the counts at): the counts are told all the same, with the mark. Left
    out, the router had the mark and no measure: the worst case, not the usage."""
    free = model_entry("free", "fakeai", "economy", "0", "0", upstream="cheap-upstream-v1")
    async with stalled_after(tmp_path, openai_wire(True), extra_models=[free]) as stub:
        _, err = await stream_to_failure(stub, request("free", usage_final=True))
    assert err.metadata.get(USAGE_FINAL) == "true"
    assert (err.metadata.get("input_tokens"), err.metadata.get("output_tokens")) == ("25", str(OUTPUT_TOKENS))
    assert err.metadata.get("cost_usd") == "0"


@pytest.mark.parametrize(("model", "wire", "input_tokens", "input_price", "output_price"), CASES)
async def test_a_malformed_event_after_the_whole_usage_carries_that_usage_marked_whole(
    tmp_path: Path,
    model: str,
    wire: Callable[[bool], bytes],
    input_tokens: int,
    input_price: str,
    output_price: str,
) -> None:
    """Not a timeout alone: any failure otherwise of unknown outcome (here a malformed reply, UPSTREAM_ERROR) after
    the upstream said it finished and what it bills leaves nothing billed unknown, and is marked so
    (docs/conventions.md)."""
    async with (
        RawUpstream(wire(True) + b"data: {not json\n\n") as upstream,
        providers_service(tmp_path, upstream.url, upstream.url) as stub,
    ):
        _, err = await stream_to_failure(stub, request(model, usage_final=True))
    assert (err.code, err.reason) == (grpc.StatusCode.INTERNAL, "UPSTREAM_ERROR")
    told_the_whole_usage(err, input_tokens, input_price, output_price)
