"""A gRPC caller's `stop` (in passthrough_json) is held to the shape a REST caller's is (OpenAI's): a string, or a list
of at most MAX_STOP strings, each of at most MAX_STOP_CHARS characters; any other is an INVALID_ARGUMENT naming stop
before anything is routed. It was sent on, for an upstream to refuse after routing, or dropped unseen by the local
model, which reads only strings. A real router gRPC server over the in-process store, a providers gRPC server on
loopback answering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.errors import ServiceError
from llmrouter.passthrough import MAX_STOP, MAX_STOP_CHARS
from services.router.store import MemoryStore
from tests.router.servicer_kit import router_stub
from tests.router.test_cache_money import Answering, ask

# A sequence past MAX_STOP_CHARS, alone or listed: a 100 kB one was accepted and sent on.
LONG = "x" * (MAX_STOP_CHARS + 1)
REFUSED: list[Any] = [7, ["\n", 7], {"text": "\n"}, ["."] * (MAX_STOP + 1), True, LONG, [".", LONG]]
SERVED: list[Any] = [None, "", "\n", [], ["."] * MAX_STOP, "x" * MAX_STOP_CHARS]


async def test_a_stop_of_another_shape_is_refused_naming_it(tmp_path: Path) -> None:
    refused: list[ServiceError] = []
    provider = Answering()
    async with router_stub(tmp_path, MemoryStore(), provider) as router:
        for stop in REFUSED:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await router.Complete(ask("hello", "acme", passthrough_json=json.dumps({"stop": stop})), timeout=10)
            refused.append(ServiceError.from_rpc_error(caught.value))
        assert provider.generated == 0
        for stop in SERVED:
            await router.Complete(ask("hello", "acme", passthrough_json=json.dumps({"stop": stop})), timeout=10)
    assert provider.generated == len(SERVED)
    # Each in the edge's words (llmrouter/openai_fields.py), its path within stop first (`stop[1]: ...`).
    assert {(e.code, e.metadata["field"]) for e in refused} == {(grpc.StatusCode.INVALID_ARGUMENT, "stop")}
    assert all(e.message.startswith("stop") for e in refused)
