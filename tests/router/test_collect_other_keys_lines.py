"""A provider batch line is collected by the key that sent it alone. Request ids are per tenant, so another key of the
tenant (here another internal caller paying as the same tenant, ROUTER_CALLERS `name=acme`) naming the same provider
batch and request id found that key's pending line: a collect naming another model was refused naming the line's
model, and one naming its model settled the line and returned its answer to the wrong key. Now such a line is no line
of that key's, before and after it is settled. The router's servicer over Redis; a providers gRPC server whose Batch
API answers every line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrouter.auth import Identity, acting_as
from llmrouter.v1 import provider_pb2, router_pb2
from services.router.servicer import RouterServicer
from services.router.store import RedisStore, period_id
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, REGISTRY, TENANT_CALLER, BatchProvider, send_line

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
        sent = await send_line(servicer)
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


class Running(BatchProvider):
    """A provider batch still running when polled."""

    async def PollBatch(self, request: Any, context: Any) -> provider_pb2.PollBatchResponse:
        return provider_pb2.PollBatchResponse(status="in_progress", ended=False)


async def test_another_key_cannot_have_a_line_given_up_at_its_hold(redis_store: RedisStore, tmp_path: Path) -> None:
    """Near the end of a line's window, a collect of a batch still running gives the line up, charging its hold (its
    worst case): another key's collect did so to a line not its own, charging its sender the worst case early."""
    async with router_servicer(tmp_path, redis_store, Running(), REGISTRY) as running:
        running.deferred.give_up_s = 10**9  # every line's window is ending
        with acting_as(TENANT_CALLER):
            sent = await send_line(running)
        assert sent.deferred
        with acting_as(COLLEAGUE):
            reply = await running.CollectBatch(collect("strong"), NoDeadline())
    assert (reply.status, reply.ended) == ("in_progress", False)
    assert await redis_store.pending_charge(ACCOUNT, "line-1") is not None  # still held, nothing charged
    assert await redis_store.spent(ACCOUNT, period_id("day")) == (0, 0)
