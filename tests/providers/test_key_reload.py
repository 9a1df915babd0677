"""Provider keys follow their mounted Secret without a restart: the kubelet swaps the files in place (a `..data`
symlink), and the providers read the keys again as often as the registry. A rotated key is sent from then on (the
old dispatcher finishing its calls in flight), a key come makes its provider usable, a key gone takes it away, and
the router's model list follows. A key file read half-written or unreadable keeps the last good key. Real providers
and router servers on loopback, an OpenAI-wire fake upstream that checks the Authorization header."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import REGISTRY

from llmrouter.errors import ServiceError
from llmrouter.server import start_server
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services import providers, router
from services.providers.settings import ProvidersSettings
from services.router.exclusions import UNAVAILABLE
from services.router.settings import RouterSettings
from tests.fakes import FakeOpenAI
from tests.integration.conftest import free_port
from tests.waiting import eventually

KEY_ENV = "ROTATING_OPENAI_KEY"
OLD, NEW = "sk-old-0123456789", "sk-new-9876543210"


class SecretMount:
    """A directory laid out as the kubelet mounts a Secret: <key> -> ..data/<key>, ..data -> a timestamped directory;
    an update writes a new directory, swaps ..data atomically, then adds or removes the top-level links."""

    def __init__(self, root: Path) -> None:
        self.root, self.version = root, 0
        root.mkdir()

    def publish(self, data: dict[str, str]) -> None:
        self.version += 1
        version = self.root / f"..2026_12_06_{self.version}"
        version.mkdir()
        for name, value in data.items():
            (version / name).write_text(value)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")
        for name in data:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in data:
                entry.unlink()

    def write_in_place(self, name: str, content: bytes) -> None:
        """As a writer that is no kubelet (an editor, `echo >`) leaves the file for a moment, or for good."""
        (self.root / "..data" / name).write_bytes(content)


def registry(base_url: str) -> dict:
    return {
        "tiers": ["economy"],
        "providers": {"rotating": {"kind": "openai", "base_url": base_url, "api_key_env": KEY_ENV}},
        "models": [
            {
                "name": "cheap-model",
                "provider": "rotating",
                "tier": "economy",
                "input_usd_per_mtok": "1.00",
                "output_usd_per_mtok": "1.00",
                "context_window": 8192,
                "quality_prior": 0.7,
            }
        ],
    }


@pytest.fixture
async def stack(
    tmp_path: Path, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SecretMount, router_pb2_grpc.RouterStub]]:
    """Providers reading the keys from a Secret mount, and a router, each checking every 50 ms; no classifier (a
    named model). The mount holds no key until a test publishes one."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    openai_fake.api_key = None  # each test says which key the upstream takes
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_fake.base_url)))
    keys = SecretMount(tmp_path / "keys")
    p_settings = ProvidersSettings(
        port=0,
        metrics_port=0,
        registry_path=path,
        registry_reload_s=0.05,
        api_keys_dir=keys.root,
        local_model_dir=tmp_path / "none",
    )
    p_server = await start_server("providers", p_settings, *await providers.build(p_settings))
    r_settings = RouterSettings(
        port=0,
        metrics_port=0,
        registry_path=path,
        registry_reload_s=0.05,
        classifier_addr=f"127.0.0.1:{free_port()}",
        providers_addr=f"127.0.0.1:{p_server.port}",
        models_refresh_s=0.05,
    )
    r_server = await start_server("router", r_settings, *await router.build(r_settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{r_server.port}") as channel:
            yield keys, router_pb2_grpc.RouterStub(channel)
    finally:
        await r_server.stop(1)
        await p_server.stop(1)


def request(prompt: str) -> router_pb2.CompleteRequest:
    """A new prompt each time: the response cache must not answer."""
    return router_pb2.CompleteRequest(
        model="cheap-model", messages=[common_pb2.ChatMessage(role="user", content=prompt)], max_tokens=16
    )


async def offered(stub: router_pb2_grpc.RouterStub) -> list[str]:
    return [m.name for m in (await stub.ListModels(common_pb2.ListModelsRequest(), timeout=10)).models]


def key_valid() -> float | None:
    return REGISTRY.get_sample_value("llmrouter_provider_key_valid", {"provider": "rotating"})


def sent_keys(fake: FakeOpenAI) -> list[str]:
    return [r.headers.get("authorization", "") for r in fake.requests]


async def test_a_rotated_key_is_sent_from_then_on_and_calls_in_flight_finish_on_the_old_one(
    stack: tuple[SecretMount, router_pb2_grpc.RouterStub], openai_fake: FakeOpenAI
) -> None:
    keys, stub = stack
    keys.publish({KEY_ENV: OLD})
    await eventually(lambda: offered(stub), "the provider offered once its key came")
    openai_fake.api_key = OLD
    assert (await stub.Complete(request("one"), timeout=30)).content

    openai_fake.latency = 1.0  # the next call is at the upstream while the key rotates
    in_flight = asyncio.ensure_future(stub.Complete(request("two"), timeout=30))
    await eventually(lambda: openai_fake.in_flight == 1 or in_flight.done(), "a call at the upstream")
    assert not in_flight.done(), in_flight.exception() or in_flight.result()
    openai_fake.latency = 0.0
    openai_fake.api_key = None  # both keys taken while the rotation is under way, as a provider does
    keys.publish({KEY_ENV: NEW})
    asked = 0

    async def new_key_sent() -> bool:
        nonlocal asked
        asked += 1
        await stub.Complete(request(f"rotating {asked}"), timeout=30)
        return sent_keys(openai_fake)[-1] == f"Bearer {NEW}"

    await eventually(new_key_sent, "the rotated key sent")
    assert (await in_flight).content  # finished on the dispatcher it started on, with the old key
    assert sent_keys(openai_fake)[1] == f"Bearer {OLD}"

    openai_fake.api_key = NEW  # the old key revoked
    sent_before = len(openai_fake.requests)
    for n in range(5):
        assert (await stub.Complete(request(f"after {n}"), timeout=30)).content
    assert sent_keys(openai_fake)[sent_before:] == [f"Bearer {NEW}"] * 5


async def test_a_key_come_makes_its_models_usable_and_a_key_gone_takes_them_away(
    stack: tuple[SecretMount, router_pb2_grpc.RouterStub], openai_fake: FakeOpenAI
) -> None:
    keys, stub = stack
    assert await offered(stub) == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Complete(request("before"), timeout=30)
    assert ServiceError.from_rpc_error(refused.value).message == f"model 'cheap-model' is {UNAVAILABLE}"

    keys.publish({KEY_ENV: NEW})  # External Secrets made the Secret after the pods started
    await eventually(lambda: offered(stub), "the provider offered once its key came")
    openai_fake.api_key = NEW
    assert (await stub.Complete(request("with the key"), timeout=30)).content

    keys.publish({})  # the key removed from the Secret

    async def not_offered() -> bool:
        return await offered(stub) == []

    await eventually(not_offered, "the provider no longer offered once its key went")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Complete(request("after"), timeout=30)
    assert ServiceError.from_rpc_error(refused.value).message == f"model 'cheap-model' is {UNAVAILABLE}"


@pytest.mark.parametrize(
    "content", [b"", b"sk-new-\x00\x00\x00", b"\xffsk-new"], ids=["emptied", "half-written", "not-utf8"]
)
async def test_a_key_file_read_half_written_keeps_the_last_good_key(
    stack: tuple[SecretMount, router_pb2_grpc.RouterStub],
    openai_fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
) -> None:
    keys, stub = stack
    keys.publish({KEY_ENV: OLD})
    await eventually(lambda: offered(stub), "the provider offered once its key came")
    openai_fake.api_key = OLD
    caplog.set_level(logging.WARNING, "llmrouter.providers")

    keys.write_in_place(KEY_ENV, content)
    await eventually(
        lambda: any(r.getMessage().endswith("the last good key kept") for r in caplog.records), "the warning"
    )
    assert await offered(stub) == ["cheap-model"]
    assert (await stub.Complete(request("still served"), timeout=30)).content
    assert sent_keys(openai_fake)[-1] == f"Bearer {OLD}"
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "sk-" not in logged and "provider key file holds no key" in logged  # its file named, never a key
    assert key_valid() == 0  # the stale key still sent is told by a metric (alert LLMRouterProviderKeyInvalid)

    keys.write_in_place(KEY_ENV, NEW.encode())  # the write completed

    async def new_key_sent() -> bool:
        await stub.Complete(request(f"written {len(openai_fake.requests)}"), timeout=30)
        return sent_keys(openai_fake)[-1] == f"Bearer {NEW}"

    openai_fake.api_key = None
    await eventually(new_key_sent, "the key written whole sent")
    assert key_valid() == 1


async def test_a_stopped_service_leaves_no_key_valid_series(
    tmp_path: Path, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gauge is read at scrape time from the services running: one stopped on its last good key left its series
    at 0 in the process for good, which a later service (a test sharing the process) was read by."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(registry(openai_fake.base_url)))
    keys = SecretMount(tmp_path / "keys")
    keys.publish({KEY_ENV: OLD})
    settings = ProvidersSettings(
        port=0,
        metrics_port=0,
        registry_path=path,
        registry_reload_s=0.05,
        api_keys_dir=keys.root,
        local_model_dir=tmp_path / "none",
    )
    server = await start_server("providers", settings, *await providers.build(settings))
    try:
        assert key_valid() == 1
        keys.write_in_place(KEY_ENV, b"")
        await eventually(lambda: key_valid() == 0, "the stale key told")
    finally:
        await server.stop(1)
    assert key_valid() is None
