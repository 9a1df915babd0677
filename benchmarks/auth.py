"""What authentication costs per call: the providers service's ListModels (answered in-process, no upstream)
called sequentially in each auth mode (none, a bearer token, mTLS) on loopback, latency percentiles.

    python -m benchmarks.auth [--calls 3000]"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from llmrouter.auth import token_digest
from llmrouter.certs import Authority
from llmrouter.channels import open_channel
from llmrouter.server import start_server
from llmrouter.settings import ServiceSettings
from llmrouter.v1 import common_pb2, provider_pb2_grpc
from services import providers
from services.providers.settings import ProvidersSettings

TOKEN = "benchmark-token"
WARMUP = 200


async def measure(calls: int, server: dict[str, Any], caller: ServiceSettings) -> list[float]:
    settings = ProvidersSettings(port=0, **server)
    running = await start_server("providers", settings, *await providers.build(settings))
    request = common_pb2.ListModelsRequest()
    try:
        async with open_channel(f"127.0.0.1:{running.port}", caller) as channel:
            stub = provider_pb2_grpc.ProviderStub(channel)
            for _ in range(WARMUP):
                await stub.ListModels(request)
            seconds = []
            for _ in range(calls):
                start = time.perf_counter()
                await stub.ListModels(request)
                seconds.append(time.perf_counter() - start)
        return sorted(seconds)
    finally:
        await running.stop(0)


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="llmrouter-bench-tls-") as certs:
        authority = Authority.create()
        server_dir, client_dir = (authority.write(Path(certs) / name, name) for name in ("providers", "router"))
        modes: dict[str, tuple[dict[str, Any], ServiceSettings]] = {
            "none": ({"auth": "none"}, ServiceSettings()),
            "token": (
                {"auth": "token", "auth_tokens": f"{token_digest(TOKEN)}=router"},
                ServiceSettings(call_token=SecretStr(TOKEN)),
            ),
            "mtls": ({"auth": "mtls", "tls_dir": server_dir}, ServiceSettings(tls_dir=client_dir)),
        }
        print(f"auth benchmark: {calls} sequential ListModels calls per mode")
        for mode, (server, caller) in modes.items():
            seconds = await measure(calls, server, caller)
            p50, p99 = seconds[len(seconds) // 2], seconds[int(len(seconds) * 0.99)]
            print(f"  {mode:<6} p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    asyncio.run(main(parser.parse_args().calls))
