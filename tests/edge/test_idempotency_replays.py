"""The edge's kept answers (services/edge/replays.py), in memory: bounded in bytes, oldest dropped first; an answer
over the limit kept as its digest alone (its retry is the router's 409, another body's the 422); and a Redis that
fails passed over (the router still serves the id once: a 409, never a second charge); the marker of a request in
flight, refusing another body at once, taken back by its writer alone; the digest an edge before routing
headers wrote and compares kept apart from theirs; and a read given up as too slow leaves no reply for another's."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import secrets
import time
import tracemalloc
import uuid
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import pytest
from redis.crc import key_slot

from services.edge import replays as replays_module
from services.edge.openai_api import ApiError
from services.edge.replays import Arrival, Kept, Replays, Unread, digest, replay_of
from services.edge.settings import EdgeSettings
from tests.fakes.lossy_proxy import LossyProxy
from tests.waiting import eventually


async def kept_answer(replays: Replays, request_id: str, sent: str) -> Kept | None:
    """The answer a retry of digest `sent` arriving is sent again (Replays.arrive's replay), read without marking the
    id when nothing is kept."""
    kept = await replays._get(request_id)
    return None if kept is None else replay_of(kept, sent)


async def test_memory_is_bounded_oldest_first_and_a_large_answer_kept_as_its_digest() -> None:
    sent = digest("/v1/chat/completions", b"{}")
    one = replays_module.kept_size("idem-0", Kept(sent, b"x" * 900, {"x-request-id": "idem-0"}))
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=4 * one, tenant_bytes=1 << 20, url=None)
    for n in range(6):
        # Each its own tenant's: one tenant keeps at most a quarter of the memory.
        await replays.keep(f"idem-{n}", sent, b"x" * 900, {"x-request-id": f"idem-{n}"}, tenant=f"tenant-{n}")
    assert await kept_answer(replays, "idem-0", sent) is None and await kept_answer(replays, "idem-1", sent) is None
    kept = await kept_answer(replays, "idem-5", sent)
    assert kept is not None and kept.body == b"x" * 900 and kept.headers == {"x-request-id": "idem-5"}
    await replays.keep("idem-big", sent, b"x" * 1001, {"x-request-id": "idem-big"}, tenant="acme")
    assert await kept_answer(replays, "idem-big", sent) is None  # not sent again: the router's 409
    with pytest.raises(ApiError) as refused:
        await kept_answer(replays, "idem-big", digest("/v1/chat/completions", b"{ }"))
    assert refused.value.status == 422 and refused.value.code == "idempotency_key_mismatch"


async def test_a_redis_out_of_reach_is_passed_over() -> None:
    replays = Replays(
        ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=1 << 20, url="redis://127.0.0.1:9/0"
    )
    try:
        sent = digest("/v1/chat/completions", b"{}")
        await replays.keep("idem-1", sent, b"{}", {}, tenant="acme")
        assert await kept_answer(replays, "idem-1", sent) is None
    finally:
        await replays.close()


@pytest.mark.parametrize("answer", [None, b'{"id": "chatcmpl-1"}'], ids=["a-streams-digest", "a-small-answer"])
async def test_memory_the_kept_answers_take_stays_within_the_bound(answer: bytes | None) -> None:
    """The bound is on what the process holds for them: each entry's request id, digest, objects and headers, not only
    its body. Counted by body and header text alone, a stream's digest (kept alone) was counted 128 bytes and took near
    460: 64 MiB of them held near 230 MiB."""
    bound = 1 << 20  # the memory's alone: no tenant's bytes reached (a hundred tenants)
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=bound, tenant_bytes=1 << 40, url=None)
    headers = {"x-router-model": "cheap-model", "x-router-cost-usd": "0.000001", "x-request-id": "idem-1"}
    gc.collect()
    tracemalloc.start()
    try:
        for n in range(20_000):  # 20,000 entries are several times the bound, however they are counted
            request_id = "idem-" + secrets.token_hex(24)  # made per request, as the edge makes them
            sent = digest("/v1/chat/completions", secrets.token_bytes(16))
            kept = (None, None) if answer is None else (bytes(answer), dict(headers))  # a stream's: its digest alone
            await replays.keep(request_id, sent, *kept, tenant=f"tenant-{n % 100}")  # each within its quarter
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
    assert await kept_answer(replays, "idem-old", sent) is not None
    monkeypatch.setattr(replays_module.time, "monotonic", lambda: now + 61)
    assert await kept_answer(replays, "idem-old", sent) is None
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
        b'{"digest": "d", "events": 5}',
        b'{"digest": "d", "body": "{}", "events": "data: [DONE]\\n\\n"}',
        b'{"digest": "d", "body": "{}", "routing": 5}',
        b'{"digest": "d", "retold_events": 5}',
        b'{"digest": "d", "events": "data: [DONE]\\n\\n", "retold_events": "data: [DONE]\\n\\n"}',
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
        assert await kept_answer(replays, "idem-1", digest("/v1/chat/completions", b"{}")) is None
    finally:
        await client.aclose()
        await replays.close()


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_marker_names_the_first_in_flight_and_only_its_writer_takes_it_back(redis_url: str, where: str) -> None:
    store = None if where == "memory" else redis_url
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=store)
    first, other = digest("/v1/chat/completions", b"{}"), digest("/v1/chat/completions", b"{ }")
    try:
        arrived = await replays.arrive("idem-1", first)
        assert arrived.started is not None and arrived.replay is None
        with pytest.raises(ApiError) as refused:  # another body while the first runs
            await replays.arrive("idem-1", other)
        assert refused.value.status == 422 and refused.value.code == "idempotency_key_mismatch"
        assert await replays.arrive("idem-1", first) == Arrival()  # the same body: the router's to refuse
        await replays.release("idem-1", Kept(first, started="another-request"))
        with pytest.raises(ApiError):  # not its writer's: still there
            await replays.arrive("idem-1", other)
        await replays.release("idem-1", arrived.started)
        taken = await replays.arrive("idem-1", other)  # taken back: another body may use the key
        assert taken.started is not None
        await replays.keep("idem-1", other, b"{}", {"x-request-id": "idem-1"}, tenant="acme")
        await replays.release("idem-1", taken.started)  # an answer kept since is never taken back
        kept = await replays.arrive("idem-1", other)
        assert kept.replay is not None and kept.replay.body == b"{}"
    finally:
        await replays.close()


async def test_a_marker_whose_write_a_cluster_client_resent_after_a_lost_reply_is_its_writers(cluster_url: str) -> None:
    """A Redis Cluster client resends a command whose reply was lost (its connection dropped): the marker's write
    landed, its resend finds it there (SET NX: not written). It is the request's own all the same (its token), taken
    back should the request fail. Before, the edge read it as another request's and left it, tying the key to the
    first body for the call's timeout and a minute: a retry of the failure with another body was a false 422."""
    first, other = digest("/v1/chat/completions", b"{}"), digest("/v1/chat/completions", b"{ }")
    async with AsyncExitStack() as stack:
        proxies = {}
        for node in urlsplit(cluster_url).netloc.split(","):
            host, _, port = node.rpartition(":")
            proxies[(host, int(port))] = await stack.enter_async_context(LossyProxy(host, int(port)))
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{proxy.port}" for proxy in proxies.values())
        # Waits out the client's backoff before its resend: the resend's reply, not the arrival's timeout, is read.
        replays = Replays(
            ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=url, arrival_timeout_s=60
        )
        stack.push_async_callback(replays.close)
        nodes = replays._redis.nodes_manager
        nodes.address_remap = lambda address: ("127.0.0.1", proxies[address].port) if address in proxies else address
        key = replays_module.PREFIX + "idem-1"
        assert await replays._redis.get(key) is None  # its node's connection open: the reply lost is the marker's
        owner = nodes.get_node_from_slot(key_slot(key.encode()))
        (proxy,) = [proxy for proxy in proxies.values() if proxy.port == owner.port]
        proxy.lose_next_reply()
        arrived = await replays.arrive("idem-1", first)
        assert arrived.started is not None
        await replays.release("idem-1", arrived.started)  # the request failed
        assert (await replays.arrive("idem-1", other)).started is not None  # its retry, another body: not a 422


@pytest.fixture(params=["memory", "redis", "cluster"])
def any_store(request: pytest.FixtureRequest) -> str | None:
    """Where the answers are kept: in memory (None), a Redis, a Redis Cluster (its URL)."""
    return None if request.param == "memory" else request.getfixturevalue(f"any_redis_url_{request.param}")


async def test_a_marker_outlasting_a_retrys_wait_gives_way_to_its_digest_alone(any_store: str | None) -> None:
    """A marker still there past a retry's wait (Replays.settled: its edge gone, or its write failed) is returned, the
    retry told to retry, and replaced by its digest alone, its expiry kept: the next retry's wait ends at once, another
    body is still the 422, and an answer kept late replaces the digest. Left, each retry until it expired waited."""
    replays = Replays(
        ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=any_store, in_flight_s=20
    )
    sent, other = digest("/v1/chat/completions", b"{}"), digest("/v1/chat/completions", b"{ }")
    try:
        arrived = await replays.arrive("idem-1", sent)
        assert arrived.started is not None
        assert await replays.settled("idem-1", sent, 0.05) == arrived.started
        assert await asyncio.wait_for(replays.settled("idem-1", sent, 60), 5) == Kept(sent)  # nothing to wait on
        with pytest.raises(ApiError) as refused:
            await replays.settled("idem-1", other, 0)
        assert refused.value.status == 422
        if replays._redis is not None:
            assert (
                0 < await replays._redis.ttl(replays_module.PREFIX + "idem-1") <= 20 + replays_module.IN_FLIGHT_MARGIN_S
            )
        await replays.keep("idem-1", sent, b"{}", {"x-request-id": "idem-1"}, tenant="acme", started=arrived.started)
        kept = await kept_answer(replays, "idem-1", sent)
        assert kept is not None and kept.body == b"{}"
    finally:
        await replays.close()


async def test_an_answer_kept_as_a_retrys_wait_ends_is_never_replaced_by_its_digest(any_store: str | None) -> None:
    """The answer written between the waiting retry's last read of the marker and the marker's giving way: the marker
    is replaced only if it is still there (Replays._retire, one step), so the answer stays, sent to the next retry."""
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=any_store)
    sent = digest("/v1/chat/completions", b"{}")
    try:
        arrived = await replays.arrive("idem-1", sent)
        assert arrived.started is not None
        await replays.keep("idem-1", sent, b"{}", {"x-request-id": "idem-1"}, tenant="acme", started=arrived.started)
        await replays._retire("idem-1", arrived.started)  # as settled does once its wait is over
        kept = await kept_answer(replays, "idem-1", sent)
        assert kept is not None and kept.body == b"{}"
    finally:
        await replays.close()


async def test_a_retry_waits_on_its_own_marker_only_once_another_request_found_it(
    any_store: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry that wrote its own marker and was refused as the duplicate of one ended (Replays.settled, `own`): no
    other request of its id found the marker as it arrived, so none reached the router first to keep its answer over
    it (the first ended before, a stream cut as its client left): nothing to wait for, at once (it waited the whole
    wait, past an SDK's 5 s timeout). Found by one, it waits, and is sent the answer that one keeps over it."""
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=any_store)
    sent = digest("/v1/chat/completions", b"{}")
    try:
        own = (await replays.arrive("idem-1", sent)).started
        assert own is not None
        assert await asyncio.wait_for(replays.settled("idem-1", sent, 60, own=own), 5) is None
        assert await replays.arrive("idem-1", sent) == Arrival()  # the first, finding the retry's marker
        reads, tried = [], replays._tried

        async def counted(request_id: str) -> tuple[bool, Kept | None]:
            reads.append(request_id)
            return await tried(request_id)

        monkeypatch.setattr(replays, "_tried", counted)
        waiting = asyncio.ensure_future(replays.settled("idem-1", sent, 60, own=own))
        await eventually(lambda: len(reads) >= 2, "the retry reads its marker again: it waits")
        await replays.keep("idem-1", sent, b"{}", {"x-request-id": "idem-1"}, tenant="acme")  # over the marker
        kept = await asyncio.wait_for(waiting, 5)
        assert kept is not None and kept.body == b"{}"
    finally:
        await replays.close()


async def test_a_marker_lasts_its_calls_timeout_and_a_minute_not_the_replay_window(redis_url: str) -> None:
    """A marker whose writer never took it back (its edge killed, or the store passed over as it failed) ties the key
    to its body only until the call it names has surely ended (EDGE_REQUEST_TIMEOUT_S and a minute), not for the day
    an answer is kept: after that, the router's id rules tell its retry, whatever its body."""
    import redis.asyncio as redis

    replays = Replays(
        ttl_s=86400, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=redis_url, in_flight_s=20
    )
    client = redis.from_url(redis_url)
    try:
        assert (await replays.arrive("idem-1", digest("/v1/chat/completions", b"{}"))).started is not None
        assert 0 < await client.ttl(replays_module.PREFIX + "idem-1") <= 20 + replays_module.IN_FLIGHT_MARGIN_S
    finally:
        await client.aclose()
        await replays.close()


async def test_of_two_edges_sharing_a_redis_one_marks_a_key_and_the_others_body_is_refused(redis_url: str) -> None:
    edges = [
        Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=redis_url)
        for _ in range(2)
    ]
    sent = [digest("/v1/chat/completions", body) for body in (b"{}", b"{ }")]
    try:
        arrivals = await asyncio.gather(
            *(edge.arrive("idem-1", one) for edge, one in zip(edges, sent, strict=True)), return_exceptions=True
        )
    finally:
        for edge in edges:
            await edge.close()
    marked = [a for a in arrivals if isinstance(a, Arrival)]
    refused = [a for a in arrivals if isinstance(a, ApiError)]
    assert len(marked) == 1 and marked[0].started is not None
    assert len(refused) == 1 and refused[0].code == "idempotency_key_mismatch"


async def test_the_digest_kept_is_the_one_edges_before_routing_headers_wrote_and_compare(redis_url: str) -> None:
    """Routing headers' digest is kept beside the route and body's (`routing`), so an edge before them (which compares
    the route and body's alone) reads the entries of this one as before, and this one reads theirs: a retry crossing a
    rolling upgrade, with the headers its first had, is never another request's 422. Compared as one digest, an entry
    the previous version kept for a request sent with x-router-* headers was a 422 to its retry here, and one kept here
    a 422 to its retry on a previous edge (an SDK's retry of a request in flight, told it sent another request)."""
    import redis.asyncio as redis

    legacy = hashlib.sha256(b"/v1/chat/completions\n{}").hexdigest()  # the previous version's digest of the request
    sent = digest("/v1/chat/completions", b"{}", [("x-router-max-cost-usd", "1")])
    assert sent != digest("/v1/chat/completions", b"{}") == digest("/v1/chat/completions", b"{}", [])
    stored = json.loads(Kept(sent, b"{}", {"x-request-id": "idem-1"}).dumps())
    assert stored["digest"] == legacy  # what the previous version compares its own digest to
    assert Kept.loads(json.dumps(stored)) == Kept(sent, b"{}", {"x-request-id": "idem-1"})
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=redis_url)
    client = redis.from_url(redis_url)
    try:  # the previous version's answer, kept as it kept them, to the retry of its request
        await client.set(replays_module.PREFIX + "idem-1", json.dumps({"digest": legacy, "body": "{}", "headers": {}}))
        kept = await kept_answer(replays, "idem-1", sent)
        assert kept is not None and kept.body == b"{}"
        await replays.keep("idem-2", sent, b"{}", None, tenant="acme")
        with pytest.raises(ApiError) as refused:  # kept here: its routing headers compared
            await kept_answer(
                replays, "idem-2", digest("/v1/chat/completions", b"{}", [("x-router-max-cost-usd", "2")])
            )
        assert refused.value.code == "idempotency_key_mismatch"
        with pytest.raises(ApiError):  # none at all is not the first's
            await kept_answer(replays, "idem-2", digest("/v1/chat/completions", b"{}"))
    finally:
        await client.aclose()
        await replays.close()


async def test_a_streams_events_are_kept_apart_from_a_body_an_edge_before_them_reads() -> None:
    """Kept under `events`, with `body` null: an edge of the version before reads the entry as a digest alone (the
    409), never sending the events as a JSON answer; this one sends them again as a stream."""
    events = b'data: {"id":"chatcmpl-1"}\n\ndata: [DONE]\n\n'
    stored = Kept("d", events, {"x-request-id": "idem-1"}, stream=True).dumps()
    assert json.loads(stored)["body"] is None and json.loads(stored)["events"] == events.decode()
    assert Kept.loads(stored) == Kept("d", events, {"x-request-id": "idem-1"}, stream=True)
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=None)
    sent = digest("/v1/chat/completions", b"{}")
    await replays.keep("idem-1", sent, events, {"x-request-id": "idem-1"}, tenant="acme", stream=True)
    kept = await kept_answer(replays, "idem-1", sent)
    assert kept is not None and kept.stream and kept.body == events


async def test_a_retold_streams_events_are_kept_where_an_edge_before_them_does_not_look(redis_url: str) -> None:
    """A legacy or Responses stream's chat events are kept under `retold_events`: an edge of the version before reads
    the entry as a digest alone (the 409; under `events` it took them for a chat answer to retell as JSON, a 500), and
    this one reads them back as the stream its route tells again."""
    import redis.asyncio as redis

    events = b'data: {"id":"chatcmpl-1"}\n\ndata: [DONE]\n\n'
    stored = json.loads(Kept("d", events, {"x-request-id": "idem-1"}, stream=True, retold=True).dumps())
    assert stored["body"] is None and "events" not in stored and stored["retold_events"] == events.decode()
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=redis_url)
    client = redis.from_url(redis_url)
    sent = digest("/v1/completions", b"{}")
    try:
        await replays.keep("idem-1", sent, events, {"x-request-id": "idem-1"}, tenant="acme", stream=True, retold=True)
        previous = json.loads(await client.get(replays_module.PREFIX + "idem-1") or b"null")
        assert previous.get("body") is None and previous.get("events") is None  # what an edge before reads
        kept = await kept_answer(replays, "idem-1", sent)
        assert kept is not None and kept.stream and kept.retold and kept.body == events
    finally:
        await client.aclose()
        await replays.close()


async def two_kept_of_three_and_the_others(replays: Replays, sent: str, answer: bytes) -> None:
    """Three answers of one tenant kept, its bytes holding two and a half: the first two kept whole, the third as its
    digest (another body under its key refused); another tenant's answer kept whole."""
    for n in range(3):
        await replays.keep(f"idem-{n}", sent, answer, {}, tenant="hog")
    await replays.keep("idem-other", sent, answer, {}, tenant="acme")
    assert [await kept_answer(replays, f"idem-{n}", sent) is not None for n in range(3)] == [True, True, False]
    assert await kept_answer(replays, "idem-other", sent) is not None
    with pytest.raises(ApiError) as refused:  # its digest kept all the same
        await kept_answer(replays, "idem-2", digest("/v1/chat/completions", b"{ }"))
    assert refused.value.code == "idempotency_key_mismatch"


async def test_in_redis_a_tenant_keeps_answers_up_to_its_bytes_and_others_keep_theirs(redis_url: str) -> None:
    """The batch Redis has no bound of its own (noeviction, every tenant's batches in it): one tenant resending a
    request under new keys (each a response cache hit, free) kept an answer per key. Past its bytes in the window, its
    answers are kept as their digests (the retry is the router's 409, a different body the 422); another tenant's are
    kept still."""
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=2500, url=redis_url)
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    try:
        await two_kept_of_three_and_the_others(replays, sent, answer)
    finally:
        await replays.close()


async def test_in_memory_a_tenant_keeps_answers_up_to_its_bytes_and_others_keep_theirs() -> None:
    """EDGE_IDEMPOTENCY_TENANT_BYTES in memory too, counted as held: one tenant resending a request under new keys
    (each a cache hit, free) no longer drops every other tenant's answers from the memory they share. Past its bytes
    its answers are kept as their digests (a different body's retry the 422); another tenant's are kept still. Before,
    the bound applied in the Redis alone: every answer was kept."""
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    one = replays_module.kept_size("idem-0", Kept(sent, answer, {}))
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=one * 5 // 2, url=None)
    await two_kept_of_three_and_the_others(replays, sent, answer)


async def test_in_memory_one_tenant_never_drops_every_others_answers_at_the_default_bytes() -> None:
    """EDGE_IDEMPOTENCY_TENANT_BYTES (256 MiB) is four times EDGE_IDEMPOTENCY_MEMORY_BYTES (64 MiB) by default: held
    against it alone, one tenant resending a request under new keys (cache hits, free) still dropped every other
    tenant's answers, oldest first. In memory a tenant keeps at most a quarter of the memory per replay window (its
    entries live two), so the others keep half of it whatever it sends."""
    default_tenant_bytes = EdgeSettings.model_fields["idempotency_tenant_bytes"].default
    bound = 1 << 20
    replays = Replays(
        ttl_s=3600, max_answer_bytes=1000, memory_bytes=bound, tenant_bytes=default_tenant_bytes, url=None
    )
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    await replays.keep("idem-acme", sent, answer, {}, tenant="acme")
    for n in range(4 * bound // len(answer)):  # four times the memory's bound, whatever each entry holds
        await replays.keep(f"idem-hog-{n}", sent, answer, {}, tenant="hog")
    kept = await kept_answer(replays, "idem-acme", sent)
    assert kept is not None and kept.body == answer
    held_by_hog = sum(size for request_id, (_, _, size) in replays._memory.items() if "hog" in request_id)
    assert held_by_hog <= bound // 2


async def test_in_memory_a_tenant_past_its_bytes_leaves_no_marker_to_drop_the_others_answers() -> None:
    """A request's in-flight marker is written as it arrives, before its tenant's bytes are counted: one that ends
    past them, nothing of it kept, takes its marker back, which held on for the call's timeout and a minute,
    uncounted, and one tenant resending a request under new keys dropped every other tenant's answers with them."""
    bound = 1 << 20
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=bound, tenant_bytes=1 << 40, url=None)
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    await replays.keep("idem-acme", sent, answer, {}, tenant="acme")
    marker = replays_module.kept_size("idem-hog-0", Kept(sent, started=uuid.uuid4().hex))
    for n in range(4 * bound // marker):  # its markers alone four times the memory's bound
        started = (await replays.arrive(f"idem-hog-{n}", sent)).started
        assert started is not None
        await replays.keep(f"idem-hog-{n}", sent, answer, {}, tenant="hog", started=started)
    kept = await kept_answer(replays, "idem-acme", sent)
    assert kept is not None and kept.body == answer


async def test_in_redis_a_tenant_past_its_bytes_leaves_no_marker_behind_its_requests(redis_url: str) -> None:
    """As in memory, a request ending past its tenant's bytes, nothing of it kept, takes its in-flight marker back
    from the Redis: left there, uncounted, each outlived its request by the call's timeout and a minute, so a tenant
    resending a request (a response cache hit, free) under new keys filled the store every tenant's batches share
    with markers, past its bytes. Those within them are replaced by what is kept (counted); the marker of a request
    still in flight stays, telling another body's retry the 422."""
    import redis.asyncio as redis

    bound = 2000
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=bound, url=redis_url)
    client = redis.from_url(redis_url)
    sent, other = digest("/v1/chat/completions", b"{}"), digest("/v1/chat/completions", b"{ }")
    try:
        for n in range(100):
            started = (await replays.arrive(f"idem-{n}", sent)).started
            assert started is not None
            await replays.keep(f"idem-{n}", sent, b"x" * 900, {}, tenant="hog", started=started)
        assert (await replays.arrive("idem-running", sent)).started is not None
        keys = [key async for key in client.scan_iter(replays_module.PREFIX + "idem-*")]
        entries = [Kept.loads(await client.get(key) or b"") for key in keys]
        markers = [key for key, entry in zip(keys, entries, strict=True) if entry and entry.started is not None]
        assert markers == [(replays_module.PREFIX + "idem-running").encode()]
        took = sum([len(key) + await client.strlen(key) for key in keys if key not in markers])
        assert 0 < took <= bound, (len(keys), took)
        with pytest.raises(ApiError):  # the one in flight still tells another body's retry
            await replays.arrive("idem-running", other)
    finally:
        await client.aclose()
        await replays.close()


async def test_in_memory_a_tenants_bytes_are_counted_afresh_each_replay_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """In memory, as in the Redis, a tenant's bytes are counted per replay window: past them in one, its answers are
    kept again in the next (those of the window before expire as it ends). Counted without end, a tenant that once
    reached its bytes kept no answer again until the edge restarted."""
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    one = replays_module.kept_size("idem-0", Kept(sent, answer, {}))
    replays = Replays(ttl_s=60, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=one * 3 // 2, url=None)
    now = time.time()
    monkeypatch.setattr(replays_module.time, "time", lambda: now)
    for n in range(2):
        await replays.keep(f"idem-{n}", sent, answer, {}, tenant="acme")
    assert [await kept_answer(replays, f"idem-{n}", sent) is not None for n in range(2)] == [True, False]
    monkeypatch.setattr(replays_module.time, "time", lambda: now + 60)
    await replays.keep("idem-2", sent, answer, {}, tenant="acme")
    assert await kept_answer(replays, "idem-2", sent) is not None
    assert replays._memory_used == sum(size for _, _, size in replays._memory.values())


async def test_in_redis_a_tenants_bytes_bound_what_its_answers_take_there(redis_url: str) -> None:
    """EDGE_IDEMPOTENCY_TENANT_BYTES bounds what the tenant's answers take in the store, not their bodies' length:
    kept as JSON text, an answer's non-ASCII characters are escaped (an emoji's 4 UTF-8 bytes are 12), and its headers
    and digest are kept beside it. Counted by its body's length, a tenant's answers took over three times the bound."""
    import redis.asyncio as redis

    bound = 10_000
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=bound, url=redis_url)
    client = redis.from_url(redis_url)
    sent, answer = digest("/v1/chat/completions", b"{}"), "\N{GRINNING FACE}".encode() * 225  # 900 bytes
    headers = {"x-router-model": "cheap-model", "x-router-reason": "r" * 200}
    try:
        for n in range(20):
            await replays.keep(f"idem-{n}", sent, answer, headers, tenant="hog")
        kept = [n for n in range(20) if await kept_answer(replays, f"idem-{n}", sent) is not None]
        assert kept and kept == list(range(len(kept)))  # the first ones, up to the bound
        keys = [replays_module.PREFIX + f"idem-{n}" for n in kept]
        took = sum([len(key) + await client.strlen(key) for key in keys])
        assert took <= bound, (kept, took)
    finally:
        await client.aclose()
        await replays.close()


async def test_in_redis_a_tenants_bytes_are_given_back_in_the_next_replay_window(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes are counted per replay window, for as long as the store keeps the window's answers (twice the window):
    a tenant past its bytes keeps answers again in the next window, and its counter is not kept forever."""
    import redis.asyncio as redis

    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=2500, url=redis_url)
    client = redis.from_url(redis_url)
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    now = 3600 * 500_000 + 1800.0
    monkeypatch.setattr(replays_module.time, "time", lambda: now)
    try:
        for n in range(3):
            await replays.keep(f"idem-{n}", sent, answer, {}, tenant="hog")
        assert await kept_answer(replays, "idem-2", sent) is None  # past its bytes
        counters = [key async for key in client.scan_iter(replays_module.KEPT_BYTES + "*")]
        assert len(counters) == 1 and 0 < await client.ttl(counters[0]) <= 2 * 3600
        monkeypatch.setattr(replays_module.time, "time", lambda: now + 3600)
        await replays.keep("idem-next", sent, answer, {}, tenant="hog")
        assert await kept_answer(replays, "idem-next", sent) is not None
    finally:
        await client.aclose()
        await replays.close()


async def test_in_redis_a_tenants_digests_count_against_its_bytes_too(redis_url: str) -> None:
    """A stream (or an answer past the tenant's bytes) is kept as its digest, which takes room too: counted against its
    tenant's bytes, and past them not kept at all (a retry is the router's 409, as when the store is out of reach).
    Kept whatever the bound, a tenant resending a request (a response cache hit, free) under new keys kept a digest
    per key, without end, in the store every tenant's batches share. Another tenant's are kept still."""
    import redis.asyncio as redis

    bound = 2000
    replays = Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=bound, url=redis_url)
    client = redis.from_url(redis_url)
    sent = digest("/v1/chat/completions", b"{}")
    try:
        for n in range(100):
            await replays.keep(f"idem-{n}", sent, None, None, tenant="hog")  # a stream's
        await replays.keep("idem-other", sent, None, None, tenant="acme")
        keys = [key async for key in client.scan_iter(replays_module.PREFIX + "idem-*")]
        hogs = [key for key in keys if key != (replays_module.PREFIX + "idem-other").encode()]
        took = sum([len(key) + await client.strlen(key) for key in hogs])
        assert 0 < took <= bound, (len(hogs), took)
        assert len(keys) == len(hogs) + 1  # the other tenant's digest kept
        with pytest.raises(ApiError):  # the first ones, within the bound, still tell another body's retry
            await kept_answer(replays, "idem-0", digest("/v1/chat/completions", b"{ }"))
    finally:
        await client.aclose()
        await replays.close()


async def test_in_redis_two_edges_keeping_at_once_stay_within_the_tenants_bytes(redis_url: str) -> None:
    """Two edges keeping one tenant's answers at once count them on one counter, each in one step: together they keep
    no more than its bytes, and no less than the bound leaves room for."""
    import redis.asyncio as redis

    bound = 10_000
    edges = [
        Replays(ttl_s=3600, max_answer_bytes=1000, memory_bytes=3000, tenant_bytes=bound, url=redis_url)
        for _ in range(2)
    ]
    client = redis.from_url(redis_url)
    sent, answer = digest("/v1/chat/completions", b"{}"), b"x" * 900
    try:
        await asyncio.gather(*(edges[n % 2].keep(f"idem-{n:02}", sent, answer, {}, tenant="hog") for n in range(60)))
        keys = [key async for key in client.scan_iter(replays_module.PREFIX + "idem-*")]
        took = sum([len(key) + await client.strlen(key) for key in keys])
        one = len(keys[0]) + len(Kept(sent, answer, {}).dumps())
        assert bound - one < took <= bound, took
    finally:
        await client.aclose()
        for replays in edges:
            await replays.close()


async def test_a_read_cut_by_the_arrival_timeout_leaves_no_reply_for_another_tenants_read(redis_url: str) -> None:
    """A keyed request's read of the store given up as too slow (EDGE_IDEMPOTENCY_LOOKUP_TIMEOUT_S) drops its
    connection: given back to the pool with the reply still to come, the next read on it (another tenant's, another
    key's) would take that reply, and with it another request's answer to send again."""
    port = int(urlsplit(redis_url).port or 6379)
    async with LossyProxy("127.0.0.1", port) as proxy:
        replays = Replays(
            ttl_s=3600,
            max_answer_bytes=1000,
            memory_bytes=1 << 20,
            tenant_bytes=1 << 20,
            url=proxy.url_for(redis_url),
            arrival_timeout_s=0.2,
        )
        sent = {name: digest("/v1/chat/completions", name.encode()) for name in ("a", "b", "c")}
        try:
            for name in sent:
                await replays.keep(f"idem-{name}", sent[name], f'"{name}"'.encode(), {"x": name}, tenant=name)
            held = proxy.hold_command(b"$3\r\nGET\r\n")  # tenant a's read, after its marker found an answer
            assert await replays.arrive("idem-a", sent["a"]) == Arrival()  # too slow: passed over
            # Its connection dropped, not given back to the pool with a reply still to come for the next read there.
            await eventually(held.abandoned.is_set, "tenant a's connection dropped")
            held.released.set()
            for _ in range(3):
                for name in ("b", "c"):
                    arrival = await replays.arrive(f"idem-{name}", sent[name])
                    assert arrival.replay is not None and arrival.replay.body == f'"{name}"'.encode()
                    kept = await kept_answer(replays, f"idem-{name}", sent[name])
                    assert kept is not None and kept.body == f'"{name}"'.encode()
        finally:
            await replays.close()


@pytest.mark.parametrize("how", ["silent", "away"])
async def test_a_retrys_wait_ends_within_its_bound_with_the_store_silent_or_away(redis_url: str, how: str) -> None:
    """The wait of a retry for an answer kept on another edge (Replays.settled), its reads included, ends within its
    bound with the store silent (a server stopped: each read would wait out the client's 5 s socket timeout) or out
    of reach (each read refused): Unread, what is kept unknown, never taken for nothing kept (the 409 not to retry,
    though the answer may be there). The store answering again, the marker read past the wait gives way to its
    digest."""
    port = int(urlsplit(redis_url).port or 6379)
    sent = digest("/v1/chat/completions", b"{}")
    async with LossyProxy("127.0.0.1", port) as proxy:
        replays = Replays(
            ttl_s=3600, max_answer_bytes=1000, memory_bytes=1 << 20, tenant_bytes=1 << 20, url=proxy.url_for(redis_url)
        )
        try:
            arrived = await replays.arrive("idem-1", sent)
            assert arrived.started is not None
            proxy.go_silent() if how == "silent" else proxy.go_down()
            began = time.monotonic()
            with pytest.raises(Unread):
                await replays.settled("idem-1", sent, 0.3)
            assert time.monotonic() - began < 4, "held past the wait, as the client's socket timeout (5 s) would"
            proxy.come_back()
            assert await replays.settled("idem-1", sent, 0.05) == arrived.started  # read: the marker, past its wait

            async def digest_alone() -> bool:
                return await replays.settled("idem-1", sent, 0) == Kept(sent)

            await eventually(digest_alone, "the marker gives way to its digest")
        finally:
            await replays.close()
