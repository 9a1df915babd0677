"""With the server's secret (ROUTER_END_USER_HASH_SECRET) the end-user fields reach the provider keyed by
HMAC(secret, tenant): not the value keyed by the tenant's name alone, which anyone knowing the tenant can recompute
from a guessed end-user id, not another tenant's, and the same from every router sharing the secret. A secret too
short to be one is refused at start. Real routers and providers services on loopback, over real Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from pydantic import SecretStr

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.end_users import END_USER_FIELDS, scoped_id
from services.router.settings import RouterSettings
from tests.conftest import ROOT
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import served_stack

SECRET = "a8f5f167f44f4964e6c998dee827110c"  # what `openssl rand -hex 16` gives: 32 bytes
EMAIL = "jane.doe@example.com"  # an end-user id anyone could guess
UNSET_WARNING = "ROUTER_END_USER_HASH_SECRET is unset"


def registry(base_url: str) -> dict[str, Any]:
    return {
        "tiers": ["economy"],
        "providers": {"up": {"kind": "openai", "base_url": base_url, "api_key_env": "UP_KEY", "max_retries": 0}},
        "models": [
            {"name": "gpt-like", "provider": "up", "tier": "economy", "input_usd_per_mtok": "1",
             "output_usd_per_mtok": "1", "context_window": 8000, "quality_prior": 0.9, "tokenizer": "cl100k_base"},
        ],
    }  # fmt: skip


@pytest.fixture
async def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeOpenAI, Path]]:
    monkeypatch.setenv("UP_KEY", "sk-up")
    with FakeOpenAI() as fake:
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(registry(fake.base_url)))
        yield fake, path


async def sent(router: router_pb2_grpc.RouterStub, upstream: FakeOpenAI, tenant: str) -> dict[str, Any]:
    """The end-user fields the upstream was sent of `tenant`'s request naming EMAIL in each."""
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"Hello {uuid.uuid4().hex}")],
        model="gpt-like",  # named: no classifier
        tenant=tenant,
        max_tokens=8,
        passthrough_json=json.dumps(dict.fromkeys(END_USER_FIELDS, EMAIL)),
    )
    await router.Complete(request, timeout=30)
    return {name: upstream.requests[-1].json[name] for name in END_USER_FIELDS}


async def routers(stack: AsyncExitStack, path: Path, redis_url: str, *secrets: str | None) -> list[Any]:
    """A router (with its providers service) per secret, each as deployed apart from the others: their stubs."""
    stubs = []
    for secret in secrets:
        servers = await stack.enter_async_context(
            served_stack(
                path,
                redis_url,
                None,
                verifier=False,
                escalation="off",
                cache_ttl_s=0,
                end_user_hash_secret=None if secret is None else SecretStr(secret),
            )
        )
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}"))
        stubs.append(router_pb2_grpc.RouterStub(channel))
    return stubs


async def test_with_a_secret_no_one_without_it_can_confirm_an_end_user_id(
    upstream: tuple[FakeOpenAI, Path], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake, path = upstream
    tenant, other = f"acme-{uuid.uuid4().hex[:8]}", f"globex-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        with caplog.at_level(logging.WARNING, logger="llmrouter.router"):
            (unkeyed,) = await routers(stack, path, redis_url, None)
        assert sum(m.startswith(UNSET_WARNING) for m in caplog.messages) == 1
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="llmrouter.router"):
            first, second = await routers(stack, path, redis_url, SECRET, SECRET)  # two replicas sharing it
        assert not any(m.startswith(UNSET_WARNING) for m in caplog.messages)

        guessable = await sent(unkeyed, fake, tenant)
        keyed = await sent(first, fake, tenant)
        # The tenant's name alone keys it: a guess of the end user is confirmed by recomputing it.
        assert guessable == dict.fromkeys(END_USER_FIELDS, scoped_id(tenant, EMAIL))
        # With the secret: HMAC(HMAC(secret, tenant), value), stable wherever the secret is.
        per_tenant_key = hmac.new(SECRET.encode(), tenant.encode(), hashlib.sha256).digest()
        expected = hmac.new(per_tenant_key, EMAIL.encode(), hashlib.sha256).hexdigest()[:32]
        assert keyed == dict.fromkeys(END_USER_FIELDS, expected)
        assert expected != guessable["user"] and EMAIL not in keyed.values()
        assert await sent(second, fake, tenant) == keyed  # another router sharing the secret
        other_keyed = await sent(second, fake, other)
        assert other_keyed["user"] not in (keyed["user"], scoped_id(other, EMAIL))


@pytest.mark.parametrize("secret", ["", "fifteen-bytes!!", "short\u00e9"])  # 0, 15 and 7 bytes
def test_a_secret_too_short_is_refused_at_start(secret: str) -> None:
    env = {**os.environ, "ROUTER_AUTH": "none", "ROUTER_PORT": "0", "ROUTER_END_USER_HASH_SECRET": secret}
    started = subprocess.run(
        [sys.executable, "-m", "services.router"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 2, started.stderr
    assert "ROUTER_END_USER_HASH_SECRET: must be at least 16 bytes" in started.stderr
    assert "READY" not in started.stdout
    if secret:
        assert secret not in started.stderr  # never echoed


def test_a_secret_of_16_bytes_is_taken() -> None:
    assert RouterSettings(auth="none", end_user_hash_secret=SecretStr("sixteen-bytes!!!")).end_user_hash_secret
