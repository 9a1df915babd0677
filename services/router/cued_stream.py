"""A providers stream that reaches its upstream only on the router's word (GenerateStreamOnCue): a caller that leaves
before the word was given is owed nothing for the attempt, since no upstream had its request. The word is given as
soon as the providers service is ready to send, so it costs one round trip between the services and no more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import grpc
from grpc._cython import cygrpc
from grpc.aio import _call, _interceptor

from llmrouter.errors import ServiceError
from llmrouter.v1 import provider_pb2, provider_pb2_grpc

_WORD = provider_pb2.CuedRequest(send=True)


@dataclass
class Cue:
    """Whether the attempt in progress surely never reached its upstream: its providers call waits for the router's
    word to send, not yet given (or was refused by a providers service of the version before, which reaches nothing
    either); and how its providers call failed, once it has."""

    unreached: bool = False
    # Kept before the call's clean-up awaits anything: a caller that leaves while it does raises CancelledError in its
    # stead, and what the providers measured of the attempt (its trailing metadata) would reach no one.
    failure: grpc.RpcError | None = None


async def provider_chunks(
    providers: provider_pb2_grpc.ProviderStub,
    request: provider_pb2.GenerateRequest,
    time_left: Callable[[], float],
    cue: Cue,
) -> AsyncGenerator[provider_pb2.GenerateChunk]:
    """The stream's chunks (the `ready_to_send` one answered, not passed on). A providers service of the version before
    (its refusal, _unheard, reached no upstream) is asked with GenerateStream, whose upstream may be reached at once."""
    call = providers.GenerateStreamOnCue(timeout=time_left())
    cue.unreached, cue.failure = True, None
    try:
        # A call that ended before the request was written (the providers service gone, its server shedding the call)
        # raises InvalidStateError over a channel with interceptors, not its status: the first read raises that.
        with suppress(asyncio.InvalidStateError):
            await call.write(provider_pb2.CuedRequest(request=request))
        async for chunk in call:
            if chunk.WhichOneof("kind") != "ready_to_send":
                yield chunk
                continue
            # Given up before it is written: a caller that leaves while it is on its way may well have let it go.
            cue.unreached = False
            # A call the providers ended meanwhile (a refusal crossing the word) raises InvalidStateError here, or its
            # write fails in gRPC's core, not its status: the next read raises that, and the stream ends with it (its
            # `sent`, a fallback).
            with suppress(asyncio.InvalidStateError):
                await _give_word(call)
        return
    except grpc.RpcError as err:
        if not cue.unreached or not _unheard(err):
            cue.failure = err
            raise
    finally:
        call.cancel()
        # The router's last word, however the call ended (answered, refused before the word, UNIMPLEMENTED, left).
        # Over a channel with interceptors (a call token) gRPC writes from a task of its own that ends only when the
        # writing does, not when the call does (cancel() stops it only on a call not yet ended): unended, each
        # stream left one. A call whose interceptors never ran has no writer to end.
        with suppress(asyncio.InvalidStateError, grpc.RpcError):
            await call.done_writing()
    cue.unreached = False
    old = providers.GenerateStream(request, timeout=time_left())
    try:
        async for chunk in old:
            yield chunk
    finally:
        old.cancel()


async def _give_word(call: Any) -> None:
    """Write the word to send so that a call the providers end as it goes keeps their status, `sent: false` with it.
    Their refusal crossing the word (its last moment to come passed) makes the write fail in gRPC's core in most such
    crossings with the services in two processes, and grpc.aio's write (grpcio 1.85.1, aio/_call.py _write) then puts
    its own status in the call's, INTERNAL "Internal error from Core" without their trailing metadata: the attempt was
    charged its worst case (an outcome unknown) where the providers said they sent nothing, their status lost for good
    when it had come first (cygrpc's _AioCall._set_status keeps the last status set). Written to the core call, a failed
    write leaves the status to gRPC's own task that receives it, and the next read raises the providers' status.
    A failed write alone is no proof that the providers never read the word (gRPC promises no such thing: a
    GRPC_OP_SEND_MESSAGE that fails was only not "accepted by outgoing flow control"), so the attempt is charged nothing
    only on their `sent: false`; any other status as it is without a crossing (INTERNAL, a timeout: the worst case).
    grpc.aio's private parts used here are grpcio 1.85.1's (pinned): tests/router/test_cue_after_refusal.py fails when
    they change. A call of another kind than grpc.aio's (a test's) is written to as it is."""
    core = call
    if isinstance(call, _interceptor.InterceptedStreamStreamCall):
        # `ready_to_send` was read from it: its interceptors ran. Their call's writer task (it wrote the request, which
        # the providers read before they were ready) waits for the next write and never takes this one.
        core = call._interceptors_task.result()
    if not isinstance(core, _call.StreamStreamCall):
        await call.write(_WORD)
        return
    if core.done():
        raise asyncio.InvalidStateError("the call ended before the word to send")
    with suppress(cygrpc.InternalError):  # the call ended as the word went: the next read raises its status
        await core._cython_call.send_serialized_message(_WORD.SerializeToString())


def _unheard(err: grpc.RpcError) -> bool:
    """Whether a providers call that failed before the word to send may have been refused by a providers service of
    the version before: UNIMPLEMENTED, or an INTERNAL without the providers' ErrorInfo. Such a service ends the call at
    once, unread; the router's request, written meanwhile, fails in gRPC's core, and gRPC replaces the call's status
    with its own INTERNAL ("Internal error from Core"), the real one lost (often, with the services in two processes).
    Either way no upstream had the request: GenerateStream, asked next, answers with a status of its own."""
    if err.code() == grpc.StatusCode.UNIMPLEMENTED:
        return True
    return err.code() == grpc.StatusCode.INTERNAL and not ServiceError.from_rpc_error(err).explained
