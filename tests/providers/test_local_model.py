"""The local model for real: SmolLM2-135M-Instruct through onnxruntime-genai, via the gRPC service. Skipped
only where the artefact was not built (`make local-model`), and failed then under CI=true."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.v1 import common_pb2
from services.providers.settings import ProvidersSettings
from tests.ci import require_local_model
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import providers_service
from tests.providers.helpers import error_of, request


@pytest.fixture
def model_dir() -> Path:
    return require_local_model(ProvidersSettings().local_model_dir)


@pytest.fixture
async def local_stub(tmp_path: Path, model_dir: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic):
    async with providers_service(tmp_path, openai_fake.base_url, anthropic_fake.base_url, model_dir) as stub:
        yield stub


async def test_local_model_answers_for_free(local_stub) -> None:
    models = await local_stub.ListModels(common_pb2.ListModelsRequest())
    assert "smollm2-135m" in [m.name for m in models.models]

    resp = await local_stub.Generate(request("smollm2-135m", "What is the capital of France?", max_tokens=24))
    assert "paris" in resp.content.lower()
    assert resp.provider == "local" and resp.cost_usd == "0"
    assert resp.usage.input_tokens > 10 and 0 < resp.usage.output_tokens <= 24 and not resp.usage.estimated


async def test_local_model_streams(local_stub) -> None:
    deltas: list[str] = []
    async for chunk in local_stub.GenerateStream(request("smollm2-135m", "Name three colours.", max_tokens=16)):
        if chunk.HasField("final"):
            final = chunk.final
        else:
            deltas.append(chunk.delta)
    assert len(deltas) > 3 and final.content == "".join(deltas)
    assert final.usage.output_tokens <= 16


async def test_cancelling_stops_generation(local_stub) -> None:
    # Two long generations fill both local worker threads. Cancelled, they must stop at the next token: if
    # they ran on, a third request would queue behind them for seconds.
    calls = [
        local_stub.GenerateStream(request("smollm2-135m", "Write a long story about a dragon.", max_tokens=512))
        for _ in range(2)
    ]
    for call in calls:
        async for _ in call:
            break
        call.cancel()
    # Measured in the process's CPU time, all its threads (the service runs in this one): the generations left running
    # would spend theirs while the third waits (27 s seen), its own few tokens take a fraction of a second. The clock
    # measured the machine's load too: 2 s beside four busy loops.
    start = time.process_time()
    resp = await local_stub.Generate(request("smollm2-135m", "Say hi.", max_tokens=2))
    assert resp.usage.output_tokens <= 2 and time.process_time() - start < 3.0


def test_build_is_idempotent(model_dir: Path) -> None:
    from services.providers.local_model.build import build

    weights = model_dir / "model.onnx.data"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    build(model_dir)  # already built: only a smoke test runs
    assert weights.stat().st_mtime_ns == before and time.perf_counter() - start < 15


async def test_prompt_beyond_the_context_is_refused(local_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await local_stub.Generate(request("smollm2-135m", "word " * 9000, max_tokens=4))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(info.value).reason == "CONTEXT_LENGTH_EXCEEDED"


@pytest.mark.parametrize(
    ("passthrough", "field"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
)
async def test_what_it_would_ignore_is_refused_not_dropped(local_stub, passthrough: dict[str, Any], field: str) -> None:
    """The local gateway honours no passthrough field but stop: a caller asking for JSON would get plain text."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await local_stub.Generate(
            request("smollm2-135m", "Say hi.", max_tokens=4, passthrough_json=json.dumps(passthrough))
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(info.value)
    assert (error.reason, error.metadata["field"]) == ("UNSUPPORTED_PARAMETER", field)


async def test_what_is_left_out_asks_for_nothing(local_stub) -> None:
    left_out: dict[str, Any] = {"response_format": None, "logprobs": False, "top_logprobs": None, "logit_bias": {}}
    resp = await local_stub.Generate(
        request("smollm2-135m", "Say hi.", max_tokens=4, passthrough_json=json.dumps(left_out))
    )
    assert resp.usage.output_tokens > 0


async def generated(local_stub, prompt: str, passthrough: dict[str, Any]) -> tuple[Any, list[str], Any]:
    """The local model's answer to `prompt` with `passthrough`, unary, and streamed: its deltas and final chunk."""
    asked = request("smollm2-135m", prompt, max_tokens=10, passthrough_json=json.dumps(passthrough))
    unary = await local_stub.Generate(asked)
    deltas: list[str] = []
    async for chunk in local_stub.GenerateStream(asked):
        if chunk.HasField("final"):
            final = chunk.final
        else:
            deltas.append(chunk.delta)
    return unary, deltas, final


@pytest.mark.parametrize("two_tokens_at", [2, 5])  # a stop as a string, and in a list beside one never written
async def test_stop_ends_the_answer_before_it_charging_every_token_generated(local_stub, two_tokens_at: int) -> None:
    """Greedy decoding writes the same answer each time: written whole, one piece per token, it is asked again with a
    stop sequence spanning two of its tokens (held back across them as it streams). Unary and streamed, the answer
    ends just before the sequence with finish_reason stop, and counts every token generated up to the one completing
    it: the stop text's included, as OpenAI bills them (the tokens charged are those generated: the money is exact)."""
    prompt = "Count from one to ten in words, separated by commas."
    _, pieces, whole = await generated(local_stub, prompt, {})
    assert whole.finish_reason == "length" and len(pieces) == whole.usage.output_tokens == 10, pieces
    stop = pieces[two_tokens_at][-1] + pieces[two_tokens_at + 1][0]
    written = next(n for n in range(len(pieces) + 1) if stop in "".join(pieces[:n]))  # tokens until it is written
    before = whole.content[: whole.content.index(stop)]
    unary, deltas, final = await generated(
        local_stub, prompt, {"stop": stop if two_tokens_at == 2 else [stop, "never written"]}
    )
    for answer in (unary, final):
        assert (answer.content, answer.finish_reason) == (before, "stop")
        assert (answer.usage.output_tokens, answer.usage.estimated, answer.cost_usd) == (written, False, "0")
    assert "".join(deltas) == before and final.usage == unary.usage
