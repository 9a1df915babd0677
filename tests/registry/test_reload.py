"""Registry reload without restart: the router and the providers watch the file (mounted from a ConfigMap, which
updates by an atomic symlink swap), validate each new version, switch at once, keep the old one when the new
one is invalid (metric llmrouter_registry_valid 0 and a counted failure), and a request in flight keeps the
prices it was admitted with. Real gRPC servers on loopback, a real OpenAI-wire fake upstream."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import REGISTRY

from llmrouter.registry import LiveRegistry
from llmrouter.server import start_server
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import providers, router
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port

MTOK = Decimal(1_000_000)


def registry(base_url: str, price: str) -> dict:
    return {
        "tiers": ["economy"],
        "providers": {"budgetai": {"kind": "openai", "base_url": base_url, "api_key_env": "BUDGETAI_KEY"}},
        "models": [
            {
                "name": "cheap-model",
                "provider": "budgetai",
                "tier": "economy",
                "input_usd_per_mtok": price,
                "output_usd_per_mtok": price,
                "context_window": 8192,
                "quality_prior": 0.7,
            }
        ],
    }


class ConfigMapMount:
    """A directory laid out as the kubelet mounts a ConfigMap: models.yaml -> ..data/models.yaml, ..data -> a
    timestamped directory; an update writes a new directory and swaps ..data atomically."""

    def __init__(self, root: Path) -> None:
        self.root, self.version = root, 0
        (root / "models.yaml").symlink_to("..data/models.yaml")

    @property
    def path(self) -> Path:
        return self.root / "models.yaml"

    def publish(self, text: str) -> None:
        self.version += 1
        version = self.root / f"..2026_11_30_{self.version}"
        version.mkdir()
        (version / "models.yaml").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_live_registry_follows_a_configmap_swap_and_keeps_the_old_one_when_invalid(tmp_path: Path) -> None:
    mount = ConfigMapMount(tmp_path)
    mount.publish(yaml.safe_dump(registry("http://127.0.0.1:9", "1.00")))
    live = LiveRegistry(mount.path, "reload-unit")
    admitted = live.current
    assert not live.check()  # nothing changed

    mount.publish(yaml.safe_dump(registry("http://127.0.0.1:9", "2.00")))
    assert live.check()
    assert live.current.models[0].input_usd_per_mtok == Decimal("2.00")
    assert admitted.models[0].input_usd_per_mtok == Decimal("1.00")  # a snapshot never changes under a request
    assert sample("llmrouter_registry_valid", service="reload-unit") == 1

    failures = sample("llmrouter_registry_reloads_total", service="reload-unit", outcome="invalid") or 0
    broken = registry("http://127.0.0.1:9", "2.00")
    broken["models"][0]["tier"] = "no-such-tier"
    for text in (yaml.safe_dump(broken), "models: [unclosed"):
        mount.publish(text)
        assert not live.check()
        assert live.current.models[0].input_usd_per_mtok == Decimal("2.00")
        assert sample("llmrouter_registry_valid", service="reload-unit") == 0
    assert sample("llmrouter_registry_reloads_total", service="reload-unit", outcome="invalid") == failures + 2

    mount.publish(yaml.safe_dump(registry("http://127.0.0.1:9", "3.00")))
    assert live.check()
    assert sample("llmrouter_registry_valid", service="reload-unit") == 1


async def test_a_registry_nested_too_deeply_is_refused_and_the_watch_goes_on(tmp_path: Path) -> None:
    """Brackets nested thousands deep overflowed the parser (RecursionError, no ValueError): it escaped the check and
    ended the watch for good, the gauge still 1, so no later registry (nor, for the providers, key file) was read."""
    mount = ConfigMapMount(tmp_path)
    mount.publish(yaml.safe_dump(registry("http://127.0.0.1:9", "1.00")))
    live = LiveRegistry(mount.path, "reload-nested", interval_s=0.02)
    live.start()
    try:
        mount.publish("models: " + "[" * 5000 + "]" * 5000)
        await until(lambda: sample("llmrouter_registry_valid", service="reload-nested") == 0, timeout=5)
        assert live.current.models[0].input_usd_per_mtok == Decimal("1.00")
        mount.publish(yaml.safe_dump(registry("http://127.0.0.1:9", "2.00")))
        await until(lambda: live.current.models[0].input_usd_per_mtok == Decimal("2.00"), timeout=5)
        assert sample("llmrouter_registry_valid", service="reload-nested") == 1
    finally:
        await live.close()


@pytest.fixture
async def stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ConfigMapMount, FakeOpenAI, str]]:
    """Providers and router reading one mounted registry, checked every 50 ms; no classifier (a named model)."""
    monkeypatch.setenv("BUDGETAI_KEY", "sk-budget")
    with FakeOpenAI() as upstream:
        mount = ConfigMapMount(tmp_path)
        mount.publish(yaml.safe_dump(registry(upstream.base_url, "1.00")))
        p_settings = ProvidersSettings(port=0, registry_path=mount.path, registry_reload_s=0.05)
        p_server = await start_server("providers", p_settings, *await providers.build(p_settings))
        r_settings = RouterSettings(
            port=0,
            registry_path=mount.path,
            registry_reload_s=0.05,
            classifier_addr=f"127.0.0.1:{free_port()}",
            providers_addr=f"127.0.0.1:{p_server.port}",
            models_refresh_s=0.05,
        )
        r_server = await start_server("router", r_settings, *await router.build(r_settings))
        try:
            yield mount, upstream, f"127.0.0.1:{r_server.port}"
        finally:
            await r_server.stop(1)
            await p_server.stop(1)


def request(prompt: str) -> router_pb2.CompleteRequest:
    """A new prompt each time: the response cache must not answer."""
    return router_pb2.CompleteRequest(
        model="cheap-model", messages=[common_pb2.ChatMessage(role="user", content=prompt)], max_tokens=16
    )


def cost_at(reply: router_pb2.CompleteResponse, price: str) -> Decimal:
    return Decimal(price) * (reply.usage.input_tokens + reply.usage.output_tokens) / MTOK


async def test_prices_change_without_restart_and_in_flight_requests_keep_theirs(
    stack: tuple[ConfigMapMount, FakeOpenAI, str],
) -> None:
    mount, upstream, addr = stack
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        before = await stub.Complete(request("one"), timeout=30)
        assert Decimal(before.cost_usd) == cost_at(before, "1.00") > 0

        upstream.latency = 1.5  # the next request is at the upstream while the registry changes
        in_flight = asyncio.ensure_future(stub.Complete(request("two"), timeout=30))
        await until(lambda: upstream.in_flight == 1 or in_flight.done())
        assert not in_flight.done(), in_flight.exception() or in_flight.result()
        mount.publish(yaml.safe_dump(registry(upstream.base_url, "10.00")))
        admitted = await in_flight
        assert Decimal(admitted.cost_usd) == cost_at(admitted, "1.00")  # admitted at 1.00, charged at 1.00

        upstream.latency = 0.0
        after = await stub.Complete(request("three"), timeout=30)  # the model list follows the reload at once
        assert Decimal(after.cost_usd) == cost_at(after, "10.00")
        models = await stub.ListModels(common_pb2.ListModelsRequest(), timeout=10)
        assert [m.input_usd_per_mtok for m in models.models] == ["10.00"]

        mount.publish("tiers: [economy]\nproviders: {}\nmodels: []\n")  # invalid: no models
        await until(lambda: sample("llmrouter_registry_valid", service="router") == 0)
        await until(lambda: sample("llmrouter_registry_valid", service="providers") == 0)
        still = await stub.Complete(request("four"), timeout=30)
        assert Decimal(still.cost_usd) == cost_at(still, "10.00")  # the last valid registry serves on
