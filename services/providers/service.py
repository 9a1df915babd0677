"""The llmrouter.v1.Provider servicer: validates a request, resolves the model, hands it to the dispatcher."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from llmrouter.errors import invalid
from llmrouter.registry import ModelSpec, load_registry
from llmrouter.server import Closer, Registrations
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from services.providers.catalog import Catalog, build_catalog
from services.providers.gateways.base import Message, UpstreamRequest, parse_passthrough
from services.providers.settings import ProvidersSettings

SERVICE = "llmrouter.v1.Provider"
ROLES = {"system", "developer", "user", "assistant", "tool"}


class ProviderServicer(provider_pb2_grpc.ProviderServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def Generate(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.GenerateResponse:
        model, dispatcher = self.catalog.resolve(request.model)
        return await dispatcher.generate(model, upstream_request(model, request), context.time_remaining())

    async def GenerateStream(
        self, request: provider_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.GenerateChunk]:
        model, dispatcher = self.catalog.resolve(request.model)
        upstream = upstream_request(model, request)
        # aclosing: a caller that goes away closes the upstream stream now, not whenever the GC gets to it.
        async with aclosing(dispatcher.generate_stream(model, upstream, context.time_remaining())) as chunks:
            async for chunk in chunks:
                yield chunk

    async def ListModels(
        self, request: common_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[m.info() for m in self.catalog.usable_models()])


def upstream_request(model: ModelSpec, request: provider_pb2.GenerateRequest) -> UpstreamRequest:
    if not request.messages:
        raise invalid("messages must not be empty", "messages")
    for i, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {sorted(ROLES)}, got {m.role!r}", f"messages[{i}].role")
    if request.HasField("max_tokens") and request.max_tokens <= 0:
        raise invalid("max_tokens must be positive", "max_tokens")
    try:
        passthrough = parse_passthrough(request.passthrough_json)
    except ValueError as exc:
        raise invalid(f"passthrough_json: {exc}", "passthrough_json") from None
    # OpenAI's "developer" role is its newer name for "system"; upstreams that predate it (vLLM, Ollama,
    # Anthropic, the local model) know only "system".
    messages = [
        Message(
            "system" if m.role == "developer" else m.role,
            m.content,
            m.name,
            m.tool_call_id,
            _tool_calls(m.tool_calls_json, i),
        )
        for i, m in enumerate(request.messages)
    ]
    # Never ask for more than the model can give: upstreams refuse it, and it bounds the worst-case cost.
    wanted = request.max_tokens if request.HasField("max_tokens") else model.max_output_tokens
    return UpstreamRequest(
        model=model.upstream_name,
        messages=messages,
        max_tokens=min(wanted, model.max_output_tokens),
        temperature=request.temperature if request.HasField("temperature") else None,
        passthrough=passthrough,
        request_id=request.request_id,
    )


def _tool_calls(raw: str, index: int) -> list[dict[str, Any]]:
    """A message's tool_calls_json: a JSON array of objects, or nothing."""
    if not raw:
        return []
    try:
        calls = json.loads(raw)
    except ValueError:
        calls = None
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        field = f"messages[{index}].tool_calls_json"
        raise invalid(f"{field} must be a JSON array of objects", field)
    return calls


async def build(settings: ProvidersSettings) -> tuple[Registrations, list[Closer]]:
    try:
        registry = load_registry(settings.registry_path)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    catalog = await build_catalog(registry, settings)
    servicer = ProviderServicer(catalog)
    registrations: Registrations = {
        SERVICE: lambda server: provider_pb2_grpc.add_ProviderServicer_to_server(servicer, server)
    }
    return registrations, [catalog.aclose]
