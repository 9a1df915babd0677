"""A huge answer with no usage (a hostile or broken upstream, up to the stream's bound) is counted here, and the
count must leave the providers' event loop free: counted in one go, megabytes of text held every other call of the
service (streams, retries, deadlines) for seconds, and calls of other tenants timed out into worst-case charges."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from llmrouter.v1 import common_pb2
from tests.providers.conftest import providers_service
from tests.providers.helpers import collect, request
from tests.providers.test_hostile_upstream import RawUpstream, events, openai_chunk

# Text that counts to many tokens per byte (CJK: about a token a character), in 1 MB events, 12 MB in all: within a
# reply's gRPC message and the stream's bound.
PIECE = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(350_000))


async def test_counting_a_huge_answer_leaves_other_calls_served(tmp_path: Path) -> None:
    wire = events(*[openai_chunk({"content": PIECE})] * 12, openai_chunk({}, "stop"), "[DONE]")  # no usage
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        answering = asyncio.ensure_future(collect(stub, request("cheap")))
        longest = 0.0
        while not answering.done():
            asked = time.perf_counter()
            await stub.ListModels(common_pb2.ListModelsRequest())
            longest = max(longest, time.perf_counter() - asked)
            await asyncio.sleep(0.02)
        _, final = await answering
    assert final is not None and final.usage.estimated and final.usage.output_tokens >= len(PIECE) * 12 // 2
    assert longest < 0.5, f"the providers' event loop was held {longest:.2f} s"
