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
from services.providers.gateways.anthropic_batch import AnthropicBatches
from services.providers.gateways.base import Gateway
from services.providers.gateways.batch_client import ProviderBatches
from services.providers.gateways.openai import OpenAIGateway
from services.providers.gateways.openai_batch import OpenAIBatches
from services.providers.settings import ProvidersSettings

log = logging.getLogger("llmrouter.providers")
# A dispatcher replaced by a registry reload is closed once the calls it serves have ended, and not before this
# long after: a call that resolved it just before the swap may not hold its slot yet.
RETIRE_AFTER_S = 5.0
# The Batch API of each provider kind that has one spoken here (llmrouter.registry.BATCH_KINDS).
BATCH_APIS: dict[str, type[OpenAIBatches] | type[AnthropicBatches]] = {
    "openai": OpenAIBatches,
    "anthropic": AnthropicBatches,
}


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


class Retirement:
    """Closes the dispatchers a reload replaced, once the calls they serve are done (or at shutdown), however long
    they run: closed at a fixed delay, a provider's total_timeout_s or a request's 540 s could pass it, and the
    connections of a stream or call still running were cut under it."""

    def __init__(self, after_s: float = RETIRE_AFTER_S) -> None:
        self.after_s = after_s
        self._tasks: set[asyncio.Task[None]] = set()

    def retire(self, old: Catalog, new: Catalog) -> None:
        kept = {id(d) for d in new.dispatchers.values()}
        gone = [d for d in old.dispatchers.values() if id(d) not in kept]
        if gone:
            task = asyncio.get_running_loop().create_task(self._close_later(gone))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close_later(self, dispatchers: list[Dispatcher]) -> None:
        try:
            await asyncio.sleep(self.after_s)
            for dispatcher in dispatchers:
                await dispatcher.drained()
        finally:
            for dispatcher in dispatchers:
                await dispatcher.aclose()


async def build_catalog(
    registry: Registry, settings: ProvidersSettings, reuse: dict[str, Dispatcher] | None = None
) -> Catalog:
    """The catalog of a registry; `reuse` (a previous catalog's dispatchers) keeps the dispatcher, its gateway
    and its breakers, of every provider whose spec did not change (a price change reopens nothing)."""
    dispatchers: dict[str, Dispatcher] = {}
    for name, spec in registry.providers.items():
        previous = (reuse or {}).get(name)
        if previous is not None and previous.spec == spec:
            dispatchers[name] = previous
            continue
        gateway, secret = await _gateway(name, spec, settings)
        if gateway is not None:
            api = BATCH_APIS.get(spec.kind)
            batches: ProviderBatches | None = None if api is None else api(spec, secret)
            dispatchers[name] = Dispatcher(name, spec, gateway, secret, batches)
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
