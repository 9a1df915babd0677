"""The Locust file a platform team points at a deployment: run headless for a few seconds against the real
chain (edge, router, classifier, providers over fake OpenAI-wire upstreams), it makes plain and streamed
requests without errors and reports throughput, latency percentiles, the error rate and a real cost."""

from __future__ import annotations

import asyncio
import re
import sys

from benchmarks.loadtest import stub_registry
from llmrouter.registry import Registry
from tests.conftest import ROOT
from tests.integration.conftest import Chain


async def test_locustfile_against_the_chain(chain: Chain) -> None:
    host = chain.base_url.removesuffix("/v1")
    locust = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
        "--only-summary", "-u", "4", "-r", "4", "-t", "5s", "--host", host,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(locust.communicate(), timeout=120)
    text = out.decode()
    assert locust.returncode == 0, text
    (line,) = re.findall(r"loadtest: (\d+) requests, ([\d.]+) req/s, p50 \d+ ms, p95 \d+ ms, p99 \d+ ms, "
                         r"errors ([\d.]+)%, cost per request \$([\d.]+)", text)  # fmt: skip
    requests, _, errors, cost = line
    assert int(requests) > 5 and float(errors) == 0.0 and float(cost) > 0
    for name in ("easy", "hard", "easy stream", "hard stream"):
        assert re.search(rf"POST\s+{name}\s", text), f"no {name} requests in the summary"


def test_make_loadtest_registry_serves_openai_models_from_the_stub() -> None:
    registry = Registry.model_validate(stub_registry("http://127.0.0.1:9/v1"))
    assert set(registry.providers) == {"openai"}
    assert registry.providers["openai"].base_url == "http://127.0.0.1:9/v1"
    assert registry.models and all(m.provider == "openai" for m in registry.models)
