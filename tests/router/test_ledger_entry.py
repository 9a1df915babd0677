"""The ledger entry a charge leaves in the money store is compact (services/router/store/ledger_entry.py) and loses
nothing: a real request through the router's servicer over a real Redis, with the shipped registry's eight models as
candidates (some unavailable here, some over the caller's latency cap), leaves an entry that reads back as the
decision the caller was shown, in at most about half the memory of the record as the versions before wrote it
(0.41-0.50 here: how many full records a stream node packs turns on a byte of the record's length)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.registry import load_registry
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router import policy
from services.router.servicer import RouterServicer
from services.router.store import SHARDS, RedisStore, ledger_key, reconciled_record
from services.router.store.ledger_entry import DEFAULTS, EXCLUSION_CODES, EXCLUSIONS, compact, expanded
from services.router.store.model import Pending
from tests.router.servicer_kit import NoDeadline, router_servicer

REGISTRY = load_registry()
SERVED = {"gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "claude-sonnet-4"}  # the others: no provider key here
COPIES = 500  # entries per stream whose memory is compared


class Answering(provider_pb2_grpc.ProviderServicer):
    async def ListModels(self, request: Any, context: Any) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=[REGISTRY.info(m) for m in REGISTRY.models if m.name in SERVED])

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        usage = common_pb2.Usage(input_tokens=14, output_tokens=8)
        return provider_pb2.GenerateResponse(content="ok", usage=usage, model=request.model, finish_reason="stop")


@pytest.fixture
async def servicer(redis_url: str, tmp_path: Path) -> AsyncIterator[RouterServicer]:
    store = RedisStore(redis_url)
    try:
        async with router_servicer(tmp_path, store, Answering(), REGISTRY) as made:
            yield made
    finally:
        await store.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    made: Any = redis.from_url(redis_url)
    yield made
    await made.aclose()


async def only_entry(client: Any) -> bytes:
    entries = [fields for shard in range(SHARDS) for _, fields in await client.xrange(ledger_key(shard))]
    assert len(entries) == 1
    return bytes(entries[0][b"record"])


async def streams_bytes(client: Any, compact: bytes, full: str) -> tuple[int, int]:
    """The memory Redis keeps for a stream of COPIES entries of each record. Built with the same entry ids, one
    millisecond apart, so only the records differ: a node keeps each id as a delta from its first, and ids taken from
    the clock spread wider on a slower, loaded machine."""
    for n in range(1, COPIES + 1):
        await client.xadd("compact", {"record": compact}, id=f"{n}-0")
        await client.xadd("full", {"record": full}, id=f"{n}-0")
    return int(await client.memory_usage("compact", samples=0)), int(await client.memory_usage("full", samples=0))


async def test_a_charge_leaves_a_compact_entry_that_reads_back_as_the_decision(
    servicer: RouterServicer, client: Any
) -> None:
    message = common_pb2.ChatMessage(role="user", content="What is the capital of France?")
    request = router_pb2.CompleteRequest(
        messages=[message], model="auto", max_tokens=300, max_latency_ms=9000, tenant="acme"
    )
    with acting_as(ANONYMOUS):  # the edge's identity (auth=none): it acts for the tenants it authenticated
        response = await servicer.Complete(request, NoDeadline())

    entry = await only_entry(client)
    record = expanded(json.loads(entry))
    shown = [
        {
            "model": c.model,
            "predicted_quality": round(c.predicted_quality, 4),
            "estimated_cost_usd": c.estimated_cost_usd,
            "eligible": c.eligible,
            "excluded_because": c.excluded_because,
        }
        for c in response.decision.candidates
    ]
    assert record["candidates"] == shown
    assert [c["model"] for c in shown] == [m.name for m in REGISTRY.models]
    reasons = {c.excluded_because for c in response.decision.candidates}
    assert policy.UNAVAILABLE in reasons and any("max_latency_ms 9000" in reason for reason in reasons)
    assert record["model"] in SERVED
    assert (record["model"], record["cost_usd"], record["latency_ms"]) == (
        response.model,
        response.cost_usd,
        response.latency_ms,
    )
    # No classifier answers here: routed without it, as the decision says.
    assert (record["reason"], record["reason_detail"]) == ("classifier_unavailable", response.decision.reason)
    assert (record["cache_hit"], record["retries"], record["session_id"]) == (False, 0, "")

    # As the versions before wrote it: the record as built, with spaces. Compared as Redis keeps each.
    full = json.dumps(record)
    assert len(entry) * 2 < len(full)
    compact_bytes, full_bytes = await streams_bytes(client, entry, full)
    # Full records of about 2,000 bytes go two to a 4 KB stream node, or one when a byte longer: the full stream's
    # memory moves by a fifth with it (1.15-1.41 MB against the compact stream's 0.58 MB here).
    assert compact_bytes < 0.55 * full_bytes, (compact_bytes, full_bytes)


def test_any_record_reads_back_as_it_was_built() -> None:
    candidate = {"model": "m", "predicted_quality": 0.85, "estimated_cost_usd": "0.0001", "eligible": True}
    # Every flag, as the charge writes them: one away from its default, the others at it.
    charged = {"request_id": "r", "tenant": "t", "cost_usd": "0.1", **DEFAULTS, "cache_hit": True}
    shapes = [
        {**candidate, "excluded_because": ""},
        {**candidate, "eligible": False, "excluded_because": policy.NO_TOOLS},
        {**candidate, "eligible": False, "excluded_because": "latency SLO 15000 ms over max_latency_ms 9000"},
        {**candidate, "eligible": False, "excluded_because": ""},
    ]
    for shape in shapes:
        record = {**charged, "candidates": [shape]}
        assert expanded(json.loads(compact(record))) == record
        assert isinstance(json.loads(compact(record))["candidates"][0], list)
    # Shapes a list could not say back as they were: the record is kept as it is.
    for odd in (
        candidate,  # no excluded_because
        {**candidate, "excluded_because": "x"},  # eligible, yet a reason
        {**candidate, "eligible": False, "excluded_because": "no_tools"},  # a reason that reads as a code
    ):
        record = {**charged, "candidates": [shapes[0], odd]}
        assert json.loads(compact(record)) == record
        assert expanded(json.loads(compact(record))) == record
    reconciled = reconciled_record(Pending("t", "k", "r", 10**9, "all", "router-a", 1.0))
    assert json.loads(compact(reconciled)) == reconciled == expanded(reconciled)


RAW_CALL = [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{"}}]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"temperature": 1.5}, "takes a temperature of at most 1.0 (registry: max_temperature), not 1.5"),
        ({"passthrough_json": json.dumps({"stop": ["\n"]})}, policy.NO_BLANK_STOP),
        (
            {
                "passthrough_json": json.dumps(
                    {"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}
                )
            },
            "does not guarantee response_format json_schema (registry: structured_outputs is false)",
        ),
        (
            {
                "messages": [
                    common_pb2.ChatMessage(role="user", content="Look up the sea"),
                    common_pb2.ChatMessage(role="assistant", tool_calls_json=json.dumps(RAW_CALL)),
                    common_pb2.ChatMessage(role="tool", tool_call_id="call_1", content="blue"),
                ]
            },
            policy.NO_RAW_ARGUMENTS,
        ),
    ],
)
async def test_an_exclusion_without_a_short_code_is_kept_whole(
    servicer: RouterServicer, client: Any, fields: dict[str, Any], reason: str
) -> None:
    """The exclusions written since the codes were (a temperature, a blank stop, a format, a tool call's arguments) have
    no short code: the entry keeps each as written, and reads back as the decision the caller was shown."""
    message = common_pb2.ChatMessage(role="user", content="What is the capital of France?")
    request = router_pb2.CompleteRequest(
        **{"messages": [message], "model": "auto", "max_tokens": 300, "tenant": "acme", **fields}
    )
    with acting_as(ANONYMOUS):
        response = await servicer.Complete(request, NoDeadline())

    stored = json.loads(await only_entry(client))
    packed = {c[0]: c[3] for c in stored["candidates"] if len(c) == 4}
    assert packed["claude-3-5-haiku"] == reason  # as written: never a code, nor another sentence
    shown = {c.model: c.excluded_because for c in response.decision.candidates}
    assert {c["model"]: c["excluded_because"] for c in expanded(stored)["candidates"]} == shown
    assert shown["claude-3-5-haiku"] == reason


def test_each_short_code_reads_back_as_one_sentence() -> None:
    # Two sentences of one code would read back as one of them; a code that is a sentence would read as another.
    assert len(set(EXCLUSION_CODES.values())) == len(EXCLUSION_CODES)
    assert not set(EXCLUSION_CODES.values()) & set(EXCLUSION_CODES)
    assert all(EXCLUSIONS[code] == sentence for sentence, code in EXCLUSION_CODES.items())
