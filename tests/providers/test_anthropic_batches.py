"""Anthropic's Message Batches gateway against the fake's exact wire format: the creation, the statuses, the results
file and its result types; request ids sent as custom ids Anthropic accepts and mapped back; and which failures
mean no batch was created (nothing billed) and which leave it unknown."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmrouter.registry import BATCH_KINDS, ProviderSpec
from services.providers.catalog import BATCH_APIS
from services.providers.gateways.anthropic_batch import AnthropicBatches, custom_id
from services.providers.gateways.base import Message, UpstreamError, UpstreamRequest
from services.providers.gateways.batch_client import NotCreated
from services.providers.gateways.http import MAX_LINE_BYTES
from tests.fakes import FakeAnthropic, Fault

KEY = "sk-ant-batches"


@pytest.fixture
async def fake_and_api() -> AsyncIterator[tuple[FakeAnthropic, AnthropicBatches]]:
    with FakeAnthropic() as fake:
        fake.api_key = KEY
        api = AnthropicBatches(ProviderSpec(kind="anthropic", base_url=fake.base_url, read_timeout_s=5), KEY)
        yield fake, api
        await api.aclose()


def lines(api: AnthropicBatches, *prompts: str) -> list[tuple[str, dict[str, Any]]]:
    """Request ids as the router makes them: `<edge batch id>:<custom id>`, which Anthropic would refuse."""
    return [
        (f"batch_x:req {i}/ü", api.body(UpstreamRequest("claude-up", [Message("user", p)], max_tokens=20)))
        for i, p in enumerate(prompts)
    ]


def ids(n: int) -> frozenset[str]:
    return frozenset(f"batch_x:req {i}/ü" for i in range(n))


async def test_a_batch_is_created_and_read_back_in_anthropic_wire_format(
    fake_and_api: tuple[FakeAnthropic, AnthropicBatches],
) -> None:
    fake, api = fake_and_api
    cues = {"late": "expire", "stop": "cancel", "bad": "error"}
    fake.batches.fate = lambda params: next(
        (fate for cue, fate in cues.items() if cue in params["messages"][0]["content"][0]["text"]), "ok"
    )
    sent = lines(api, "hello", "late one", "stop it", "bad one")
    batch_id = await api.submit(sent)

    (create,) = fake.requests
    assert create.path == "/v1/messages/batches" and create.method == "POST"
    assert create.headers["x-api-key"] == KEY and create.headers["anthropic-version"] == "2023-06-01"
    requests = create.json["requests"]
    assert [r["custom_id"] for r in requests] == [custom_id(request_id) for request_id, _ in sent]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", r["custom_id"]) for r in requests)
    assert [r["params"] for r in requests] == [params for _, params in sent] and "stream" not in requests[0]["params"]

    fake.batches.release.clear()
    assert (await api.poll(batch_id, ids(4))).status == "in_progress"
    fake.batches.release.set()
    state = await api.poll(batch_id, ids(4))
    assert state.ended and state.status == "ended"
    results = {r.custom_id: r for r in state.results}
    assert set(results) == ids(4)  # mapped back to the request ids
    assert "processing window expired" in results["batch_x:req 1/ü"].error
    assert "canceled" in results["batch_x:req 2/ü"].error
    assert results["batch_x:req 3/ü"].error == "the provider failed the line"  # not the provider's words
    assert all(results[f"batch_x:req {i}/ü"].answer is None for i in (1, 2, 3))
    answer = results["batch_x:req 0/ü"].answer
    assert answer is not None
    content, stop, usage = fake.answer(sent[0][1])
    assert (answer.content, answer.finish_reason) == (content, "stop") and stop == "end_turn"
    assert (answer.input_tokens, answer.output_tokens) == (usage["input_tokens"], usage["output_tokens"])


@pytest.mark.parametrize(
    ("fault", "created"),
    [
        (Fault.error(400), False),  # the batch refused
        (Fault.error(529), None),  # overloaded while creating: unknown
        (Fault.reset(), None),  # the creation's reply lost: unknown
    ],
)
async def test_which_failures_created_no_batch(
    fake_and_api: tuple[FakeAnthropic, AnthropicBatches], fault: Fault, created: bool | None
) -> None:
    fake, api = fake_and_api
    fake.enqueue(fault)
    with pytest.raises(UpstreamError if created is None else NotCreated):
        await api.submit(lines(api, "hello"))


async def test_only_the_wanted_results_are_kept_and_bad_lines_are_skipped(
    fake_and_api: tuple[FakeAnthropic, AnthropicBatches],
) -> None:
    fake, api = fake_and_api
    sent = lines(api, "hello", "there", "bye", "again")
    digests = [custom_id(request_id) for request_id, _ in sent]
    overlong = json.dumps({"custom_id": digests[1], "padding": "x" * (MAX_LINE_BYTES + 1)})

    def tamper(results: list[str]) -> list[str]:
        entries = [json.loads(line) for line in results]
        entries[3]["result"] = {"type": "succeeded", "message": {"content": "not blocks"}}  # no Message
        unknown = {"custom_id": digests[2], "result": {"type": "mystery"}}
        return [overlong, *map(json.dumps, entries), json.dumps(unknown), "not json {", "[1]"]

    fake.batches.tamper = tamper
    batch_id = await api.submit(sent)

    state = await api.poll(batch_id, frozenset({sent[0][0], sent[2][0], sent[3][0]}))
    assert state.ended and sorted(r.custom_id for r in state.results) == sorted([sent[0][0], sent[2][0]])
    assert all(r.answer is not None for r in state.results)  # id 2's own line, not the malformed one after it
    everything = await api.poll(batch_id)  # nothing asked for: every line, by the custom id sent
    assert sorted(r.custom_id for r in everything.results) == sorted(digests[:3])


async def test_usage_that_is_no_token_count_is_left_unknown(
    fake_and_api: tuple[FakeAnthropic, AnthropicBatches],
) -> None:
    fake, api = fake_and_api
    hostile: list[dict[str, Any]] = [
        {"input_tokens": -5, "output_tokens": 3},
        {"input_tokens": 3, "output_tokens": True},
        {"input_tokens": 2**70, "output_tokens": 3},
        {"input_tokens": 3, "cache_read_input_tokens": -1_000_000, "output_tokens": 3},
    ]
    message = fake.batches.message
    fake.batches.message = lambda params: {
        **message(params),
        "usage": hostile[int(params["messages"][0]["content"][0]["text"])],
    }
    sent = lines(api, *map(str, range(len(hostile))))
    state = await api.poll(await api.submit(sent), ids(len(hostile)))

    answers = {r.custom_id: r.answer for r in state.results}
    assert len(answers) == len(hostile)
    for i in range(len(hostile)):
        answer = answers[f"batch_x:req {i}/ü"]
        assert answer is not None and None in (answer.input_tokens, answer.output_tokens), (i, answer)


def test_every_provider_kind_batch_priced_has_its_batch_api_spoken() -> None:
    assert set(BATCH_APIS) == BATCH_KINDS and BATCH_APIS["anthropic"] is AnthropicBatches
