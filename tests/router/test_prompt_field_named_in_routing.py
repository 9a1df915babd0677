"""A prompt under the registry's largest window but over that of every model available here (the strong model's
provider lists none) is refused by routing's policy, naming `tools` when they are over that window by themselves:
counted alone at that refusal (routing.planned), on the auto-routed path as on the named model's. The router's
servicer over providers and a classifier on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2_grpc, router_pb2
from services.router.store import MemoryStore
from tests.router.servicer_kit import NearScores, NoDeadline, router_servicer
from tests.router.test_admission import REGISTRY


class CheapOnly(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models if m.name == "cheap"])


async def test_tools_over_every_available_window_by_themselves_are_named_on_the_auto_routed_path(
    tmp_path: Path,
) -> None:
    tool = {"type": "function", "function": {"name": "f", "description": "lorem ipsum " * 5_000, "parameters": {}}}
    message = common_pb2.ChatMessage(role="user", content="Hello there")
    request = router_pb2.CompleteRequest(messages=[message], passthrough_json=json.dumps({"tools": [tool]}))
    async with router_servicer(tmp_path, MemoryStore(), CheapOnly(), classifier=NearScores()) as servicer:
        with acting_as(ANONYMOUS), pytest.raises(ServiceError) as err:
            await servicer.Decide(request, NoDeadline())
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED")
    assert err.value.metadata == {"field": "tools"}, err.value.message
    assert "tools alone, rendered into the prompt, is over 8000 tokens" in err.value.message
