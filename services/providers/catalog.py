"""Which registry models this instance can serve, and the dispatcher (gateway + resilience) behind each:
a model is usable when its provider's key is present, or, for the local model, when its artefact is built."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec, ProviderSpec, Registry
from services.providers.dispatch import Dispatcher
from services.providers.gateways.anthropic import AnthropicGateway
from services.providers.gateways.base import Gateway
from services.providers.gateways.openai import OpenAIGateway
from services.providers.settings import ProvidersSettings

log = logging.getLogger("llmrouter.providers")


@dataclass
class Catalog:
    registry: Registry
    dispatchers: dict[str, Dispatcher]  # provider name -> dispatcher, usable providers only

    def resolve(self, name: str) -> tuple[ModelSpec, Dispatcher]:
        model = self.registry.get(name)
        if model is None or model.provider not in self.dispatchers:
            why = "is not in the registry" if model is None else f"is not usable here (provider {model.provider!r})"
            raise ServiceError(grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", f"model {name!r} {why}", {"model": name})
        return model, self.dispatchers[model.provider]

    def usable_models(self) -> list[ModelSpec]:
        return [m for m in self.registry.models if m.provider in self.dispatchers]

    async def aclose(self) -> None:
        for dispatcher in self.dispatchers.values():
            await dispatcher.aclose()


async def build_catalog(registry: Registry, settings: ProvidersSettings) -> Catalog:
    dispatchers: dict[str, Dispatcher] = {}
    for name, spec in registry.providers.items():
        gateway, secret = await _gateway(name, spec, settings)
        if gateway is not None:
            dispatchers[name] = Dispatcher(name, spec, gateway, secret)
    log.info("usable providers", extra={"providers": sorted(dispatchers)})
    return Catalog(registry, dispatchers)


async def _gateway(name: str, spec: ProviderSpec, settings: ProvidersSettings) -> tuple[Gateway | None, str]:
    if spec.kind == "local":
        if not (settings.local_model_dir / "genai_config.json").is_file():
            log.warning("local model not built; run `make local-model`", extra={"provider": name})
            return None, ""
        from services.providers.gateways.local import LocalGateway

        # Loading the ONNX model takes a moment: keep the event loop free meanwhile.
        gateway = await asyncio.to_thread(
            LocalGateway, settings.local_model_dir, spec.max_concurrency, settings.local_threads
        )
        return gateway, ""
    key = spec.api_key(settings.api_keys_dir)
    if spec.needs_key and not key:
        return None, ""
    cls = AnthropicGateway if spec.kind == "anthropic" else OpenAIGateway
    return cls(spec, key), key
