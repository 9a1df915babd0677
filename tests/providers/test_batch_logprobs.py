"""A provider batch's answers come back with the log-probabilities their callers asked for, as far as a poll's reply
(one gRPC message) holds them: past that, an answer goes without them, never the whole reply failing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import yaml

from llmrouter.server import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES, start_server
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.providers import ProvidersSettings, build
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import registry

# About 3 MB of log-probabilities an answer (a Complete's keeps up to 4 MiB): seven pass a poll reply's 16 MiB.
TOKENS = 20_000
LINES = 7
ENTRY = {"token": "word", "logprob": -0.25, "bytes": [119, 111, 114, 100]}


@asynccontextmanager
async def batch_provider(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    """The providers service on loopback, its model `cheap` with batch prices and log-probabilities (which its lines
    ask for), for the block: a stub reaching it as the router does (messages up to 16 MiB)."""
    # ~21 MB of results to read: the providers tests' tight read limits (2 s) are for small answers, and a loaded
    # machine took longer than that to serve and parse these.
    spec = registry(openai_fake.base_url, anthropic_fake.base_url, read_timeout_s=30.0, total_timeout_s=60.0)
    cheap = next(m for m in spec["models"] if m["name"] == "cheap")
    cheap.update(batch_input_usd_per_mtok="0.075", batch_output_usd_per_mtok="0.30", logprobs=True)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "no-model")
    registrations, closers = await build(settings)
    running = await start_server("providers", settings, registrations, closers)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS[:2]) as channel:
            yield provider_pb2_grpc.ProviderStub(channel)
    finally:
        await running.stop(0)


def _with_logprobs(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
    """Each answer carries a long answer's log-probabilities, as a provider sends them for top_logprobs 20."""
    lines = []
    for raw in output:
        line = json.loads(raw)
        choice = line["response"]["body"]["choices"][0]
        choice["logprobs"] = {"content": [{**ENTRY, "top_logprobs": [ENTRY]}] * TOKENS, "refusal": None}
        lines.append(json.dumps(line))
    return lines, errors


async def test_a_poll_holding_many_answers_log_probabilities_still_fits_its_reply(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    openai_fake.batches.tamper = _with_logprobs
    async with batch_provider(tmp_path, openai_fake, anthropic_fake) as stub:
        ids = [f"line-{i}" for i in range(LINES)]
        requests = [
            provider_pb2.GenerateRequest(
                model="cheap",
                request_id=request_id,
                messages=[common_pb2.ChatMessage(role="user", content="hello")],
                max_tokens=16,
                passthrough_json=json.dumps({"logprobs": True, "top_logprobs": 1}),
            )
            for request_id in ids
        ]
        submitted = await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="cheap", requests=requests))
        poll = provider_pb2.PollBatchRequest(model="cheap", batch_id=submitted.batch_id, request_ids=ids)
        await stub.PollBatch(poll)  # in progress
        polled = await stub.PollBatch(poll)
    assert polled.ended and polled.ByteSize() <= MAX_MESSAGE_BYTES
    assert sorted(r.request_id for r in polled.results) == ids and all(r.succeeded for r in polled.results)
    kept = [r for r in polled.results if r.response.logprobs_json]
    assert kept, "log-probabilities that fit are kept"
    assert len(json.loads(kept[0].response.logprobs_json)["content"]) == TOKENS
    assert len(kept) < len(ids)  # the others' answers came without them


def _long(output: list[str], errors: list[str]) -> tuple[list[str], list[str]]:
    """Each answer 3 MB long."""
    lines = []
    for raw in output:
        line = json.loads(raw)
        line["response"]["body"]["choices"][0]["message"]["content"] = "long answer " * 250_000
        lines.append(json.dumps(line))
    return lines, errors


async def test_a_poll_that_takes_partial_results_gets_the_first_that_fit_and_the_ids_left_out(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    """Five answers of 3 MB: a poll asking `partial` gets the results of the first ids asked for, in their order,
    within half of its message, and the ids left out, read in the next polls. A poll without it (a router of the
    version before, which takes a missing result for an unknown outcome, charged its hold) is never cut."""
    openai_fake.batches.tamper = _long
    read: list[str] = []
    async with batch_provider(tmp_path, openai_fake, anthropic_fake) as stub:
        ids = [f"line-{i}" for i in range(5)]
        requests = [
            provider_pb2.GenerateRequest(
                model="cheap",
                request_id=request_id,
                messages=[common_pb2.ChatMessage(role="user", content="hello")],
                max_tokens=16,
            )
            for request_id in ids
        ]
        submitted = await stub.SubmitBatch(provider_pb2.SubmitBatchRequest(model="cheap", requests=requests))
        asked = list(reversed(ids))  # their order, not the file's
        whole = provider_pb2.PollBatchRequest(model="cheap", batch_id=submitted.batch_id, request_ids=asked)
        await stub.PollBatch(whole)  # in progress
        polled = await stub.PollBatch(whole)
        assert polled.ended and len(polled.results) == 5 and not polled.unread_ids  # never cut
        while asked:
            part = provider_pb2.PollBatchRequest(
                model="cheap", batch_id=submitted.batch_id, request_ids=asked, partial=True
            )
            polled = await stub.PollBatch(part)
            got = [r.request_id for r in polled.results]
            assert got == asked[: len(got)] and list(polled.unread_ids) == asked[len(got) :]
            assert 0 < len(got) < 5 and polled.ByteSize() <= MAX_MESSAGE_BYTES // 2
            read.extend(got)
            asked = list(polled.unread_ids)
    assert read == list(reversed(ids))
