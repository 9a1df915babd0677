"""A dispatcher replaced by a registry reload is closed once the calls it serves have ended, however long they run
(a provider's total_timeout_s may pass any fixed delay, and a request may run 540 s): closed at a fixed delay, its
connections were cut under a stream or call still running, a stream failed mid-answer and a call lost mid-generation
was owed its worst case and answered again by a fallback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import grpc
import pytest
import yaml

from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, provider_pb2
from services.providers.catalog import Retirement, build_catalog
from services.providers.service import ProviderServicer, upstream_request
from services.providers.settings import ProvidersSettings
from tests.fakes import FakeOpenAI, Fault
from tests.providers.conftest import registry
from tests.providers.helpers import request
from tests.waiting import eventually


async def test_a_replaced_dispatcher_lets_its_stream_finish(
    tmp_path: Path, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_fake.base_url, openai_fake.base_url)))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "none")
    old = await build_catalog(load_registry(path), settings)
    model, dispatcher = old.resolve("cheap")
    openai_fake.chunk_delay = 0.1  # a stream of a second or more
    retirement = Retirement(after_s=0.2)
    chunks = dispatcher.generate_stream(model, upstream_request(model, request("cheap", "one two three four five")))
    deltas = [(await anext(chunks)).delta]
    retirement.retire(old, await build_catalog(load_registry(path), settings))  # every provider replaced
    async for chunk in chunks:
        deltas.append(chunk.delta)
        final = chunk.final if chunk.HasField("final") else None
    assert final is not None and "".join(deltas) == final.content and final.finish_reason == "stop"
    session = dispatcher.gateway.client._session  # type: ignore[attr-defined]  # closed once drained, not leaked
    for _ in range(100):
        if session is not None and session.closed:
            break
        await asyncio.sleep(0.05)
    assert session is not None and session.closed
    await retirement.aclose()


async def test_a_replaced_dispatcher_lets_its_batch_submission_finish(
    tmp_path: Path, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider batch's calls take no concurrency slot, yet were cut by the close: its creation cut, its outcome
    is unknown (BATCH_OUTCOME_UNKNOWN), and the router holds each line a day and charges its worst case."""
    spec = registry(openai_fake.base_url, openai_fake.base_url)
    cheap = next(m for m in spec["models"] if m["name"] == "cheap")
    cheap.update(batch_input_usd_per_mtok="0.075", batch_output_usd_per_mtok="0.30")
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = ProvidersSettings(port=0, metrics_port=0, registry_path=path, local_model_dir=tmp_path / "none")
    old = await build_catalog(load_registry(path), settings)
    servicer = ProviderServicer(old)
    openai_fake.enqueue(Fault.delay(0), Fault.delay(1.0))  # the upload done, its batch's creation slow
    line = provider_pb2.GenerateRequest(
        model="cheap", request_id="line-1", messages=[common_pb2.ChatMessage(role="user", content="hello")]
    )
    no_context = cast(grpc.aio.ServicerContext, None)  # SubmitBatch reads nothing of it
    submitting = asyncio.ensure_future(
        servicer.SubmitBatch(provider_pb2.SubmitBatchRequest(model="cheap", requests=[line]), no_context)
    )
    await eventually(lambda: len(openai_fake.requests) == 2, "the creation under way")
    retirement = Retirement(after_s=0.2)
    retirement.retire(old, await build_catalog(load_registry(path), settings))  # every provider replaced
    submitted = await submitting
    assert submitted.batch_id
    assert [r.path for r in openai_fake.requests] == ["/v1/files", "/v1/batches"]
    await retirement.aclose()
