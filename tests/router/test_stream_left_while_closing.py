"""A stream whose caller leaves while the router closes its providers call is charged as a caller who stayed. Over a
channel with interceptors (the call token, as the router's providers channel has one when ROUTER_CALL_TOKEN is set)
closing the call waits on gRPC's writer. A caller that left then, its answer whole (its final chunk, with its usage,
read from the providers), was charged nothing, every token of it delivered free. One that left while a failed call
closed had CancelledError in the failure's stead, what the providers measured of the attempt lost with it: a stream
cut after delivering was charged the delivered words counted here, one that failed before delivering anything its
worst case, even when the providers said they sent nothing. The router's servicer over the in-process store and a
providers channel with the call token's interceptors; a real providers gRPC server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.channels import open_channel
from llmrouter.errors import ServiceError
from llmrouter.registry import LiveRegistry
from llmrouter.v1 import classifier_pb2_grpc, common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router.cache import MemoryCache
from services.router.outbox import Outbox
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.store import Account, MemoryStore, period_id, to_pico
from tests.router.servicer_kit import NoDeadline, registry_file, serve_providers
from tests.router.test_admission import REGISTRY

USAGE = common_pb2.Usage(input_tokens=12, output_tokens=40)
COST = REGISTRY.get("cheap").usage_cost_usd(USAGE)  # type: ignore[union-attr]


class Answering(provider_pb2_grpc.ProviderServicer):
    """Answers once the router's word to send has come: its text, then its final chunk with the usage."""

    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(delta="A whole answer.")
        final = provider_pb2.GenerateResponse(content="A whole answer.", usage=USAGE, cost_usd=str(COST), model="cheap")
        yield provider_pb2.GenerateChunk(final=final)


class ClosingWatched:
    """The router's providers stub, its streams' calls telling `closing` when the router closes them (done_writing,
    the last step of every GenerateStreamOnCue call): the moment the test's caller leaves."""

    def __init__(self, stub: provider_pb2_grpc.ProviderStub, closing: asyncio.Event) -> None:
        self.stub, self.closing = stub, closing

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def GenerateStreamOnCue(self, *args: Any, **kwargs: Any) -> Any:
        call = self.stub.GenerateStreamOnCue(*args, **kwargs)
        done_writing: Callable[[], Any] = call.done_writing

        async def announced() -> None:
            self.closing.set()
            await done_writing()

        call.done_writing = announced
        return call


async def left_while_closing(
    tmp_path: Path, provider: provider_pb2_grpc.ProviderServicer
) -> tuple[dict[str, Any], int]:
    """A stream through `provider` whose caller leaves while the router closes its providers call: its ledger record,
    and what its tenant spent."""
    providers, port = await serve_providers(provider)
    store, closing = MemoryStore(), asyncio.Event()
    path = registry_file(tmp_path, REGISTRY)
    token = SecretStr("token")  # its interceptors on the providers channel, as the router's own (open_channel)
    config = RouterSettings(registry_path=path, data_dir=tmp_path / "data", verifier=False, call_token=token)
    message = common_pb2.ChatMessage(role="user", content="Say something whole.")
    request = router_pb2.CompleteRequest(messages=[message], tenant="t", model="cheap", max_tokens=50)
    try:
        async with open_channel(f"127.0.0.1:{port}", config) as channel:
            servicer = RouterServicer(
                config,
                LiveRegistry(path, "router"),
                store,
                MemoryCache(),
                Outbox(config.data_dir),
                classifier_pb2_grpc.ClassifierStub(channel),
                ClosingWatched(provider_pb2_grpc.ProviderStub(channel), closing),  # type: ignore[arg-type]
                None,
            )

            async def read() -> None:
                with acting_as(ANONYMOUS):
                    async for _ in servicer.CompleteStream(request, NoDeadline()):
                        pass

            reading = asyncio.create_task(read())
            await closing.wait()
            reading.cancel()  # the caller leaves: the providers' last word read, not yet sent on
            await asyncio.gather(reading, return_exceptions=True)
            await servicer.close()
    finally:
        await providers.stop(0)
    [record] = list(store.ledger)
    spent, _ = await store.spent(Account("t", "anonymous"), period_id(config.budget_period))
    return record, spent


async def test_a_stream_left_while_its_whole_answer_closes_its_providers_call_is_charged_the_answer(
    tmp_path: Path,
) -> None:
    record, spent = await left_while_closing(tmp_path, Answering())
    assert Decimal(record["cost_usd"]) == COST and record["output_tokens"] == USAGE.output_tokens
    assert spent == to_pico(COST)


class Interrupted(Answering):
    """Answers a few words, then its upstream's stream is cut: the providers say what it consumed (STREAM_INTERRUPTED),
    more output than the words delivered count (Claude's tokenizer makes more tokens of a text than cl100k_base)."""

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(delta="A few words.")
        measured = {
            "input_tokens": str(USAGE.input_tokens),
            "output_tokens": str(USAGE.output_tokens),
            "estimated": "false",
            "cost_usd": str(COST),
        }
        error = ServiceError(grpc.StatusCode.UNAVAILABLE, "STREAM_INTERRUPTED", "cut", measured)
        await context.abort(error.code, error.message, error.trailing_metadata())


async def test_a_stream_left_while_its_cut_providers_call_closes_is_charged_what_the_providers_measured(
    tmp_path: Path,
) -> None:
    record, spent = await left_while_closing(tmp_path, Interrupted())
    assert record["output_tokens"] == USAGE.output_tokens and not record["tokens_estimated"]
    assert Decimal(record["cost_usd"]) == COST and spent == to_pico(COST)


class FailedBeforeDelivering(Answering):
    """Fails once the router's word to send has come, before any of the answer: the providers' account of the attempt
    in the failure's trailing metadata."""

    def __init__(self, code: grpc.StatusCode, reason: str, metadata: dict[str, str]) -> None:
        self.error = ServiceError(code, reason, "failed", metadata)

    async def GenerateStreamOnCue(self, requests: Any, context: Any) -> AsyncIterator[provider_pb2.GenerateChunk]:
        await anext(aiter(requests))
        yield provider_pb2.GenerateChunk(ready_to_send=True)
        await anext(aiter(requests))
        await context.abort(self.error.code, self.error.message, self.error.trailing_metadata())


async def test_a_stream_left_while_its_failed_providers_call_closes_is_charged_what_the_providers_measured(
    tmp_path: Path,
) -> None:
    """The upstream unavailable, each of the providers' retries billed its prompt: owed what they measured, not the
    attempt's worst case."""
    retried = common_pb2.Usage(input_tokens=2 * USAGE.input_tokens)
    cost = REGISTRY.get("cheap").usage_cost_usd(retried)  # type: ignore[union-attr]
    measured = {"input_tokens": str(retried.input_tokens), "output_tokens": "0", "cost_usd": str(cost)}
    provider = FailedBeforeDelivering(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", measured)
    record, spent = await left_while_closing(tmp_path, provider)
    assert Decimal(record["cost_usd"]) == Decimal(record["owed_usd"]) == cost and spent == to_pico(cost)


async def test_a_stream_left_while_its_unsent_providers_call_closes_owes_nothing(tmp_path: Path) -> None:
    """The providers gave up before sending (too little time left to): no upstream had the request, nothing owed, though
    a timeout's outcome is otherwise unknown."""
    provider = FailedBeforeDelivering(grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", {"sent": "false"})
    record, spent = await left_while_closing(tmp_path, provider)
    assert Decimal(record["cost_usd"]) == 0 and spent == 0
