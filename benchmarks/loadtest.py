"""`make loadtest`: benchmarks/locustfile.py run headless against the local stack (four processes, as `make run`
starts them), whose only upstream is a fast local OpenAI-compatible stub (tests/fakes, the exact wire format)
serving the registry's OpenAI models at their list prices. Prints req/s, p50/p95/p99, the error rate and the
cost per request. Options: --users, --spawn-rate, --time (locust's)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from llmrouter.registry import DEFAULT_REGISTRY
from services.__main__ import running_stack
from tests.fakes.fake_openai import FakeOpenAI

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def stub_registry(stub_url: str) -> dict:
    """The shipped registry, its OpenAI models served by the stub; the local model and keyless providers out."""
    registry = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    registry["providers"] = {"openai": {**registry["providers"]["openai"], "base_url": stub_url}}
    registry["providers"]["openai"].pop("api_key_file", None)
    registry["models"] = [m for m in registry["models"] if m["provider"] == "openai"]
    return registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=int, default=10)
    parser.add_argument("--time", default="30s")
    args = parser.parse_args()
    with FakeOpenAI() as stub, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "models.yaml"
        path.write_text(yaml.safe_dump(stub_registry(stub.base_url)))
        for name in [k for k in os.environ if k.startswith("ROUTER_") or k.endswith("_API_KEY")]:
            del os.environ[name]  # the embedded defaults: in-process store, no other provider
        os.environ.update(
            OPENAI_API_KEY="sk-loadtest", ROUTER_REGISTRY_PATH=str(path), PROVIDERS_REGISTRY_PATH=str(path)
        )
        for service in ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE"):
            os.environ[f"{service}_PORT"] = str(free_port())
        with running_stack() as (base_url, _):
            command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
            command += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.time, "--host", base_url]
            done = subprocess.run(command)
    raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
