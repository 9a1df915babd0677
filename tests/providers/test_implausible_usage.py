"""An upstream that reports usage its answer belies (a buggy self-hosted OpenAI-compatible server, a proxy that zeroes
usage): no output, or far too little, for an answer with text, or no input for a prompt. Such a count is taken for
none, as a missing one: the answer is charged its text counted here (the prompt counted here), flagged estimated and
counted in llmrouter_provider_usage_implausible_total; charged as reported, it went out free. An honest upstream's
count, even one well below ours (another tokenizer), is charged as reported. OpenAI's and Anthropic's wire formats, from
the fakes on loopback, unary and streamed, and a provider Batch API's result lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmrouter.tokens import count_tokens
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.providers.accounting import UNDER_COUNT_FACTOR
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.fake_openai import REFUSAL_CUE
from tests.providers.conftest import model_entry, providers_service
from tests.providers.helpers import collect, metric, request
from tests.providers.test_counted_output_within_max_tokens import ANSWER as HINDI
from tests.providers.test_counted_output_within_max_tokens import LLAMA, MAX_TOKENS
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk
from tests.providers.test_tool_calls import PROMPT as TOOL_PROMPT
from tests.providers.test_tool_calls import TOOLS, tool_request

LONG = "Tell me about the sea, the tides and the moon that pulls them, wave after wave. " * 8
OUTPUT_KEY = {"cheap": "completion_tokens", "claude": "output_tokens"}
INPUT_KEY = {"cheap": "prompt_tokens", "claude": "input_tokens"}
PROVIDER = {"cheap": "fakeai", "claude": "fakeanthropic"}
IMPLAUSIBLE = "llmrouter_provider_usage_implausible_total"


async def generate(
    stub: provider_pb2_grpc.ProviderStub, model: str, streamed: bool
) -> tuple[str, provider_pb2.GenerateResponse]:
    req = request(model, LONG, max_tokens=1000)
    if not streamed:
        answer = await stub.Generate(req)
        return answer.content, answer
    deltas, final = await collect(stub, req)
    assert final is not None
    return "".join(deltas), final


def honest(fake: FakeOpenAI | FakeAnthropic) -> tuple[int, int]:
    """The exact (input, output) the fake reports for the last request, without the counts it was told to give."""
    told, fake.usage_as = fake.usage_as, {}
    try:
        _, _, usage = fake.answer(fake.requests[-1].json)
    finally:
        fake.usage_as = told
    if isinstance(fake, FakeOpenAI):
        return usage["prompt_tokens"], usage["completion_tokens"]
    return usage["input_tokens"], usage["output_tokens"]


def implausible(model: str, direction: str) -> float:
    return metric(IMPLAUSIBLE, provider=PROVIDER[model], model=model, direction=direction)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["cheap", "claude"])
@pytest.mark.parametrize("reported", [0, 1], ids=["none", "one"])
async def test_output_the_answer_belies_is_charged_as_counted_here(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    streamed: bool,
    reported: int,
) -> None:
    fake = openai_fake if model == "cheap" else anthropic_fake
    fake.usage_as = {OUTPUT_KEY[model]: reported}
    before = implausible(model, "output")
    text, answer = await generate(stub, model, streamed)
    counted = count_tokens(text, "cl100k_base")
    assert text and counted > UNDER_COUNT_FACTOR * reported  # the report is far below the answer
    assert answer.usage.output_tokens == counted and answer.usage.estimated
    assert answer.usage.input_tokens == honest(fake)[0]  # the input, plausible, as reported
    assert implausible(model, "output") == before + 1


@pytest.mark.parametrize("reported", [0, 1], ids=["none", "one"])  # one: far under the prompt (UNDER_COUNT_FACTOR)
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_input_the_prompt_belies_is_charged_the_prompt_counted_here(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    streamed: bool,
    reported: int,
) -> None:
    fake = openai_fake if model == "cheap" else anthropic_fake
    fake.usage_as = {INPUT_KEY[model]: reported}
    before = implausible(model, "input")
    _, answer = await generate(stub, model, streamed)
    exact_input, exact_output = honest(fake)
    # Counted as the router counts a prompt (OpenAI's framing): its messages' tokens and more.
    assert answer.usage.input_tokens >= count_tokens("Be brief.") + count_tokens(LONG)
    assert answer.usage.estimated and answer.usage.output_tokens == exact_output
    assert exact_input > 0 and implausible(model, "input") == before + 1


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["cheap", "claude"])
@pytest.mark.parametrize("fewer", [1, UNDER_COUNT_FACTOR], ids=["exact", "another tokenizer's"])
async def test_an_honest_count_is_charged_as_reported(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    streamed: bool,
    fewer: int,
) -> None:
    """The fake's exact counts; and an output count 1/UNDER_COUNT_FACTOR of ours, the least a tokenizer that
    packs more text in a token could honestly report: believed too."""
    fake = openai_fake if model == "cheap" else anthropic_fake
    counted = count_tokens(fake.answer(body_of(model))[0], "cl100k_base")
    if fewer > 1:
        fake.usage_as = {OUTPUT_KEY[model]: -(-counted // fewer)}
    before = implausible(model, "input"), implausible(model, "output")
    _, answer = await generate(stub, model, streamed)
    exact_input, exact_output = honest(fake)
    output = exact_output if fewer == 1 else -(-counted // fewer)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (exact_input, output)
    assert not answer.usage.estimated
    assert (implausible(model, "input"), implausible(model, "output")) == before


def body_of(model: str) -> dict[str, object]:
    """The body the fakes answer for `generate`'s request, as far as their reply reads it."""
    upstream = {"cheap": "cheap-upstream-v1", "claude": "claude-fake-20250101"}[model]
    messages = [{"role": "user", "content": LONG}]
    return {"model": upstream, "messages": messages, "max_tokens": 1000}


BATCH_PRICES = {"batch_input_usd_per_mtok": "0.075", "batch_output_usd_per_mtok": "0.30"}


@pytest.mark.parametrize("provider", ["fakeai", "fakeanthropic"])
@pytest.mark.parametrize(
    ("usage_as", "estimated"),
    [({}, False), ({"output": 0}, True), ({"output": 1}, True), ({"input": 0}, True)],
    ids=["honest", "no output", "one output token", "no input"],
)
async def test_a_batch_line_whose_answer_belies_its_usage_is_flagged(
    tmp_path: Path,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    provider: str,
    usage_as: dict[str, int],
    estimated: bool,
) -> None:
    """Flagged, the router charges the line its hold, as one reported without usage (tests/integration:
    test_provider_batches)."""
    model = {"fakeai": "cheap", "fakeanthropic": "claude"}[provider]
    fake = openai_fake if model == "cheap" else anthropic_fake
    fake.usage_as = {{"input": INPUT_KEY, "output": OUTPUT_KEY}[k][model]: v for k, v in usage_as.items()}
    result = await batch_line(tmp_path, openai_fake, anthropic_fake, provider, LONG)
    assert result.succeeded and count_tokens(result.response.content) > UNDER_COUNT_FACTOR
    assert result.response.usage.estimated == estimated


async def batch_line(
    tmp_path: Path,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    provider: str,
    content: str,
    passthrough_json: str = "",
) -> provider_pb2.BatchLineResult:
    """The result of a batch of one line sent to `provider`, polled until it ended."""
    line = provider_pb2.GenerateRequest(
        model="batchable",
        request_id="line-1",
        messages=[common_pb2.ChatMessage(role="user", content=content)],
        max_tokens=1000,
        passthrough_json=passthrough_json,
    )
    batchable = model_entry("batchable", provider, "economy", "0.15", "0.60", **BATCH_PRICES)
    urls = openai_fake.base_url, anthropic_fake.base_url
    async with providers_service(tmp_path, *urls, extra_models=[batchable]) as stub:
        submitted = await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="batchable", requests=[line]))
        poll = provider_pb2.PollBatchRequest(model="batchable", batch_id=submitted.batch_id, request_ids=["line-1"])
        polled = await stub.PollBatch(poll)
        if not polled.ended:  # OpenAI's fake reports its batches in progress once
            polled = await stub.PollBatch(poll)
    (result,) = polled.results
    return result


@pytest.mark.parametrize("provider", ["fakeai", "fakeanthropic"])
async def test_a_batch_line_of_tool_calls_reported_as_no_output_is_flagged(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, provider: str
) -> None:
    """Its tool calls are output too, as a realtime answer's: taken for none, the line went out free."""
    fake = openai_fake if provider == "fakeai" else anthropic_fake
    fake.usage_as = {OUTPUT_KEY["cheap" if provider == "fakeai" else "claude"]: 0}
    passthrough = json.dumps({"tools": TOOLS, "tool_choice": "auto"})
    result = await batch_line(tmp_path, openai_fake, anthropic_fake, provider, TOOL_PROMPT, passthrough)
    assert result.succeeded and result.response.tool_calls_json and not result.response.content
    assert result.response.usage.estimated


async def test_a_batch_lines_refusal_reported_as_no_output_is_flagged(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    openai_fake.usage_as = {"completion_tokens": 0}
    result = await batch_line(tmp_path, openai_fake, anthropic_fake, "fakeai", f"Do something bad {REFUSAL_CUE}")
    assert result.succeeded and result.response.refusal and not result.response.content
    assert result.response.usage.estimated


def fully_cached(anthropic_fake: FakeAnthropic, body: dict[str, Any]) -> None:
    """Every token of `body`'s prompt reported read from the cache: Anthropic's input_tokens (the uncached rest) is
    0 then."""
    _, _, usage = anthropic_fake.answer(body)
    anthropic_fake.prompt_cache = (usage["input_tokens"], 0)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
async def test_a_prompt_read_whole_from_anthropics_cache_is_charged_as_reported(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic, streamed: bool
) -> None:
    """input_tokens 0 beside cache_read_input_tokens is an honest report of a prompt read whole from the cache: its
    input is the reads (at their price), not a count made here."""
    await generate(stub, "claude", streamed)
    fully_cached(anthropic_fake, anthropic_fake.requests[-1].json)
    before = implausible("claude", "input")
    _, answer = await generate(stub, "claude", streamed)
    read = anthropic_fake.prompt_cache[0]
    assert honest(anthropic_fake)[0] == 0 < read  # as the wire says it
    assert (answer.usage.input_tokens, answer.usage.cached_input_tokens) == (read, read)
    assert not answer.usage.estimated and implausible("claude", "input") == before


async def test_a_batch_lines_prompt_read_whole_from_anthropics_cache_is_charged_as_reported(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    await batch_line(tmp_path, openai_fake, anthropic_fake, "fakeanthropic", LONG)
    sent = list(anthropic_fake.batches.batches.values())[-1]  # the fake keeps every test's batches
    fully_cached(anthropic_fake, sent["_requests"][0]["params"])
    result = await batch_line(tmp_path, openai_fake, anthropic_fake, "fakeanthropic", LONG)
    read = anthropic_fake.prompt_cache[0]
    assert (result.response.usage.input_tokens, result.response.usage.cached_input_tokens) == (read, read)
    assert not result.response.usage.estimated


async def test_a_streams_input_the_prompt_belies_is_not_told_as_its_input(
    stub: provider_pb2_grpc.ProviderStub, anthropic_fake: FakeAnthropic
) -> None:
    """Anthropic reports the input at the stream's start, and the router charges it when its caller leaves mid-way:
    no input for a prompt is not told, so that the router counts the prompt, as for an input never reported."""
    anthropic_fake.usage_as = {"input_tokens": 0}
    chunks = [chunk async for chunk in stub.GenerateStream(request("claude", LONG, input_progress=True))]
    assert chunks[-1].HasField("final") and chunks[-1].final.usage.input_tokens > 0
    assert not any(chunk.HasField("input") for chunk in chunks)
    assert any(chunk.HasField("delta") for chunk in chunks)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["cheap", "claude"])
async def test_tool_calls_reported_as_no_output_are_charged_as_counted_here(
    stub: provider_pb2_grpc.ProviderStub,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    model: str,
    streamed: bool,
) -> None:
    """An answer of tool calls alone (no text) is output all the same: counted here as their JSON."""
    fake = openai_fake if model == "cheap" else anthropic_fake
    fake.usage_as = {OUTPUT_KEY[model]: 0}
    req = tool_request(model)
    if streamed:
        deltas, final = await collect(stub, req)
        assert final is not None and not deltas
        answer = final
    else:
        answer = await stub.Generate(req)
    assert answer.tool_calls_json and not answer.content
    assert answer.usage.output_tokens == count_tokens(answer.tool_calls_json) and answer.usage.estimated


async def test_a_refusal_reported_as_no_output_is_charged_as_counted_here(
    stub: provider_pb2_grpc.ProviderStub, openai_fake: FakeOpenAI
) -> None:
    openai_fake.usage_as = {"completion_tokens": 0}
    answer = await stub.Generate(request("cheap", f"Do something bad {REFUSAL_CUE}"))
    assert answer.refusal and not answer.content
    assert answer.usage.output_tokens == count_tokens(answer.refusal) and answer.usage.estimated


async def test_a_report_max_tokens_leaves_plausible_is_charged_as_reported(tmp_path: Path) -> None:
    """Judged as counted_output counts (never past max_tokens, which no upstream writes past): a report of at least
    1/UNDER_COUNT_FACTOR of max_tokens is believed, however many more tokens the estimating tokenizer finds in the
    answer (cl100k_base counts Hindi near three times Llama 3's tokens)."""
    reported = -(-MAX_TOKENS // UNDER_COUNT_FACTOR)
    assert count_tokens(HINDI, "cl100k_base") > UNDER_COUNT_FACTOR * reported
    usage = {"prompt_tokens": 20, "completion_tokens": reported, "total_tokens": 20 + reported}
    wire = events(openai_chunk({"content": HINDI}), openai_chunk({}, "length") | {"usage": usage}, "[DONE]")
    async with (
        RawUpstream(wire) as upstream,
        providers_service(tmp_path, upstream.url, upstream.url, extra_models=[LLAMA]) as stub,
    ):
        _, final = await collect(stub, request("llama", max_tokens=MAX_TOKENS))
    assert final is not None and (final.usage.output_tokens, final.usage.estimated) == (reported, False)
