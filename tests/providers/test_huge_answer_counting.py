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
# Counted in one go, the answer takes seconds of the loop's CPU (2.5 to 4.4 s seen); from one call to the next with a
# free loop, under 0.1 s (a 2-core machine under load included).
HELD_CPU_S = 0.5


async def test_counting_a_huge_answer_leaves_other_calls_served(tmp_path: Path) -> None:
    wire = events(*[openai_chunk({"content": PIECE})] * 12, openai_chunk({}, "stop"), "[DONE]")  # no usage
    async with RawUpstream(wire) as upstream, providers_service(tmp_path, upstream.url, upstream.url) as stub:
        answering = asyncio.ensure_future(collect(stub, request("cheap")))
        longest = 0.0
        while not answering.done():
            # The service, the upstream and this loop share this thread. The CPU time it spends from one call to the
            # next, the pause included, bounds how long the loop ran without a turn for them, wherever the count
            # fell: timed around the call alone, a count begun during the pause went unseen (4 runs in 6). CPU time,
            # not the clock's: a loaded machine that takes the thread away (0.86 s seen) holds no loop.
            asked = time.thread_time()
            await stub.ListModels(common_pb2.ListModelsRequest())
            await asyncio.sleep(0.02)
            longest = max(longest, time.thread_time() - asked)
        _, final = await answering
    # Counted, past the max_tokens it was sent (the model's 4096): charged that, which no upstream writes past.
    assert final is not None and final.usage.estimated and final.usage.output_tokens == 4096
    assert longest < HELD_CPU_S, f"the providers' event loop ran {longest:.2f} s of CPU without a turn for a call"
