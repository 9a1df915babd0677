"""A CollectBatch names each line once, by a request id: one naming a line twice (or an empty id) is refused
INVALID_ARGUMENT before anything is read or charged, as SubmitBatch refuses such lines. It was collected as asked: near
the lines' window's end the give-up answered one line for the two asked for, so a caller matching the reply's lines to
its request ids in order (as the edge does) took that line's outcome for the next id's. The router's servicer over
Redis; a providers gRPC server whose provider batch is still running."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from llmrouter.auth import acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import router_pb2
from services.router.store import RedisStore, period_id
from tests.router.servicer_kit import NoDeadline, router_servicer
from tests.router.test_collect_model import ACCOUNT, REGISTRY, TENANT_CALLER, send_line
from tests.router.test_collect_other_keys_lines import Running


@pytest.mark.parametrize("ids", [["line-1", "line-1"], ["line-1", ""]])
async def test_a_collect_naming_a_line_twice_or_none_is_refused(
    ids: list[str], redis_store: RedisStore, tmp_path: Path
) -> None:
    async with router_servicer(tmp_path, redis_store, Running(), REGISTRY) as router:
        router.deferred.give_up_s = 10**9  # every line's window is ending: a collect would charge its hold
        with acting_as(TENANT_CALLER):
            sent = await send_line(router)
            assert sent.deferred
            collect = router_pb2.CollectBatchRequest(model="strong", provider_batch_id="pbatch-1", request_ids=ids)
            with pytest.raises(ServiceError) as refused:
                await router.CollectBatch(collect, NoDeadline())
    assert (refused.value.code, refused.value.metadata) == (grpc.StatusCode.INVALID_ARGUMENT, {"field": "request_ids"})
    assert await redis_store.pending_charge(ACCOUNT, "line-1") is not None  # still held, nothing charged
    assert await redis_store.spent(ACCOUNT, period_id("day")) == (0, 0)
