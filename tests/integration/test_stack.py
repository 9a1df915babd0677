"""The README's main job: `python -m services --once` starts the four services as their own processes on
embedded defaults (no API key, no Redis) and answers a chat completion through the whole chain, the
services authenticating each other with throwaway certificates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from llmrouter.certs import Authority
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.__main__ import running_stack
from tests.conftest import ROOT
from tests.integration.conftest import free_port

LOCAL_MODEL = ROOT / "artefacts" / "smollm2" / "genai_config.json"


@pytest.mark.skipif(not LOCAL_MODEL.exists(), reason="artefacts/smollm2 not built: `make local-model` builds it")
def test_stack_answers_with_no_keys_and_no_redis() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_AUTH")) and not k.startswith("ROUTER_")}
    for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
        env[f"{service}_PORT"] = str(free_port())
        env[f"{service}_METRICS_PORT"] = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "services", "--once"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-> 200" in done.stdout
    assert "x-router-model: smollm2-135m" in done.stdout
    assert "x-router-cost-usd: 0" in done.stdout
    answer = next(line for line in done.stdout.splitlines() if line.strip().startswith("answer"))
    assert answer.split(":", 1)[1].strip() not in ("''", "")


@pytest.mark.skipif(not LOCAL_MODEL.exists(), reason="artefacts/smollm2 not built: `make local-model` builds it")
def test_launched_stack_serves_only_its_own_certificates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Zero configuration and yet secure: the edge reaches the router over mTLS, while a direct call to the
    router in plaintext, or with a certificate from any other CA (even one named "edge"), is refused."""
    for key in list(os.environ):
        if key.endswith(("_API_KEY", "_AUTH", "_TLS_DIR")) or key.startswith("ROUTER_"):
            monkeypatch.delenv(key)
    ports = {service: free_port() for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE")}
    for service, port in ports.items():
        monkeypatch.setenv(f"{service}_PORT", str(port))
    impostor = Authority.create().write(tmp_path / "edge", "edge")
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hi")], tenant="victim", model="smollm2-135m"
    )
    with running_stack() as (base_url, _):
        body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
        assert httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).status_code == 200
        router_addr = f"127.0.0.1:{ports['ROUTER']}"
        foreign = grpc.ssl_channel_credentials(
            None, (impostor / "tls.key").read_bytes(), (impostor / "tls.crt").read_bytes()
        )
        for channel in (grpc.insecure_channel(router_addr), grpc.secure_channel(router_addr, foreign)):
            with channel, pytest.raises(grpc.RpcError) as refused:
                router_pb2_grpc.RouterStub(channel).Complete(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
