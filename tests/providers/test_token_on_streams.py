"""In auth=token, a caller's token goes with every kind of call its channel makes (llmrouter.channels): a streamed
one was sent without it, and refused (UNAUTHENTICATED), the router's streams to the providers among them. The real
service on loopback in token mode, before the OpenAI wire-format fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import yaml
from pydantic import SecretStr

from llmrouter.auth import token_digest
from llmrouter.channels import open_channel
from llmrouter.server import start_server
from llmrouter.settings import ServiceSettings
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.providers import ProvidersSettings, build
from services.router.cued_stream import Cue, provider_chunks
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.providers.conftest import registry
from tests.providers.helpers import request
from tests.waiting import eventually

TOKEN = "router-token-0123456789"


@asynccontextmanager
async def serving_in_token_mode(
    tmp_path: Path,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    auth_tokens: str = "",
    auth_tokens_file: Path | None = None,
) -> AsyncIterator[str]:
    """The service in token mode (its address), before the fakes: the tokens given alone open it."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_fake.base_url, anthropic_fake.base_url)))
    settings = ProvidersSettings(
        port=0,
        metrics_port=0,
        registry_path=path,
        local_model_dir=tmp_path / "no-model",
        auth="token",
        auth_tokens=auth_tokens,
        auth_tokens_file=auth_tokens_file,
    )
    running = await start_server("providers", settings, *await build(settings))
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


@pytest.fixture
async def token_address(tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic) -> AsyncIterator[str]:
    """The service in token mode: the router's token alone opens it."""
    async with serving_in_token_mode(
        tmp_path, openai_fake, anthropic_fake, auth_tokens=f"{token_digest(TOKEN)}=router"
    ) as address:
        yield address


def request_writers() -> list[asyncio.Task[object]]:
    """gRPC's tasks writing a stream's requests (for a channel with interceptors, the token's)."""
    return [t for t in asyncio.all_tasks() if "_consume_request_iterator" in getattr(t.get_coro(), "__qualname__", "")]


async def test_a_tokens_file_with_comments_and_blank_lines_opens_the_service_to_its_tokens(
    tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
) -> None:
    """Commented as the edge's key file is (llmrouter/setting_entries.py): the service starts, and the token of the
    commented line opens it."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may call the providers\n\n{token_digest(TOKEN)}=router  # the router's, since 2026-12\n")
    async with (
        serving_in_token_mode(tmp_path, openai_fake, anthropic_fake, auth_tokens_file=tokens) as address,
        open_channel(address, ServiceSettings(call_token=SecretStr(TOKEN))) as channel,
    ):
        assert (
            await provider_pb2_grpc.ProviderStub(channel).ListModels(common_pb2.ListModelsRequest(), timeout=5)
        ).models


async def test_the_token_goes_with_unary_and_streamed_calls(token_address: str) -> None:
    async with open_channel(token_address, ServiceSettings(call_token=SecretStr(TOKEN))) as channel:
        stub = provider_pb2_grpc.ProviderStub(channel)
        assert (await stub.ListModels(common_pb2.ListModelsRequest(), timeout=5)).models
        chunks = [chunk async for chunk in stub.GenerateStream(request("cheap"), timeout=5)]
        assert chunks[-1].final.usage.output_tokens > 0


async def test_a_cued_stream_is_authenticated_and_has_the_token(token_address: str, openai_fake: FakeOpenAI) -> None:
    """GenerateStreamOnCue streams both ways: the server authenticates it as any other call, the channel sends the
    token with it."""
    async with grpc.aio.insecure_channel(token_address) as channel:
        call = provider_pb2_grpc.ProviderStub(channel).GenerateStreamOnCue(timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # on the write when the refusal is back before it
            await call.write(provider_pb2.CuedRequest(request=request("cheap")))
            await call.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(token_address, ServiceSettings(call_token=SecretStr(TOKEN))) as channel:
        call = provider_pb2_grpc.ProviderStub(channel).GenerateStreamOnCue(timeout=5)
        await call.write(provider_pb2.CuedRequest(request=request("cheap")))
        assert (await call.read()).WhichOneof("kind") == "ready_to_send"
        await call.write(provider_pb2.CuedRequest(send=True))
        await call.done_writing()  # else gRPC's task writing for the token's interceptor waits on, past the call
        chunks = [chunk async for chunk in call]
        assert chunks[-1].final.usage.output_tokens > 0
    assert len(openai_fake.requests) == 1


async def test_a_cued_stream_the_router_reads_with_a_token_leaves_no_task_running(token_address: str) -> None:
    """With a call token the channel's interceptors have gRPC write a stream's requests from a task that ends when the
    writing does, not the call: the router never ended its writing, and every cued stream it read left that task
    waiting, with the call it holds, for as long as the router ran."""
    async with open_channel(token_address, ServiceSettings(call_token=SecretStr(TOKEN))) as channel:
        stub = provider_pb2_grpc.ProviderStub(channel)
        chunks = [chunk async for chunk in provider_chunks(stub, request("cheap"), lambda: 5.0, Cue())]
        assert chunks[-1].final.usage.output_tokens > 0
        await eventually(lambda: not request_writers(), "gRPC's request writer ended", timeout_s=5)


async def test_a_cued_stream_refused_before_the_word_to_send_leaves_no_task_running(token_address: str) -> None:
    """A cued stream the providers end before the router's word to send (a model they do not serve here; likewise a
    slot or a deadline they refuse it on, or UNIMPLEMENTED from a providers service of the version before) leaves gRPC's
    request writer waiting too: call.cancel() on a call already ended does not stop it, only ending the writing does."""
    async with open_channel(token_address, ServiceSettings(call_token=SecretStr(TOKEN))) as channel:
        stub = provider_pb2_grpc.ProviderStub(channel)
        with pytest.raises(grpc.RpcError):
            _ = [chunk async for chunk in provider_chunks(stub, request("no-such-model"), lambda: 5.0, Cue())]
        await eventually(lambda: not request_writers(), "gRPC's request writer ended", timeout_s=5)
