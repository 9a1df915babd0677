"""A provider batch refused before any upload has its lines' admissions withdrawn; when one withdrawal fails (its
undo's reply lost, and the outbox's disk full: kept by neither), the others are withdrawn all the same, and the call
still fails MONEY_NOT_RECORDED. Before, the first failure ended the withdrawal: every line after it stayed held, its
hold blocking the budget for the provider's 24 h window and then charged, for a line no provider ever ran. A real
router gRPC server over Redis behind a proxy that loses exactly one reply; a providers gRPC server refusing as the
real one does; the outbox file on /dev/full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.store import Account, lua
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import served_router, store_on
from tests.router.test_batch_refused_before_upload import REFUSALS, RefusingBatchProvider
from tests.router.test_collect_model import REGISTRY


class RefusingAfterALostReply(RefusingBatchProvider):
    """Refuses the batch before any upload, having set the proxy to lose the next reply: the first withdrawal's."""

    def __init__(self, proxy: LossyProxy) -> None:
        super().__init__(REFUSALS["invalid"])
        self.proxy = proxy

    async def SubmitBatch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.proxy.lose_next_reply()
        await super().SubmitBatch(request, context)


async def test_one_withdrawal_kept_nowhere_leaves_no_other_line_held(
    redis_url: str, proxy: LossyProxy, tmp_path: Path
) -> None:
    direct = redis.from_url(redis_url)
    await direct.script_load(lua.UNDO)  # the undo itself is the reply lost, not a NOSCRIPT
    lines = [
        router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"Explain tides, part {i}")],
            model="strong",
            tenant="acme",
            api_key_id="anonymous",
            request_id=f"b:w{i}",
        )
        for i in range(3)
    ]
    try:
        async with (
            store_on(proxy.url_for(redis_url)) as store,
            served_router(tmp_path, store, RefusingAfterALostReply(proxy), REGISTRY) as running,
        ):
            outbox = tmp_path / "data" / "charges-outbox.jsonl"
            outbox.unlink()
            outbox.symlink_to("/dev/full")  # every write fails: ENOSPC
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await router_pb2_grpc.RouterStub(channel).SubmitBatch(
                        router_pb2.SubmitLinesRequest(lines=lines), timeout=10
                    )
            assert ServiceError.from_rpc_error(failed.value).reason == "MONEY_NOT_RECORDED"
            account = Account("acme", "anonymous")
            # The first line's undo ran in the store (its reply alone was lost); the others were withdrawn after it.
            for line in lines:
                assert await store.pending_charge(account, line.request_id) is None, line.request_id
            assert await store.held_pico(account) == (0, 0)
    finally:
        await direct.aclose()
