"""The README's main job: `python -m services --once` starts the four services as their own processes on
embedded defaults (no API key, no Redis) and answers a chat completion through the whole chain, the
services authenticating each other with throwaway certificates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import grpc
import httpx
import pytest

from llmrouter.certs import Authority
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.__main__ import running_stack
from services.demo import PROMPTS
from tests.conftest import ROOT
from tests.integration.conftest import free_ports

pytestmark = pytest.mark.heavy  # make test-heavy: the four services started as processes


@pytest.mark.usefixtures("local_model")
def test_stack_shows_routing_with_no_keys_and_no_redis(tmp_path: Path) -> None:
    """The demo: every prompt's decision over the whole registry (cloud models unavailable without keys, the
    choice they would get with keys), the local model's answer, and a summary whose sums add up."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_AUTH")) and not k.startswith("ROUTER_")}
    env["ROUTER_LEDGER_SQL_PATH"] = str(tmp_path / "ledger.sqlite3")
    ports = iter(free_ports(8))
    for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
        env[f"{service}_PORT"] = str(next(ports))
        env[f"{service}_METRICS_PORT"] = str(next(ports))
    done = subprocess.run(
        [sys.executable, "-m", "services", "--once"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert [line.split("]")[0] for line in out.splitlines() if line.startswith("[")] == [f"[{d}" for d, _ in PROMPTS]
    assert out.count("  here      : smollm2-135m: ") == len(PROMPTS)  # answered by the local model
    assert out.count("  with keys : ") == len(PROMPTS)  # and what would be chosen with every key
    assert out.count("would be chosen with keys; unavailable here (no API key for its provider)") == len(PROMPTS)
    answers = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("  answer    :")]
    assert len(answers) == len(PROMPTS) and all(answers)
    total = next(line for line in out.splitlines() if line.startswith("total "))
    here, with_keys, always = (Decimal(cell.lstrip("$")) for cell in total.split()[1:])
    assert here == 0 < with_keys <= always  # the local model is free; routing never costs more than always-strongest
    assert f"{always - with_keys:.6f} saved" in out


def embedded_defaults_on_free_ports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[dict[str, int], dict[str, int]]:
    """The environment `make run` starts with (no key, no Redis, its own certificates), on free ports: the services'
    ports and metrics ports, by env prefix."""
    for key in list(os.environ):
        if key.endswith(("_API_KEY", "_AUTH", "_TLS_DIR")) or key.startswith("ROUTER_"):
            monkeypatch.delenv(key)
    services, picked = ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"), free_ports(8)
    ports, metrics_ports = dict(zip(services, picked[:4], strict=True)), dict(zip(services, picked[4:], strict=True))
    for service, port in ports.items():
        monkeypatch.setenv(f"{service}_PORT", str(port))
        monkeypatch.setenv(f"{service}_METRICS_PORT", str(metrics_ports[service]))
    monkeypatch.setenv("ROUTER_LEDGER_SQL_PATH", str(tmp_path / "ledger.sqlite3"))
    return ports, metrics_ports


@pytest.mark.usefixtures("local_model")
def test_launched_stack_serves_only_its_own_certificates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Zero configuration and yet secure: the edge reaches the router over mTLS, while a direct call to the
    router in plaintext, or with a certificate from any other CA (even one named "edge"), is refused."""
    ports, metrics_ports = embedded_defaults_on_free_ports(monkeypatch, tmp_path)
    impostor = Authority.create().write(tmp_path / "edge", "edge")
    request = router_pb2.CompleteRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Hi")], tenant="victim", model="smollm2-135m"
    )
    with running_stack() as (base_url, _):
        body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 8}
        assert httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).status_code == 200
        for service, port in metrics_ports.items():  # every process serves its metrics
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert scraped.status_code == 200 and "llmrouter_" in scraped.text, service
        router_addr = f"127.0.0.1:{ports['ROUTER']}"
        foreign = grpc.ssl_channel_credentials(
            None, (impostor / "tls.key").read_bytes(), (impostor / "tls.crt").read_bytes()
        )
        for channel in (grpc.insecure_channel(router_addr), grpc.secure_channel(router_addr, foreign)):
            with channel, pytest.raises(grpc.RpcError) as refused:
                router_pb2_grpc.RouterStub(channel).Complete(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def readme_example(text: str, *written: tuple[str, str]) -> str:
    """A README example, each address or path it writes for the default stack replaced by this stack's."""
    for default, here in written:
        assert text.count(default) == 1, f"the README's example no longer writes {default}"
        text = text.replace(default, here)
    return text


@pytest.mark.usefixtures("local_model")
def test_the_readmes_python_examples_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's two Python examples, the openai SDK's through the edge and the gRPC stubs' to the router with the
    edge's certificate, run as written against the stack `make run` starts (its ports and certificate directory
    put in): each prints the routed model, its cost and the answer."""
    sdk, stubs = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    ports, _ = embedded_defaults_on_free_ports(monkeypatch, tmp_path)
    with running_stack() as (base_url, _):
        found = re.search(r"mTLS certificates of this run \(CN = service\): (\S+)/<service>", capsys.readouterr().out)
        assert found, "the launcher prints its certificates' directory, as the README's gRPC example needs"
        examples = [
            readme_example(sdk, ("http://127.0.0.1:8080/v1", f"{base_url}/v1")),
            readme_example(
                stubs, ("/tmp/llmrouter-tls-XXXX", found[1]), ("127.0.0.1:50053", f"127.0.0.1:{ports['ROUTER']}")
            ),
        ]
        for example in examples:
            done = subprocess.run(
                [sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr
            model, cost, answer = done.stdout.split(" ", 2)
            assert (model, cost) == ("smollm2-135m", "0") and answer.strip(), done.stdout
