"""A provider batch line is collected by the key that sent it alone. Request ids are per tenant, so another key of the
tenant (here another internal caller paying as the same tenant, ROUTER_CALLERS `name=acme`) naming the same provider
batch and request id found that key's pending line: a collect naming another model was refused naming the line's
model, and one naming its model settled the line and returned its answer to the wrong key. Now such a line is no line
of that key's, before and after it is settled. The router's servicer over Redis; a providers gRPC server whose Batch
API answers every line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmrouter.auth import Identity, acting_as
from llmrouter.v1 import router_pb2
from services.router.servicer import RouterServicer
from services.router.store import RedisStore
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, LINE, REGISTRY, TENANT_CALLER, BatchProvider

COLLEAGUE = Identity("reports-service", "acme")  # ROUTER_CALLERS reports-service=acme: another key of acme


@pytest.fixture
async def servicer(redis_store: RedisStore, tmp_path: Path) -> AsyncIterator[RouterServicer]:
    async with router_servicer(tmp_path, redis_store, BatchProvider(), REGISTRY) as made:
        yield made


def collect(model: str) -> router_pb2.CollectBatchRequest:
    return router_pb2.CollectBatchRequest(model=model, provider_batch_id="pbatch-1", request_ids=["line-1"])


async def collected_by_colleague(servicer: RouterServicer, model: str) -> router_pb2.CollectedLine:
    with acting_as(COLLEAGUE):
        reply = await servicer.CollectBatch(collect(model), NoDeadline())
    (line,) = reply.lines
    return line


async def test_another_keys_line_is_neither_read_nor_settled_nor_named(
    servicer: RouterServicer, redis_store: RedisStore
) -> None:
    with acting_as(TENANT_CALLER):
        (sent,) = (await servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[LINE]), NoDeadline())).lines
    assert sent.deferred and sent.model == "strong" and sent.provider_batch_id == "pbatch-1"
    no_line = "no line of this account in provider batch 'pbatch-1' (request id line-1)"
    for model in ("cheap", "strong"):  # the line's model is not told, nor its answer read
        line = await collected_by_colleague(servicer, model)
        assert (line.succeeded, line.error, line.charged_usd) == (False, no_line, "0")
    assert await redis_store.pending_charge(ACCOUNT, "line-1") is not None  # still held for its own key
    with acting_as(TENANT_CALLER):
        (own,) = (await servicer.CollectBatch(collect("strong"), NoDeadline())).lines
    assert own.succeeded and own.response.content == "an answer"
    # Settled, it is reported to its own key again, but to no other.
    line = await collected_by_colleague(servicer, "strong")
    assert (line.succeeded, line.error, line.response.content) == (False, no_line, "")
