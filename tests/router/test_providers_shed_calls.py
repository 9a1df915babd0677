"""A providers service too busy to take more calls: its gRPC server sheds the calls past its queue of calls waiting
for a handler, CANCELLED with no ErrorInfo (llmrouter.errors: ServiceError.shed), before any handler ran, so no upstream
had them. The router's caller is charged nothing for such a call: it was charged the attempt's worst case, as for a
call cut in transit. A batch whose SubmitBatch was shed, or never connected (the providers gone), was never created:
its lines are withdrawn (sent to Complete), not held as a batch of unknown outcome and charged that hold when it lapses,
with no answer. A real providers gRPC
server in a thread of its own (its event loop held by the call it serves, as a loaded one's is), queueing one call; the
router's gRPC server over the money store on the test's Redis."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2, router_pb2_grpc
from services.router.store import Account, RedisStore
from tests.router.servicer_kit import served_router_to
from tests.router.test_collect_model import REGISTRY, BatchProvider

CALLS = 6  # while the first is served, enough to pass the one call the providers server queues
# The providers server's queue of calls waiting for a handler: past it, gRPC cancels the calls it receives.
ONE_WAITING = [("grpc.server.max_pending_requests", 1), ("grpc.server.max_pending_requests_hard_limit", 1)]


class Holding(BatchProvider):
    """Answers each call once `release` is set: until then the first holds its server's event loop, as a loaded
    server's is held, and the calls arriving meanwhile wait in gRPC's queue (or are shed past it)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.reached = 0  # calls a handler ran for

    async def Generate(self, request: Any, context: Any) -> provider_pb2.GenerateResponse:
        self._hold()
        usage = common_pb2.Usage(input_tokens=12, output_tokens=34)
        return provider_pb2.GenerateResponse(content="an answer", usage=usage, model=request.model)

    async def SubmitBatch(self, request: Any, context: Any) -> provider_pb2.SubmitBatchResponse:
        self._hold()
        return await super().SubmitBatch(request, context)

    def _hold(self) -> None:
        self.reached += 1
        self.release.wait(10)  # blocking: nothing else on this server's loop runs meanwhile


class ProvidersInAThread:
    """A servicer served on loopback by a gRPC server with its own event loop in a thread (ONE_WAITING), at `port`."""

    def __init__(self, servicer: provider_pb2_grpc.ProviderServicer) -> None:
        self.servicer = servicer
        self.port = 0
        self._started, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        server = grpc.aio.server(options=ONE_WAITING)
        provider_pb2_grpc.add_ProviderServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._started.set()
        await asyncio.to_thread(self._stop.wait)
        await server.stop(0)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextmanager
def providers_in_a_thread(servicer: provider_pb2_grpc.ProviderServicer) -> Iterator[ProvidersInAThread]:
    served = ProvidersInAThread(servicer)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def ask() -> router_pb2.CompleteRequest:
    message = common_pb2.ChatMessage(role="user", content="Hello")
    return router_pb2.CompleteRequest(
        messages=[message], model="strong", tenant="acme", request_id=uuid.uuid4().hex, escalation="off"
    )


async def test_a_call_the_providers_server_shed_is_charged_nothing(tmp_path: Path, redis_store: RedisStore) -> None:
    release = threading.Event()
    holding = Holding(release)
    with providers_in_a_thread(holding) as providers:
        async with (
            served_router_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store, REGISTRY) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            router = router_pb2_grpc.RouterStub(channel)
            calls = [asyncio.ensure_future(router.Complete(ask(), timeout=20)) for _ in range(CALLS)]
            # The calls the providers server shed fail while its loop is still held; then the rest are served.
            shed, _ = await asyncio.wait(calls, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            release.set()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failures = [ServiceError.from_rpc_error(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert shed and failures and holding.reached == CALLS - len(failures)
    for failure in failures:
        assert failure.code == grpc.StatusCode.CANCELLED, failure.message
        assert "charged_usd" not in failure.metadata, failure.metadata


async def test_a_batch_whose_creation_was_shed_is_withdrawn_not_held(tmp_path: Path, redis_store: RedisStore) -> None:
    release = threading.Event()
    holding = Holding(release)
    with providers_in_a_thread(holding) as providers:
        async with (
            served_router_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store, REGISTRY) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            router = router_pb2_grpc.RouterStub(channel)
            await router.Decide(ask(), timeout=20)  # the providers' models listed while the server still answers
            batches = [
                asyncio.ensure_future(router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[ask()]), timeout=20))
                for _ in range(CALLS)
            ]
            shed, _ = await asyncio.wait(batches, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            release.set()
            replies = await asyncio.gather(*batches)
    lines = [reply.lines[0] for reply in replies]
    created = [line for line in lines if line.provider_batch_id]
    assert shed and holding.reached == len(created) < CALLS, lines
    for line in lines:
        if not line.provider_batch_id:  # its SubmitBatch shed: withdrawn, to be sent to Complete
            assert (line.deferred, line.error) == (False, ""), line
            assert await redis_store.pending_charge(Account("acme", "anonymous"), line.request_id) is None


async def test_a_batch_whose_creation_never_reached_the_providers_is_withdrawn_not_held(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    """The providers service gone (after the router listed its models): gRPC never connects, so no batch was created."""
    release = threading.Event()
    release.set()
    with providers_in_a_thread(Holding(release)) as providers:
        async with (
            served_router_to(f"127.0.0.1:{providers.port}", tmp_path, redis_store, REGISTRY) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            router = router_pb2_grpc.RouterStub(channel)
            await router.Decide(ask(), timeout=20)
            providers.stop()
            reply = await router.SubmitBatch(router_pb2.SubmitLinesRequest(lines=[ask()]), timeout=20)
    line = reply.lines[0]
    assert (line.deferred, line.error) == (False, ""), line
    assert await redis_store.pending_charge(Account("acme", "anonymous"), line.request_id) is None
