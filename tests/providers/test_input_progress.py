"""The `input` chunk (the attempt's input as the upstream reported it) is sent only to a caller that asks for it: a
router of the version before takes any chunk but a delta or `consumed` for the final one, and would charge the stream
an empty final's usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrouter.v1 import provider_pb2_grpc
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.providers.conftest import providers_service
from tests.providers.helpers import request


async def kinds(stub: provider_pb2_grpc.ProviderStub, asked: bool) -> list[str]:
    chunks = stub.GenerateStream(request("claude", input_progress=asked))
    return [str(chunk.WhichOneof("kind")) async for chunk in chunks]


@pytest.mark.parametrize("asked", [True, False])
async def test_the_reported_input_is_told_only_when_asked(
    tmp_path: Path, anthropic_fake: FakeAnthropic, asked: bool
) -> None:
    async with providers_service(tmp_path, "http://127.0.0.1:9", anthropic_fake.url) as stub:
        told = await kinds(stub, asked)
    assert told[-1] == "final" and "delta" in told
    if asked:  # at message_start, before the first delta
        assert told.index("input") < told.index("delta")
    else:
        assert "input" not in told
