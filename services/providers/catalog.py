"""Which registry models this instance can serve, and the dispatcher (gateway + resilience) behind each:
a model is usable when its provider's key is present, or, for the local model, when its artefact is built."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import ModelSpec, ProviderSpec, Registry, UnreadableKey
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
    # Providers whose key file holds no key, their last good key still sent (llmrouter_provider_key_valid 0).
    stale_keys: set[str] = field(default_factory=set)

    def key_validity(self) -> dict[str, bool]:
        """llmrouter_provider_key_valid of each provider in the registry: one not offered sends no stale key."""
        return {name: name not in self.stale_keys for name in self.registry.providers}

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
    and its breakers, of every provider whose spec and key did not change (a price change reopens nothing)."""
    dispatchers: dict[str, Dispatcher] = {}
    stale_keys: set[str] = set()
    for name, spec in registry.providers.items():
        previous = (reuse or {}).get(name)
        key = provider_key(name, spec, settings, previous, warn_unheld=True)
        if key is None:  # the file holds no key: the last good one, if any
            key = "" if previous is None else previous.secret
            if previous is not None:
                stale_keys.add(name)
        if previous is not None and previous.spec == spec and previous.secret == key:
            dispatchers[name] = previous
            continue
        gateway = await _gateway(name, spec, settings, key)
        if gateway is not None:
            api = BATCH_APIS.get(spec.kind)
            batches: ProviderBatches | None = None if api is None else api(spec, key)
            dispatchers[name] = Dispatcher(name, spec, gateway, key, batches)
    log.info("usable providers", extra={"providers": sorted(dispatchers)})
    return Catalog(registry, dispatchers, stale_keys)


def keys_changed(catalog: Catalog, settings: ProvidersSettings) -> bool:
    """Whether a provider's key file (or environment) now holds another key than the catalog serves it with: a key
    rotated, come or gone (a mounted Secret's files change in place). A file that holds no key changes nothing; its
    provider, held on its last good key, is noted in the catalog's stale_keys."""
    for name, spec in catalog.registry.providers.items():
        held = catalog.dispatchers.get(name)
        key = provider_key(name, spec, settings, held)
        if key is None and held is not None:
            catalog.stale_keys.add(name)
        else:
            catalog.stale_keys.discard(name)
        if key is not None and key != ("" if held is None else held.secret):
            return True
    return False


def provider_key(
    name: str, spec: ProviderSpec, settings: ProvidersSettings, held: Dispatcher | None, warn_unheld: bool = False
) -> str | None:
    """The provider's key as read now ("" none); None when its file holds no key, so that a file read half-written
    or unreadable takes no working provider (`held`) away. Logged by the file's name, never what it holds; for a
    provider not offered, only where asked (not at every check: an empty placeholder in the Secret is no news)."""
    try:
        key = spec.api_key(settings.api_keys_dir)
    except UnreadableKey as exc:
        if held is not None:
            log.warning(
                "provider key file holds no key; the last good key kept", extra={"provider": name, "error": str(exc)}
            )
        elif warn_unheld:
            log.warning(
                "provider key file holds no key; provider not offered", extra={"provider": name, "error": str(exc)}
            )
        return None
    return key


async def _gateway(name: str, spec: ProviderSpec, settings: ProvidersSettings, key: str) -> Gateway | None:
    if spec.kind == "local":
        if not (settings.local_model_dir / "genai_config.json").is_file():
            log.warning("local model not built; run `make local-model`", extra={"provider": name})
            return None
        from services.providers.gateways.local import LocalGateway

        # Loading the ONNX model takes a moment: keep the event loop free meanwhile.
        return await asyncio.to_thread(
            LocalGateway, settings.local_model_dir, spec.max_concurrency, settings.local_threads
        )
    if spec.needs_key and not key:
        return None
    cls = AnthropicGateway if spec.kind == "anthropic" else OpenAIGateway
    return cls(spec, key)
