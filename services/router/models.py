"""Which registry models can be used right now: those the providers service reports usable (its API key is
set, its artefact built). Refreshed in the background of requests, and at once when the registry was reloaded;
a stale list beats no list."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from llmrouter.errors import ServiceError
from llmrouter.registry import LiveRegistry, ModelSpec, Registry
from llmrouter.v1 import common_pb2, provider_pb2_grpc

log = logging.getLogger("llmrouter.router.models")


class AvailableModels:
    def __init__(self, registry: LiveRegistry, providers: provider_pb2_grpc.ProviderStub, refresh_s: float) -> None:
        self.live = registry
        self.registry: Registry = registry.current  # the snapshot the models below come from
        self.providers = providers
        self.refresh_s = refresh_s
        self._models: list[ModelSpec] = []
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, timeout: float | None) -> list[ModelSpec]:
        if not self._stale():
            return self._models
        async with self._lock:
            if self._stale():
                await self._refresh(timeout)
        return self._models

    def _stale(self) -> bool:
        too_old = time.monotonic() - self._fetched_at >= self.refresh_s
        return too_old or not self._models or self.registry is not self.live.current

    async def _refresh(self, timeout: float | None) -> None:
        registry = self.live.current
        try:
            reply = await self.providers.ListModels(common_pb2.ListModelsRequest(), timeout=timeout or 5.0)
        except grpc.RpcError as err:
            if self._models:
                log.warning("providers unreachable; keeping the last model list", extra={"error": str(err)})
                return
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "providers service unavailable"
            ) from None
        usable = {m.name for m in reply.models}
        self._models, self.registry = [m for m in registry.models if m.name in usable], registry
        self._fetched_at = time.monotonic()

    def baseline(self) -> ModelSpec | None:
        """The strongest available model (highest tier, then price): what 'always strong' would cost."""
        return max(
            self._models,
            key=lambda m: (self.registry.tier_rank(m), m.output_usd_per_mtok, m.input_usd_per_mtok),
            default=None,
        )
