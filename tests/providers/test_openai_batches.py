"""OpenAI's Batch API gateway against the fake's exact wire format: the upload and creation, the statuses, the
output and error files; and which failures mean no batch was created (nothing billed) and which leave it
unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llmrouter.registry import ProviderSpec
from services.providers.gateways.base import UpstreamError
from services.providers.gateways.http import MAX_LINE_BYTES
from services.providers.gateways.openai_batch import NotCreated, OpenAIBatches
from tests.fakes import FakeOpenAI, Fault

KEY = "sk-batches"


@pytest.fixture
async def fake_and_api() -> AsyncIterator[tuple[FakeOpenAI, OpenAIBatches]]:
    with FakeOpenAI() as fake:
        fake.api_key = KEY
        api = OpenAIBatches(ProviderSpec(kind="openai", base_url=fake.base_url, read_timeout_s=5), KEY)
        yield fake, api
        await api.aclose()


def lines(*prompts: str) -> list[tuple[str, dict]]:
    return [
        (f"id-{i}", {"model": "up-1", "messages": [{"role": "user", "content": p}], "max_tokens": 20})
        for i, p in enumerate(prompts)
    ]


async def test_a_batch_is_uploaded_created_and_read_back_in_openai_wire_format(
    fake_and_api: tuple[FakeOpenAI, OpenAIBatches],
) -> None:
    fake, api = fake_and_api
    fake.batches.fate = lambda body: "expire" if "late" in body["messages"][0]["content"] else "ok"
    batch_id = await api.submit(lines("hello", "late one", "bye"))

    upload, create = fake.requests
    assert upload.path == "/v1/files" and upload.headers["content-type"].startswith("multipart/form-data")
    assert create.json["endpoint"] == "/v1/chat/completions" and create.json["completion_window"] == "24h"
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in (upload, create))

    assert (await api.poll(batch_id)).status == "in_progress"
    state = await api.poll(batch_id)
    assert state.ended and state.status == "expired"
    results = {r.custom_id: r for r in state.results}
    assert set(results) == {"id-0", "id-1", "id-2"}
    assert results["id-1"].answer is None and "completion window expired" in results["id-1"].error
    answer = results["id-0"].answer
    assert answer is not None
    content, finish, usage = fake.answer(lines("hello")[0][1])
    assert (answer.content, answer.finish_reason) == (content, finish)
    assert (answer.input_tokens, answer.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])


async def test_a_batch_refused_whole_ends_failed_with_no_results(
    fake_and_api: tuple[FakeOpenAI, OpenAIBatches],
) -> None:
    fake, api = fake_and_api
    fake.batches.fail_next = True
    state = await api.poll(await api.submit(lines("hello")))
    assert state.ended and state.status == "failed" and state.results == []


@pytest.mark.parametrize(
    ("faults", "created"),
    [
        ((Fault.error(500),), False),  # the upload failed: a file alone runs nothing
        ((Fault.delay(0), Fault.error(400)), False),  # the batch refused
        ((Fault.delay(0), Fault.reset()), None),  # the creation's reply lost: unknown
        ((Fault.delay(0), Fault.error(500)), None),  # a server error on creation: unknown
    ],
)
async def test_which_failures_created_no_batch(
    fake_and_api: tuple[FakeOpenAI, OpenAIBatches], faults: tuple[Fault, ...], created: bool | None
) -> None:
    fake, api = fake_and_api
    fake.enqueue(*faults)
    with pytest.raises(UpstreamError if created is None else NotCreated):
        await api.submit(lines("hello"))


async def test_only_the_wanted_results_are_kept_and_an_overlong_line_is_skipped(
    fake_and_api: tuple[FakeOpenAI, OpenAIBatches],
) -> None:
    fake, api = fake_and_api
    overlong = '{"custom_id": "id-1", "padding": "' + "x" * (MAX_LINE_BYTES + 1) + '"}'
    fake.batches.tamper = lambda output, errors: ([overlong, *output], errors)
    batch_id = await api.submit(lines("hello", "there", "bye"))
    await api.poll(batch_id)  # in progress

    state = await api.poll(batch_id, frozenset({"id-0", "id-2"}))
    assert state.status == "completed" and sorted(r.custom_id for r in state.results) == ["id-0", "id-2"]
    assert all(r.answer is not None for r in state.results)
    everything = await api.poll(batch_id)
    assert sorted(r.custom_id for r in everything.results) == ["id-0", "id-1", "id-2"]  # id-1's own line
