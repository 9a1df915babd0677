"""gRPC callers authenticate: real TLS on loopback with certificates made here, the real router and providers
services (upstream: the OpenAI wire-format fake), money checked in real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as redis
import yaml
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr, ValidationError

from llmrouter.auth import token_digest
from llmrouter.certs import Authority
from llmrouter.channels import open_channel
from llmrouter.redis_url import RedisUrl
from llmrouter.server import RunningServer, start_server
from llmrouter.settings import ServiceSettings, load_settings
from llmrouter.v1 import common_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services import providers, router
from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.conftest import ledger_records
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.conftest import free_port, registry

BATCH_TOKEN = "batch-job-token-0123456789"


@dataclass
class Secured:
    """Providers (callers: router) and a router (callers: edge=*, batch=acme) in mTLS, each with its own
    certificate; client certificate directories by identity, from the same CA."""

    router_addr: str
    providers_addr: str
    certs: dict[str, Path]
    redis_url: str
    registry_path: Path
    authority: Authority
    tmp: Path


def ask(**fields: Any) -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="What is 2 + 2?")
    return router_pb2.CompleteRequest(messages=[message], model="cheap-model", request_id=uuid.uuid4().hex, **fields)


def client(certs: Path | None = None, token: str | None = None) -> ServiceSettings:
    return ServiceSettings(tls_dir=certs, call_token=None if token is None else SecretStr(token))


def error_reason(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            status_pb2.Status.FromString(value).details[0].Unpack(info)
            return info.reason
    return ""


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory, session_redis_url: str) -> AsyncIterator[Secured]:
    tmp = tmp_path_factory.mktemp("auth")
    ca = Authority.create()
    certs = {name: ca.write(tmp / name, name) for name in ("providers", "router", "edge", "batch", "mallory")}
    with FakeOpenAI() as budget, FakeOpenAI() as premium, pytest.MonkeyPatch.context() as env:
        env.setenv("BUDGETAI_KEY", "sk-budget")
        env.setenv("PREMIUMAI_KEY", "sk-premium")
        path = tmp / "models.yaml"
        path.write_text(yaml.safe_dump(registry(budget.base_url, premium.base_url)))
        servers: list[RunningServer] = []
        p_settings = ProvidersSettings(port=0, registry_path=path, auth="mtls", tls_dir=certs["providers"])
        servers.append(await start_server("providers", p_settings, *await providers.build(p_settings)))
        providers_addr = f"127.0.0.1:{servers[0].port}"
        r_settings = RouterSettings(
            port=0,
            registry_path=path,
            classifier_addr=f"127.0.0.1:{free_port()}",  # unused: every request names its model
            providers_addr=providers_addr,
            redis_url=RedisUrl(session_redis_url),
            auth="mtls",
            tls_dir=certs["router"],
            callers="edge=*,batch=acme",
        )
        servers.append(await start_server("router", r_settings, *await router.build(r_settings)))
        try:
            yield Secured(f"127.0.0.1:{servers[1].port}", providers_addr, certs, session_redis_url, path, ca, tmp)
        finally:
            for server in reversed(servers):
                await server.stop(1)


async def spend_by_tenant(redis_url: str) -> dict[str, int]:
    """Tenant spend counters and ledger records, by tenant (both must agree on who paid)."""
    client_: Any = redis.from_url(redis_url)
    try:
        spend: dict[str, int] = {}
        async for key in client_.scan_iter("*:t:*:spend:*"):
            tenant = bytes.fromhex(key.decode().split(":")[2]).decode()
            spend[tenant] = spend.get(tenant, 0) + int(await client_.get(key))
        ledger = await ledger_records(client_)
        assert {r["tenant"] for r in ledger} == set(spend)
        return spend
    finally:
        await client_.aclose()


async def test_router_refuses_callers_without_a_certificate(secured: Secured, redis_url: str) -> None:
    for channel in (
        grpc.aio.insecure_channel(secured.router_addr),  # plaintext
        open_channel(secured.router_addr, client(token=BATCH_TOKEN)),  # a token, where certificates are needed
    ):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant="acme"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    ca_only = grpc.ssl_channel_credentials((secured.certs["edge"] / "ca.crt").read_bytes())  # TLS, no client cert
    async with grpc.aio.secure_channel(secured.router_addr, ca_only) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant="acme"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await spend_by_tenant(redis_url) == {}


async def test_a_certificate_from_another_ca_is_refused(secured: Secured, redis_url: str) -> None:
    impostor = Authority.create().write(secured.tmp / "impostor-edge", "edge")  # the right name, the wrong CA
    (impostor / "ca.crt").write_bytes(secured.authority.pem())  # it trusts the real server
    async with open_channel(secured.router_addr, client(impostor)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant="victim"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await spend_by_tenant(redis_url) == {}


async def test_untrusted_caller_pays_as_its_own_tenant_whatever_it_asks(secured: Secured, redis_url: str) -> None:
    async with open_channel(secured.router_addr, client(secured.certs["batch"])) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        reply = await stub.Complete(ask(tenant="victim", api_key="sk-victim"), timeout=10)
        async for _ in stub.CompleteStream(ask(tenant="victim", api_key="sk-victim"), timeout=10):
            pass
    assert reply.content
    spend = await spend_by_tenant(redis_url)
    assert set(spend) == {"acme"} and spend["acme"] > 0
    keys = redis.from_url(redis_url)
    try:
        assert [k async for k in keys.scan_iter(f"*:k:{b'caller:batch'.hex()}:spend:*")]
    finally:
        await keys.aclose()


async def test_edge_identity_acts_for_the_tenant_it_names(secured: Secured, redis_url: str) -> None:
    async with open_channel(secured.router_addr, client(secured.certs["edge"])) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        await stub.Complete(ask(tenant="globex", api_key="sk-globex"), timeout=10)
    assert set(await spend_by_tenant(redis_url)) == {"globex"}


async def test_unlisted_identity_is_denied(secured: Secured, redis_url: str) -> None:
    async with open_channel(secured.router_addr, client(secured.certs["mallory"])) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant="victim"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(refused.value) == "PERMISSION_DENIED"
    assert await spend_by_tenant(redis_url) == {}


async def test_providers_serve_only_the_router(secured: Secured) -> None:
    request = common_pb2.ListModelsRequest()
    async with open_channel(secured.providers_addr, client(secured.certs["router"])) as channel:
        assert (await provider_pb2_grpc.ProviderStub(channel).ListModels(request, timeout=5)).models
    for name in ("edge", "batch"):
        async with open_channel(secured.providers_addr, client(secured.certs[name])) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await provider_pb2_grpc.ProviderStub(channel).ListModels(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert error_reason(refused.value) == "PERMISSION_DENIED"


async def test_health_and_reflection_answer_any_tls_caller_and_probes_in_plaintext(secured: Secured) -> None:
    """Health checking and reflection need no identity (a certificate still opens the TLS connection); a
    health port serves kubelet's plaintext probes and nothing else."""
    async with open_channel(secured.router_addr, client(secured.certs["mallory"])) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]  # stubs list no methods
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([listing]), timeout=5)  # type: ignore[arg-type, operator]  # stubs: sync channels, no methods
        (answer,) = [a async for a in stream]
        assert "llmrouter.v1.Router" in {s.name for s in answer.list_services_response.service}
    settings = RouterSettings(
        port=0,
        health_port=free_port(),
        registry_path=secured.registry_path,
        providers_addr=secured.providers_addr,
        auth="mtls",
        tls_dir=secured.certs["router"],
    )
    running = await start_server("router", settings, *await router.build(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]  # stubs list no methods
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant="acme"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await running.stop(0)


async def test_bearer_tokens_identify_callers_without_certificates(secured: Secured, redis_url: str) -> None:
    settings = RouterSettings(
        port=0,
        registry_path=secured.registry_path,
        providers_addr=secured.providers_addr,
        tls_dir=secured.certs["router"],  # TLS for the transport and towards the providers
        redis_url=RedisUrl(redis_url),
        auth="token",
        auth_tokens=f"{token_digest(BATCH_TOKEN)}=batch",
        callers="batch=acme",
    )
    running = await start_server("router", settings, *await router.build(settings))
    address, ca = f"127.0.0.1:{running.port}", (secured.certs["edge"] / "ca.crt").read_bytes()
    try:
        for token in (None, "wrong-token"):
            metadata = () if token is None else (("authorization", f"Bearer {token}"),)
            async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca)) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await router_pb2_grpc.RouterStub(channel).Complete(ask(), metadata=metadata, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
            assert error_reason(refused.value) == "UNAUTHENTICATED"
        assert await spend_by_tenant(redis_url) == {}
        # In token mode the server asks for no certificate: the token alone names the caller.
        async with open_channel(address, client(secured.certs["mallory"], BATCH_TOKEN)) as channel:
            await router_pb2_grpc.RouterStub(channel).Complete(ask(tenant="victim"), timeout=10)
        assert set(await spend_by_tenant(redis_url)) == {"acme"}
    finally:
        await running.stop(0)


def test_settings_refuse_unsafe_or_incomplete_auth(tmp_path: Path) -> None:
    cases = [
        ({"auth": "mtls"}, "ROUTER_TLS_DIR"),
        ({"auth": "token"}, "ROUTER_AUTH_TOKENS"),
        ({"auth": "none", "host": "0.0.0.0"}, "ROUTER_AUTH_NONE_ALLOW_REMOTE"),
        ({"auth": "token", "auth_tokens": "not-a-digest=batch"}, "sha256"),
        ({"auth": "none", "callers": "=acme"}, "caller entry"),
        ({"auth": "mtls", "tls_dir": tmp_path}, "lacks tls.crt"),
    ]
    for values, complaint in cases:
        with pytest.raises(ValidationError, match=complaint):
            RouterSettings(**values)  # type: ignore[arg-type]
    assert RouterSettings(auth="none", host="0.0.0.0", auth_none_allow_remote=True).auth == "none"


async def test_edge_refused_by_the_router_is_a_gateway_error(secured: Secured, redis_url: str) -> None:
    """An edge whose certificate the router does not accept: the deployment's fault (502), not the caller's."""
    settings = EdgeSettings(router_addr=secured.router_addr, tls_dir=secured.certs["mallory"])
    async with open_channel(secured.router_addr, settings) as channel:
        app = create_app(settings, channel)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as http:
            body = {"model": "cheap-model", "messages": [{"role": "user", "content": "Hi"}]}
            reply = await http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 502, reply.text
    assert await spend_by_tenant(redis_url) == {}


def test_a_refused_configuration_names_the_problem_but_never_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROUTER_AUTH", "mtls")
    monkeypatch.setenv("ROUTER_CALL_TOKEN", "sk-do-not-print")
    with pytest.raises(SystemExit):
        load_settings(RouterSettings)
    err = capsys.readouterr().err
    assert "ROUTER_AUTH=mtls needs ROUTER_TLS_DIR" in err
    assert "sk-do-not-print" not in err
