"""A provider batch refused before any upload has its lines' admissions withdrawn; when one withdrawal fails (its
undo's reply lost, and the outbox's disk full: kept by neither), the others are withdrawn all the same, and the call
still fails MONEY_NOT_RECORDED. Before, the first failure ended the withdrawal: every line after it stayed held, its
hold blocking the budget for the provider's 24 h window and then charged, for a line no provider ever ran. A real
router gRPC server over Redis behind a proxy that loses exactly one reply; a providers gRPC server refusing as the
real one does; the outbox file on /dev/full."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from llmrouter.auth import ANONYMOUS, acting_as
from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, router_pb2, router_pb2_grpc
from services.router.store import Account, lua
from tests.fakes.lossy_proxy import LossyProxy
from tests.router.servicer_kit import NoDeadline, router_servicer, served_router, store_on
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


class Withdrawn(logging.Handler):
    """Set once a batch's withdrawal failed: the router logs that just before the batch's send fails."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("batch lines not withdrawn"):
            self.failed.set()


class RefusedBesideASlowOne(RefusingAfterALostReply):
    """The model 'strong''s batch refused as above; the model 'cheap''s created once `release` is set."""

    def __init__(self, proxy: LossyProxy) -> None:
        super().__init__(proxy)
        self.sending = asyncio.Event()
        self.release = asyncio.Event()

    async def SubmitBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.model == "cheap":
            self.sending.set()
            await self.release.wait()
            return provider_pb2.SubmitBatchResponse(batch_id="pbatch-cheap")
        await super().SubmitBatch(request, context)


async def test_a_router_stopping_once_one_models_batch_failed_waits_for_the_other_models_batch(
    redis_url: str, proxy: LossyProxy, tmp_path: Path
) -> None:
    """One model's batch failing its withdrawal ended the call at once while another model's batch was still being
    sent, by a task no one waited for: the router stopping then (its close waits for the call, not for that task) cut
    it, its line left with no provider batch recorded, charged its hold when it lapses, whatever the provider ran.
    The call ends once every model's batch was sent and recorded, and fails as before."""
    direct = redis.from_url(redis_url)
    await direct.script_load(lua.UNDO)  # the undo itself is the reply lost, not a NOSCRIPT
    withdrawn = Withdrawn()
    logging.getLogger("llmrouter.router").addHandler(withdrawn)
    lines = [
        router_pb2.CompleteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"Explain tides, part {i}")],
            model="strong" if i else "cheap",
            tenant="acme",
            api_key_id="anonymous",
            request_id=f"b:s{i}",
        )
        for i in range(3)
    ]
    provider = RefusedBesideASlowOne(proxy)
    try:
        async with store_on(proxy.url_for(redis_url)) as store:
            async with router_servicer(tmp_path, store, provider, REGISTRY) as servicer:
                outbox = tmp_path / "data" / "charges-outbox.jsonl"
                outbox.unlink()
                outbox.symlink_to("/dev/full")  # every write fails: ENOSPC
                stop = servicer.deferred.stop

                def stopping() -> None:  # the 'cheap' batch is created as the router stops
                    stop()
                    provider.release.set()

                servicer.deferred.stop = stopping  # type: ignore[method-assign]
                with acting_as(ANONYMOUS):
                    call = asyncio.ensure_future(
                        servicer.SubmitBatch(router_pb2.SubmitLinesRequest(lines=lines), NoDeadline())
                    )
                await asyncio.wait_for(withdrawn.failed.wait(), 30)
                await asyncio.wait_for(provider.sending.wait(), 30)
            with pytest.raises(ServiceError) as failed:
                await call
            assert failed.value.reason == "MONEY_NOT_RECORDED"
            pending = await store.pending_charge(Account("acme", "anonymous"), "b:s0")
            assert pending is not None and pending.provider_batch == "pbatch-cheap", pending
    finally:
        logging.getLogger("llmrouter.router").removeHandler(withdrawn)
        await direct.aclose()
