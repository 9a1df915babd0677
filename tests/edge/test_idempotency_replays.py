"""The edge's kept answers (services/edge/replays.py), in memory: bounded in bytes, oldest dropped first; an answer
over the limit kept as its digest alone (its retry is the router's 409, another body's the 422); and a Redis that
fails passed over (the router still serves the id once: a 409, never a second charge)."""

from __future__ import annotations

import pytest

from services.edge.openai_api import ApiError
from services.edge.replays import Replays, digest


async def test_memory_is_bounded_oldest_first_and_a_large_answer_kept_as_its_digest() -> None:
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, url=None)
    sent = digest("/v1/chat/completions", b"{}")
    for n in range(5):
        await replays.keep(f"idem-{n}", sent, b"x" * 900, {"x-request-id": f"idem-{n}"})
    assert await replays.lookup("idem-0", sent) is None and await replays.lookup("idem-1", sent) is None
    kept = await replays.lookup("idem-4", sent)
    assert kept is not None and kept.body == b"x" * 900 and kept.headers == {"x-request-id": "idem-4"}
    await replays.keep("idem-big", sent, b"x" * 1001, {"x-request-id": "idem-big"})
    assert await replays.lookup("idem-big", sent) is None  # not sent again: the router's 409
    with pytest.raises(ApiError) as refused:
        await replays.lookup("idem-big", digest("/v1/chat/completions", b"{ }"))
    assert refused.value.status == 422 and refused.value.code == "idempotency_key_mismatch"


async def test_a_redis_out_of_reach_is_passed_over() -> None:
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, url="redis://127.0.0.1:9/0")
    try:
        sent = digest("/v1/chat/completions", b"{}")
        await replays.keep("idem-1", sent, b"{}", {})
        assert await replays.lookup("idem-1", sent) is None
    finally:
        await replays.close()
