"""A caller that leaves a stream after a huge answer reached the router (a hostile upstream that ignores max_tokens)
is charged what it was delivered, counted by the router: counted in one go, megabytes of text held the router's event
loop, every tenant's admissions, charges and streams with it, for seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import yaml

from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.fakes.raw_upstream import StallingUpstream
from tests.integration.conftest import model, provider, served_stack
from tests.providers.test_hostile_upstream import events, openai_chunk

PIECE = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(350_000))  # 1 MB, about a token a character
PIECES = 12
# Counted in one go, the answer takes seconds of the loop's CPU (2.4 to 3 s seen); from one call to the next with a free
# loop, well under a tenth of that (a 2-core machine under load included).
HELD_CPU_S = 0.5


async def test_a_huge_stream_left_is_counted_without_holding_the_router(
    tmp_path: Path, redis_url: str, classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTILE_KEY", "sk-hostile")
    wire = events(openai_chunk({"role": "assistant", "content": ""}), *[openai_chunk({"content": PIECE})] * PIECES)
    async with StallingUpstream(wire) as upstream:  # sends it all, then nothing: the caller leaves mid-stream
        path = tmp_path / "models.yaml"
        spec = {
            "tiers": ["economy"],
            "providers": {"hostile": provider("openai", f"{upstream.url}/v1", "HOSTILE_KEY")},
            "models": [model("hostile-model", "hostile", "economy", ("0.60", "0.60"))],
        }
        path.write_text(yaml.safe_dump(spec))
        async with (
            served_stack(path, redis_url, classifier_dir, verifier=False) as servers,
            grpc.aio.insecure_channel(f"127.0.0.1:{servers['router'].port}") as channel,
        ):
            stub = router_pb2_grpc.RouterStub(channel)
            question = common_pb2.ChatMessage(role="user", content="Write a long story.")
            request = router_pb2.CompleteRequest(messages=[question], model="hostile-model", max_tokens=100)
            call = stub.CompleteStream(request, timeout=30)
            deltas = 0
            async for chunk in call:
                deltas += chunk.HasField("delta")
                if deltas == PIECES:
                    break
            call.cancel()  # the router now counts what it delivered
            longest, until = 0.0, time.perf_counter() + 2.0
            while time.perf_counter() < until:
                # The services and this loop share this thread. The CPU time it spends from one call to the next, the
                # pause included, bounds how long the loop ran without a turn for them, wherever the count fell. CPU
                # time, not the clock's: a loaded machine that takes the thread away holds no loop.
                asked = time.thread_time()
                await stub.ListModels(common_pb2.ListModelsRequest(), timeout=30)
                await asyncio.sleep(0.02)
                longest = max(longest, time.thread_time() - asked)
    assert longest < HELD_CPU_S, f"the router's event loop ran {longest:.2f} s of CPU without a turn for a call"
