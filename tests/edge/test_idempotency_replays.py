"""The edge's kept answers (services/edge/replays.py), in memory: bounded in bytes, oldest dropped first; an answer
over the limit kept as its digest alone (its retry is the router's 409, another body's the 422); and a Redis that
fails passed over (the router still serves the id once: a 409, never a second charge)."""

from __future__ import annotations

import gc
import secrets
import time
import tracemalloc

import pytest

from services.edge import replays as replays_module
from services.edge.openai_api import ApiError
from services.edge.replays import Replays, digest


async def test_memory_is_bounded_oldest_first_and_a_large_answer_kept_as_its_digest() -> None:
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=1 << 20, url=None)
    sent = digest("/v1/chat/completions", b"{}")
    for n in range(5):
        await replays.keep(f"idem-{n}", sent, b"x" * 900, {"x-request-id": f"idem-{n}"}, tenant="acme")
    assert await replays.lookup("idem-0", sent) is None and await replays.lookup("idem-1", sent) is None
    kept = await replays.lookup("idem-4", sent)
    assert kept is not None and kept.body == b"x" * 900 and kept.headers == {"x-request-id": "idem-4"}
    await replays.keep("idem-big", sent, b"x" * 1001, {"x-request-id": "idem-big"}, tenant="acme")
    assert await replays.lookup("idem-big", sent) is None  # not sent again: the router's 409
    with pytest.raises(ApiError) as refused:
        await replays.lookup("idem-big", digest("/v1/chat/completions", b"{ }"))
    assert refused.value.status == 422 and refused.value.code == "idempotency_key_mismatch"


async def test_a_redis_out_of_reach_is_passed_over() -> None:
    replays = Replays(
        ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=1 << 20, url="redis://127.0.0.1:9/0"
    )
    try:
        sent = digest("/v1/chat/completions", b"{}")
        await replays.keep("idem-1", sent, b"{}", {}, tenant="acme")
        assert await replays.lookup("idem-1", sent) is None
    finally:
        await replays.close()


@pytest.mark.parametrize("answer", [None, b'{"id": "chatcmpl-1"}'], ids=["a-streams-digest", "a-small-answer"])
async def test_memory_the_kept_answers_take_stays_within_the_bound(answer: bytes | None) -> None:
    """The bound is on what the process holds for them: each entry's request id, digest, objects and headers, not only
    its body. Counted by body and header text alone, a stream's digest (kept alone) was counted 128 bytes and took near
    460: 64 MiB of them held near 230 MiB."""
    bound = 1 << 20
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=bound, tenant_bytes=1 << 20, url=None)
    headers = {"x-router-model": "cheap-model", "x-router-cost-usd": "0.000001", "x-request-id": "idem-1"}
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(20_000):  # 20,000 entries are several times the bound, however they are counted
            request_id = "idem-" + secrets.token_hex(24)  # made per request, as the edge makes them
            sent = digest("/v1/chat/completions", secrets.token_bytes(16))
            kept = (None, None) if answer is None else (bytes(answer), dict(headers))  # a stream's: its digest alone
            await replays.keep(request_id, sent, *kept, tenant="acme")
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < bound * 1.1, f"{held / bound:.2f} times the bound"


async def test_an_answer_kept_past_its_time_is_not_sent_again_and_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGE_IDEMPOTENCY_REPLAY_S: past it, the retry reaches the router (which tells the 409, or serves an id it has
    forgotten since), and the next answer kept drops the expired one from memory."""
    replays = Replays(ttl_s=60, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=None)
    sent = digest("/v1/chat/completions", b"{}")
    now = time.monotonic()
    monkeypatch.setattr(replays_module.time, "monotonic", lambda: now)
    await replays.keep("idem-old", sent, b"{}", {"x-request-id": "idem-old"}, tenant="acme")
    assert await replays.lookup("idem-old", sent) is not None
    monkeypatch.setattr(replays_module.time, "monotonic", lambda: now + 61)
    assert await replays.lookup("idem-old", sent) is None
    with_one_more = replays._memory_used
    await replays.keep("idem-new", sent, b"{}", {"x-request-id": "idem-new"}, tenant="acme")
    assert list(replays._memory) == ["idem-new"] and replays._memory_used == with_one_more


@pytest.mark.parametrize(
    "stored",
    [
        b"not json",
        b"[1, 2]",
        b'{"body": "{}"}',
        b'{"digest": 5}',
        b'{"digest": "d", "body": 7}',
        b'{"digest": "d", "body": "{}", "headers": [1]}',
        b'{"digest": "d", "body": "\\ud800"}',
        b"\xff\xfe",
    ],
)
async def test_a_kept_answer_no_edge_wrote_is_passed_over(redis_url: str, stored: bytes) -> None:
    """A value in the edge's Redis that is not a kept answer (hand-edited, another program's, cut short) is as if none
    were kept: the router's 409 tells the retry, never a 500 nor another request's answer."""
    import redis.asyncio as redis

    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=1 << 20, url=redis_url)
    client = redis.from_url(redis_url)
    try:
        await client.set(replays_module.PREFIX + "idem-1", stored)
        assert await replays.lookup("idem-1", digest("/v1/chat/completions", b"{}")) is None
    finally:
        await client.aclose()
        await replays.close()


async def test_in_redis_a_tenant_keeps_answers_up_to_its_bytes_and_others_keep_theirs(redis_url: str) -> None:
    """The batch Redis has no bound of its own (noeviction, every tenant's batches in it): one tenant resending a
    request under new keys (each a response cache hit, free) kept an answer per key. Past its bytes in the window, its
    answers are kept as their digests (the retry is the router's 409, a different body the 422); another tenant's are
    kept still."""
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=2000, url=redis_url)
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    try:
        for n in range(3):
            await replays.keep(f"idem-{n}", sent, answer, {}, tenant="hog")
        await replays.keep("idem-other", sent, answer, {}, tenant="acme")
        assert [await replays.lookup(f"idem-{n}", sent) is not None for n in range(3)] == [True, True, False]
        assert await replays.lookup("idem-other", sent) is not None
        with pytest.raises(ApiError) as refused:  # its digest kept all the same
            await replays.lookup("idem-2", digest("/v1/chat/completions", b"{ }"))
        assert refused.value.code == "idempotency_key_mismatch"
    finally:
        await replays.close()
