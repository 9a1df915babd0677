"""A Decide counts against its caller's requests per minute like any request: in the counter and window the requests
admitted count in (Decides and completions together are bounded), refused as a rate-limited completion is
(RATE_LIMITED; at the edge the same 429 body and headers), and before the classifier is asked. Decides were free and
unlimited: one tenant sending them without end kept the shared classifier busy past the router's classifier timeout,
and every other tenant's requests were routed without it. The router's servicer behind its gRPC server, real
providers and classifier gRPC servers on loopback, the edge before them, over both money stores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llmrouter.errors import ServiceError
from llmrouter.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    provider_pb2,
    provider_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from services.router.store import Account, Store, key_id, period_id, to_pico
from services.router.store import keys as store_keys
from tests.integration.conftest import free_port, quiet_edge_settings, served_edge
from tests.router.servicer_kit import router_stub, served_router, store_on
from tests.router.test_admission import REGISTRY

LIMIT = 3  # requests per minute


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=10, output_tokens=5)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model)


class Counting(classifier_pb2_grpc.ClassifierServicer):
    """A classifier that counts the prompts it is asked to score."""

    def __init__(self) -> None:
        self.scored = 0

    async def Score(self, request: Any, context: Any) -> classifier_pb2.ScoreResponse:
        self.scored += len(request.prompts)
        quality = classifier_pb2.PromptScore(quality={"cheap": 0.9, "strong": 0.95})
        return classifier_pb2.ScoreResponse(results=[quality] * len(request.prompts), model_version="test")


@pytest.fixture(autouse=True)
def one_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An hour's rate window, not a minute's, begun at least a minute before its end: every request of the test falls
    in one window whenever it runs."""
    monkeypatch.setattr(store_keys, "RATE_WINDOW_S", 3600)
    while 3600 - time.time() % 3600 < 60:
        time.sleep(1)
    yield


def ask(tenant: str, **fields: Any) -> router_pb2.CompleteRequest:
    """A request of its own prompt (the classifier's answers are cached per tenant and prompt)."""
    message = common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")
    return router_pb2.CompleteRequest(messages=[message], tenant=tenant, max_tokens=50, **fields)


async def refusal(call: Any) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return ServiceError.from_rpc_error(err.value)


def rate_limited(error: ServiceError) -> bool:
    retry_after_s = int(error.metadata["retry_after_s"])
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "RATE_LIMITED" and retry_after_s > 0


async def test_the_decide_past_the_limit_is_refused_before_the_classifier_is_asked(
    tmp_path: Path, store: Store
) -> None:
    classifier = Counting()
    async with router_stub(tmp_path, store, Answering(), classifier=classifier, rate_limit_rpm=LIMIT) as router:
        for _ in range(LIMIT):
            assert (await router.Decide(ask("busy"), timeout=10)).model
        assert classifier.scored == LIMIT
        assert rate_limited(await refusal(router.Decide(ask("busy"), timeout=10)))
        assert classifier.scored == LIMIT  # refused first: the classifier never saw it
        assert (await router.Decide(ask("quiet"), timeout=10)).model  # another tenant has its own allowance
    account = Account("busy", key_id(""))
    assert await store.spent(account, period_id("day")) == (0, 0)  # nothing charged
    assert await store.held_pico(account) == (0, 0)  # nor held


async def test_decides_and_completions_share_the_requests_per_minute(tmp_path: Path, store: Store) -> None:
    async with router_stub(tmp_path, store, Answering(), classifier=Counting(), rate_limit_rpm=LIMIT) as router:
        assert (await router.Complete(ask("busy", model="cheap"), timeout=10)).content == "an answer"
        for _ in range(LIMIT - 1):
            await router.Decide(ask("busy"), timeout=10)
        assert rate_limited(await refusal(router.Complete(ask("busy", model="cheap"), timeout=10)))
        assert rate_limited(await refusal(router.Decide(ask("busy"), timeout=10)))


async def test_the_edge_answers_a_rate_limited_decide_as_a_rate_limited_completion(
    tmp_path: Path, store: Store
) -> None:
    async with served_router(tmp_path, store, Answering(), classifier=Counting(), rate_limit_rpm=LIMIT) as running:
        settings = quiet_edge_settings(f"127.0.0.1:{running.port}")
        async with served_edge(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:

            def body() -> dict[str, Any]:
                return {"model": "auto", "messages": [{"role": "user", "content": f"Hello {uuid.uuid4().hex}"}]}

            assert (await client.post("/chat/completions", json=body())).status_code == 200
            for _ in range(LIMIT - 1):
                assert (await client.post("/router/decide", json=body())).status_code == 200
            decide = await client.post("/router/decide", json=body())
            completion = await client.post("/chat/completions", json=body())
    assert decide.status_code == completion.status_code == 429
    assert decide.json() == completion.json()
    assert decide.json()["error"]["code"] == "rate_limit_exceeded" and decide.json()["error"]["type"] == "requests"
    assert set(decide.headers) == set(completion.headers)
    assert int(decide.headers["retry-after"]) > 0 and decide.headers["x-request-id"]


async def test_a_decide_is_refused_while_the_store_is_out_of_reach(tmp_path: Path) -> None:
    """Counted in the store, a Decide is refused without it, as a completion is (fail closed)."""
    classifier = Counting()
    async with store_on(f"redis://127.0.0.1:{free_port()}/0") as store:  # nothing listens there
        async with (
            served_router(tmp_path, store, Answering(), classifier=classifier, rate_limit_rpm=LIMIT) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            error = await refusal(router_pb2_grpc.RouterStub(channel).Decide(ask("busy"), timeout=10))
        assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "STORE_UNAVAILABLE"
        assert classifier.scored == 0


async def test_a_completion_past_the_limit_is_refused_before_the_classifier_is_asked(
    tmp_path: Path, store: Store
) -> None:
    """A completion's rate limit is counted at its admission, after it was routed: past the limit, each one still had
    the classifier score its prompt before it was refused, so completions sent without end kept the shared classifier
    as busy as Decides did. Once its router has seen the window's requests used up, it refuses the account's next
    ones before routing them, until the window ends (a window's count only grows)."""
    classifier = Counting()
    async with router_stub(tmp_path, store, Answering(), classifier=classifier, rate_limit_rpm=LIMIT) as router:
        for _ in range(LIMIT):
            assert (await router.Complete(ask("busy"), timeout=10)).content == "an answer"
        assert rate_limited(await refusal(router.Complete(ask("busy"), timeout=10)))
        scored = classifier.scored
        for _ in range(5):
            assert rate_limited(await refusal(router.Complete(ask("busy"), timeout=10)))
            assert rate_limited(await refusal(router.Decide(ask("busy"), timeout=10)))
        assert classifier.scored == scored  # refused first: the classifier saw none of them
        assert (await router.Complete(ask("quiet"), timeout=10)).content == "an answer"  # its own allowance


async def test_a_caller_past_its_tokens_per_minute_is_refused_as_one_past_its_requests(
    tmp_path: Path, store: Store
) -> None:
    """ROUTER_RATE_LIMIT_TPM, LiteLLM's tpm_limit: each answer here is charged 15 tokens (10 in, 5 out); with 20 a
    minute the second request is let in (15 so far, under the limit, whatever it will use), and once 30 are charged
    the next is refused RATE_LIMITED naming tokens, with a retry time, and so is a Decide, before the classifier is
    asked. Another tenant has its own; what was charged is what was served."""
    classifier = Counting()
    async with router_stub(tmp_path, store, Answering(), classifier=classifier, rate_limit_tpm=20) as router:
        served = [await router.Complete(ask("busy"), timeout=10) for _ in range(2)]
        refused = await refusal(router.Complete(ask("busy"), timeout=10))
        assert rate_limited(refused) and refused.message == "rate limit of 20 tokens per minute reached"
        scored = classifier.scored
        assert rate_limited(await refusal(router.Decide(ask("busy"), timeout=10)))
        assert classifier.scored == scored
        assert (await router.Complete(ask("quiet"), timeout=10)).content == "an answer"
    models = {model.name: model for model in REGISTRY.models}
    cost = sum(to_pico(models[reply.model].cost_usd(10, 5)) for reply in served)
    assert await store.spent(Account("busy", key_id("")), period_id("day")) == (cost, cost)
    assert await store.held_pico(Account("busy", key_id(""))) == (0, 0)


async def test_a_caller_whose_budget_is_spent_is_held_to_its_requests_per_minute(tmp_path: Path, store: Store) -> None:
    """A completion refused for a spent budget was routed first: the shared classifier scored its prompt. Refusals for a
    budget were not counted against the rate limit, so a caller whose budget was spent could send completions without
    end, each one scored. Counted as every request that reaches admission is, they are refused before routing once the
    window's requests are used up."""
    classifier = Counting()
    async with (
        served_router(
            tmp_path, store, Answering(), classifier=classifier, rate_limit_rpm=LIMIT, tenant_budget_usd=0
        ) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        router = router_pb2_grpc.RouterStub(channel)
        for _ in range(LIMIT):
            assert (await refusal(router.Complete(ask("spent"), timeout=10))).reason == "BUDGET_EXCEEDED"
        assert rate_limited(await refusal(router.Complete(ask("spent"), timeout=10)))
        scored = classifier.scored
        for _ in range(5):
            assert rate_limited(await refusal(router.Complete(ask("spent"), timeout=10)))
        assert classifier.scored == scored  # refused first: the classifier saw none of them
    assert await store.spent(Account("spent", key_id("")), period_id("day")) == (0, 0)  # the limit moves no money
