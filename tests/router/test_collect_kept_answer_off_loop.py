"""A batch line's long answer (megabytes: as large as a poll's message lets a line be) is kept compressed
(deferred.kept_line) off the router's event loop: compressed on it, ~20 ms of CPU a megabyte, one such line held the
loop, every tenant's admissions, charges and streams with it, for a third of a second. The router's servicer over
Redis, a stand-in providers gRPC server on loopback answering the line (3.7 MB: a test channel's messages are at most
4 MB)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from llmrouter.auth import acting_as
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.deferred import kept_line
from services.router.store import RedisStore
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import (
    ACCOUNT,
    LINE,
    REGISTRY,
    TENANT_CALLER,
    USAGE,
    BatchProvider,
    collect_of,
    send_line,
)


def long_answer(tokens: int, top: int) -> str:
    """An answer of megabytes: JSON of random figures (an answer asked as JSON compresses about as well)."""
    draw = random.Random(7)

    def entry(i: int) -> dict[str, Any]:
        return {"token": f"t{draw.randint(0, 99_999)}", "logprob": -draw.random(), "bytes": [116, 48 + i % 10]}

    content = [{**entry(i), "top_logprobs": [entry(j) for j in range(top)]} for i in range(tokens)]
    return json.dumps({"content": content})


ANSWER = provider_pb2.GenerateResponse(content=long_answer(2400, 20), usage=USAGE, finish_reason="stop")


class LongAnswers(BatchProvider):
    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        results = [
            provider_pb2.BatchLineResult(request_id=request_id, succeeded=True, response=ANSWER)
            for request_id in request.request_ids
        ]
        return provider_pb2.PollBatchResponse(status="completed", ended=True, results=results)


async def test_a_long_answer_is_kept_without_holding_the_routers_loop(redis_store: RedisStore, tmp_path: Path) -> None:
    line = router_pb2.CollectedLine(request_id=LINE.request_id, succeeded=True)
    line.response.content = ANSWER.content

    def one_keep() -> float:
        started = time.thread_time()
        assert kept_line("pbatch-1", line) is not None
        return time.thread_time() - started

    whole = await asyncio.to_thread(one_keep)  # in a thread of its own: the loop is not held meanwhile
    held: list[float] = []  # the loop thread's CPU seconds from one turn of the watcher to the next

    async def watch_the_loop() -> None:
        while True:
            started = time.thread_time()
            await asyncio.sleep(0.01)
            held.append(time.thread_time() - started)

    async with router_servicer(tmp_path, redis_store, LongAnswers(), REGISTRY) as router:
        with acting_as(TENANT_CALLER):
            sent = await send_line(router)
            collect = collect_of(sent)
            watcher = asyncio.create_task(watch_the_loop())
            try:
                reply = await router.CollectBatch(collect, NoDeadline())
            finally:
                watcher.cancel()
    (told,) = reply.lines
    assert told.succeeded and told.response.content == ANSWER.content, reply.ended
    assert await redis_store.kept_answer(ACCOUNT, LINE.request_id) is not None  # kept all the same
    # A 2-core machine, load average 10: the keep 0.07 s of CPU; the collect's longest hold of the loop 0.014-0.015 s
    # (the answer's gRPC messages). On the loop, the keep held it for all of it (0.074 s).
    assert max(held) < whole / 2, f"the keep {whole:.3f} s of CPU; longest hold of the loop {max(held):.3f} s"
