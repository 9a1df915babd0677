"""What a provider batch line's kept answer (services/router/deferred.py, kept_line: the line as its collect told it,
compressed, kept in the money store a day so that a collect whose reply was lost leaves it to the next) holds in
Redis: the line's size as sent, as kept, and `MEMORY USAGE` of its key, for answers of 50, 500 and 4,000 tokens, and
of 500 tokens with 5 top log-probabilities each (never kept: the last is kept as the 500 tokens' text). Text of short
words drawn at random (seeded): a real answer compresses about as well. The Redis is the benchmark's own
(redis-server on a free loopback port, in a temporary directory).

    python -m benchmarks.kept_answer_size"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path

import redis.asyncio as redis

from llmrouter.v1 import router_pb2
from services.router.deferred import kept_line
from tests.redis_servers import RedisServer

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "which",
]
CASES = [(50, False), (500, False), (4000, False), (500, True)]


def answered(tokens: int, logprobs: bool, draw: random.Random) -> router_pb2.CollectedLine:
    line = router_pb2.CollectedLine(request_id="batch_x:line-1", succeeded=True)
    reply = line.response
    reply.id, reply.model, reply.provider, reply.cost_usd = "batch_x:line-1", "gpt-4o-mini", "openai", "0.000123"
    reply.content = " ".join(f"{draw.choice(WORDS)}{draw.randint(0, 99)}" for _ in range(tokens))
    reply.finish_reason, reply.usage.input_tokens, reply.usage.output_tokens = "stop", 200, tokens
    if logprobs:
        top = [[{"token": f"u{j}", "logprob": -draw.random()} for j in range(5)] for _ in range(tokens)]
        tokens_json = [{"token": f"t{i}", "logprob": -draw.random(), "top_logprobs": t} for i, t in enumerate(top)]
        reply.logprobs_json = json.dumps({"content": tokens_json})
    return line


async def measure(url: str) -> None:
    client, draw = redis.Redis.from_url(url), random.Random(1)
    print("| answer | line as sent, B | kept, B | Redis MEMORY USAGE, B |\n|---|---|---|---|")
    for tokens, logprobs in CASES:
        line = answered(tokens, logprobs, draw)
        kept = kept_line("batch_abc123", line)
        assert kept is not None
        await client.set("kept", kept)
        used = await client.memory_usage("kept")
        name = f"{tokens} tokens" + (", 5 top log-probabilities each" if logprobs else "")
        print(f"| {name} | {line.ByteSize():,} | {len(kept):,} | {used:,} |")
    await client.aclose()


def main() -> None:
    # No option: --help says what it measures rather than running it.
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kept_answer_size", description=__doc__.split("\n\n")[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", "--save", "").start()
        try:
            asyncio.run(measure(server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
