"""Fixtures: the fake upstreams (one pair per session, reset between tests) and a providers service started
in-process on a loopback port, against a registry that points at the fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from llmrouter.server import CHANNEL_OPTIONS, start_server
from llmrouter.v1 import provider_pb2_grpc
from services.providers import ProvidersSettings, build
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.fake_groq import FakeGroq

OPENAI_KEY = "sk-fake-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-fake-0123456789"
# Tight limits so resilience tests run in milliseconds; each test may override any of them.
FAST = {
    "connect_timeout_s": 1.0,
    "read_timeout_s": 2.0,
    "total_timeout_s": 5.0,
    "max_retries": 2,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.05,
    "breaker_failures": 3,
    "breaker_cooldown_s": 0.3,
}
GROQ_BATCH_PRICES = {"batch_input_usd_per_mtok": "0.025", "batch_output_usd_per_mtok": "0.04"}


@pytest.fixture(scope="session")
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_fakes(openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    for fake, key in ((openai_fake, OPENAI_KEY), (anthropic_fake, ANTHROPIC_KEY)):
        fake.clear()
        fake.api_key, fake.latency, fake.chunk_delay = key, 0.0, 0.0
    openai_fake.cached_tokens, anthropic_fake.prompt_cache = 0, (0, 0)
    openai_fake.usage_as, anthropic_fake.usage_as = {}, {}
    anthropic_fake.delta_usage, anthropic_fake.start_usage_as, anthropic_fake.delta_usage_as = False, {}, {}
    # A result file rewritten for one test (3 MB answers for a usage of a few tokens) is no other test's.
    openai_fake.batches.tamper = lambda output, errors: (output, errors)
    anthropic_fake.batches.tamper = lambda lines: lines
    monkeypatch.setenv("FAKE_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", ANTHROPIC_KEY)


def registry(
    openai_url: str,
    anthropic_url: str,
    extra_models: Sequence[dict[str, Any]] = (),
    extra_providers: Mapping[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    limits = {**FAST, **overrides}
    return {
        "tiers": ["local", "economy", "premium"],
        "providers": {
            "local": {"kind": "local", "max_concurrency": 2},
            "fakeai": {
                "kind": "openai",
                "base_url": openai_url,
                "api_key_env": "FAKE_OPENAI_KEY",
                "headers": {"x-team": "router"},
                **limits,
            },
            "fakeanthropic": {
                "kind": "anthropic",
                "base_url": anthropic_url,
                "api_key_env": "FAKE_ANTHROPIC_KEY",
                **limits,
            },
            "nokey": {"kind": "openai", "base_url": openai_url, "api_key_env": "FAKE_UNSET_KEY"},
            **(extra_providers or {}),
        },
        "models": [
            model_entry(
                "smollm2-135m", "local", "local", "0", "0", upstream="smollm2-135m-instruct", max_output_tokens=512
            ),
            model_entry("cheap", "fakeai", "economy", "0.15", "0.60", upstream="cheap-upstream-v1"),
            model_entry("strong", "fakeai", "premium", "2.50", "10.00"),
            model_entry("claude", "fakeanthropic", "premium", "3.00", "15.00", upstream="claude-fake-20250101"),
            model_entry("keyless", "nokey", "economy", "1", "1"),
            *extra_models,
        ],
    }


def model_entry(name: str, provider: str, tier: str, inp: str, out: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "tier": tier,
        "input_usd_per_mtok": inp,
        "output_usd_per_mtok": out,
        "context_window": 8192,
        "quality_prior": 0.5,
        **extra,
    }


@asynccontextmanager
async def providers_service(
    tmp_path: Path,
    openai_url: str,
    anthropic_url: str,
    local_model_dir: Path | None = None,
    extra_models: Sequence[dict[str, Any]] = (),
    extra_providers: Mapping[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    """The real service on 127.0.0.1:<free port>, reached through a real gRPC channel; `extra_models` and
    `extra_providers` beside the registry's own."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_url, anthropic_url, extra_models, extra_providers, **overrides)))
    settings = ProvidersSettings(
        port=0, metrics_port=0, registry_path=path, local_model_dir=local_model_dir or tmp_path / "no-model"
    )
    registrations, closers = await build(settings)
    running = await start_server("providers", settings, registrations, closers)
    try:
        # The router's message limits (CHANNEL_OPTIONS' first two), so replies as large as it takes are read whole.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=CHANNEL_OPTIONS[:2]) as channel:
            yield provider_pb2_grpc.ProviderStub(channel)
    finally:
        await running.stop(0)


def stub_serving(extra_models: Sequence[dict[str, Any]], name: str = "stub") -> Any:
    """A fixture (`name`) of the providers service before the session's fakes, `extra_models` beside the registry's:
    a test module's `stub = stub_serving(ITS_MODELS)`."""

    @pytest.fixture(name=name)
    async def serving(
        tmp_path: Path, openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic
    ) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
        async with providers_service(
            tmp_path, openai_fake.base_url, anthropic_fake.base_url, extra_models=extra_models
        ) as s:
            yield s

    return serving


stub = stub_serving(())


@pytest.fixture(scope="module")
def groq() -> Iterator[FakeGroq]:
    with FakeGroq() as fake:
        yield fake


@asynccontextmanager
async def groq_providers(
    tmp_path: Path,
    groq: FakeGroq,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
    **provider: Any,
) -> AsyncIterator[provider_pb2_grpc.ProviderStub]:
    """The providers service with a `groq` provider (the fake, `provider`'s settings beside its kind and key) serving
    model `llama` (economy, $0.05 / $0.08, `GROQ_BATCH_PRICES` in its Batch API) beside the registry's own."""
    groq.clear()
    monkeypatch.setenv("FAKE_GROQ_KEY", "gsk-fake")
    entry = {"kind": "openai", "base_url": groq.base_url, "api_key_env": "FAKE_GROQ_KEY", **provider}
    models = [model_entry("llama", "groq", "economy", "0.05", "0.08", **GROQ_BATCH_PRICES)]
    async with providers_service(
        tmp_path, openai_fake.base_url, anthropic_fake.base_url, extra_models=models, extra_providers={"groq": entry}
    ) as stub:
        yield stub
