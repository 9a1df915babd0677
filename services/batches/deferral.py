"""A batch's lines offered to the providers' Batch APIs through the router, and their results collected.

Before its lines run one by one, a batch's lines are offered to the router (SubmitBatch) PART_LINES at a time; the
router defers those it sends in a provider batch, at the batch price, and declines the rest, which then run through
Complete as any batch line. Each deferred line's provider batch is written to the store (`batch:<id>:deferred`, line
index -> model and provider batch), so a restarted edge collects what the last one submitted. Collecting
(CollectBatch) polls each provider batch every `poll_s` until it has ended, or its lines' window nears its end (the
router then gives up on it); the router then charges each line once and returns its answer or error. A line charged
its hold, without an answer, is recorded of unknown outcome at that cost, as is one whose provider batch's creation
had an unknown outcome (its hold, charged when it lapses). A reply lost before that write (a crash, a call that timed
out or lost its connection while the router, which runs the call to its end, sent the lines) leaves the lines
submitted but unrecorded: offered again, the router answers each it sent in a provider batch it recorded as deferred
in that batch, so it is recorded and collected here; one whose batch the router did not record (its creation's
outcome unknown) it answers deferred with that error and its hold, so it ends in the error file at the hold it is
charged when the hold lapses; while that creation may still run, the router answers the call BATCH_BEING_SENT, a
failure like any (the batch backs off and asks again). An offer's call marks the
batch (`offer_in_doubt`) until its lines are recorded; a batch cancelled or past its window meanwhile offers nothing
again, but asks the router (FindDeferred, which admits nothing) for those lines (recover): each it sent is recorded and
collected as above, each held with no batch recorded written to the error file at its hold. A call the router admitted
nothing of (router_refusals.admitted_nothing: it never connected, was shed unhandled, or was refused at the router's
limit of calls in flight) leaves no mark of its own. A call the router refused overloaded is told apart from a router
out of reach (Unreached.overloaded_s): the batch waits the delay the router asked for (runner.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from llmrouter.server import MAX_MESSAGE_BYTES
from llmrouter.v1 import router_pb2, router_pb2_grpc
from services.batches import results, unparsed, wire
from services.batches.router_refusals import admitted_nothing, overloaded_retry_s
from services.batches.store import Store, batch_key, deferred_key, results_key
from services.edge.off_loop import in_parser
from services.edge.openai_api import ApiError, completion_body, parse_request

log = logging.getLogger("llmrouter.edge.batches")

PART_LINES = 200  # lines per SubmitBatch call, so each provider batch's results fit one gRPC message
PART_BYTES = MAX_MESSAGE_BYTES // 2  # and a call's lines fit one, with room for the message's own framing
COLLECT_IDS = 50  # lines per CollectBatch call; the router returns the first that fit its reply, the rest next call
CALL_S = 300.0  # a part's routing, admission and upload
UNKNOWN = "provider_batch_outcome_unknown"  # the error file's code of a line charged its hold, without an answer
# The batch's hash field set while an offer's reply may be lost (the router may have admitted and sent its lines).
OFFER_IN_DOUBT = "offer_in_doubt"
# The batch's hash field set once a line deferred without an answer was written its error: its hold stands until it
# lapses (ROUTER_PROVIDER_BATCH_HOLD_S), past the batch's window, as the holds of its lines at providers do until
# collected (runner.not_admitted).
HELD_UNANSWERED = "held_unanswered"


@dataclass(frozen=True)
class Unreached:
    """The router did not take an offer's call, or FindDeferred's: the batch is resumed later. `overloaded_s`: the
    router refused it at its limit of calls in flight and asked to be called again after that many seconds; None: it
    was out of reach (or failed the call otherwise)."""

    overloaded_s: float | None = None


def _unreached(batch_id: str, what: str, error: ServiceError) -> Unreached:
    overloaded_s = overloaded_retry_s(error)
    if overloaded_s is None:
        log.warning(what, extra={"id": batch_id, "code": error.code.name, "error": error.message})
    else:
        log.warning(f"{what}: the router is overloaded", extra={"id": batch_id, "retry_after_s": overloaded_s})
    return Unreached(overloaded_s)


class Deferral:
    def __init__(
        self, store: Store, router: router_pb2_grpc.RouterStub, poll_s: float, max_file_bytes: int = 100 * 1024 * 1024
    ) -> None:
        self.store = store
        self.router = router
        self.poll_s = poll_s
        self.max_file_bytes = max_file_bytes  # a line's answer keeps log-probabilities up to its share of it

    async def offer(
        self,
        batch_id: str,
        batch: dict[str, bytes],
        lines: wire.Lines,
        done: set[str],
        offering: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[int, dict[str, str]] | Unreached:
        """The deferred lines (index -> model and provider batch), the lines not yet offered offered first, a part at
        a time while `offering()` holds (the batch not cancelled nor past its window, its run going on): each part the
        router takes may be sent to providers and charged, and a 50,000-line batch's offer takes 250 calls. Stopped
        so, the lines an earlier offer whose reply was lost sent are looked for as a cancelled batch's are (recover).
        Unreached when the router did not take the call (the batch is resumed later)."""
        deferred = await self.recorded(batch_id)
        if batch.get("offered") == b"1":
            return deferred
        doubted = marked = OFFER_IN_DOUBT in batch  # an earlier offer's reply was lost: its lines are among these
        pending = [i for i in range(len(lines)) if str(i) not in done and i not in deferred]
        parts = _parts(batch_id, batch, lines, pending)
        while part := await in_parser(lambda: next(parts, [])):  # each part's lines parsed off the event loop
            if offering is not None and not await offering():  # not marked `offered`: a resumed run goes on
                if doubted:
                    return await self.recover(batch_id, batch, lines, done)
                await self.store.drop(batch_key(batch_id), OFFER_IN_DOUBT)  # each reply of this offer recorded
                return deferred
            if not marked:
                # Written before the call: a crash or a lost reply leaves it, and the batch, cancelled or expired
                # before it offers again, asks the router what became of its lines (recover).
                await self.store.put(batch_key(batch_id), {OFFER_IN_DOUBT: "1"})
                marked = True
            try:
                reply = await self.router.SubmitBatch(
                    router_pb2.SubmitLinesRequest(lines=[request for _, _, request in part]), timeout=CALL_S
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # a router from before provider batches
                    break
                refused = ServiceError.from_rpc_error(err)
                if admitted_nothing(refused) and not doubted:
                    # The router admitted none of this call's lines, and the earlier calls' replies were recorded.
                    await self.store.drop(batch_key(batch_id), OFFER_IN_DOUBT)
                return _unreached(batch_id, "batch lines not offered to provider batches", refused)
            await self._record(batch_id, part, reply, deferred)
        await self.store.put(batch_key(batch_id), {"offered": "1"})
        await self.store.drop(batch_key(batch_id), OFFER_IN_DOUBT)
        return deferred

    async def recover(
        self, batch_id: str, batch: dict[str, bytes], lines: wire.Lines, done: set[str]
    ) -> dict[int, dict[str, str]] | Unreached:
        """The deferred lines of a batch that offers no line any more (cancelled, or past its window), with those an
        offer whose reply was lost had sent: the router, asked (FindDeferred), admits none, and answers those it
        sent as their SubmitBatch did, so they are collected rather than charged their hold unanswered. Unreached when
        the router did not take the call (the batch is resumed later)."""
        deferred = await self.recorded(batch_id)
        if OFFER_IN_DOUBT not in batch:
            return deferred
        pending = [i for i in range(len(lines)) if str(i) not in done and i not in deferred]
        parts = _parts(batch_id, batch, lines, pending)
        while part := await in_parser(lambda: next(parts, [])):
            try:
                reply = await self.router.FindDeferred(
                    router_pb2.SubmitLinesRequest(lines=[request for _, _, request in part]), timeout=CALL_S
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # a router of the version before cannot say
                    log.warning("lines of a lost offer reply not looked for", extra={"id": batch_id})
                    return deferred
                return _unreached(batch_id, "lines of a lost offer reply not found", ServiceError.from_rpc_error(err))
            await self._record(batch_id, part, reply, deferred)
        await self.store.drop(batch_key(batch_id), OFFER_IN_DOUBT)
        return deferred

    async def _record(
        self,
        batch_id: str,
        part: list[tuple[int, str, router_pb2.CompleteRequest]],
        reply: router_pb2.SubmitLinesResponse,
        deferred: dict[int, dict[str, str]],
    ) -> None:
        """A part's deferred lines recorded (into `deferred` too); the others are left to Complete."""
        for (index, custom_id, _), answer in zip(part, reply.lines, strict=True):
            if not answer.deferred:
                continue
            if answer.error:  # the provider batch may run and bill, but has no answer for us
                await self.store.put(batch_key(batch_id), {HELD_UNANSWERED: "1"})
                # Charged its hold when the hold ends: the ledger's cost, known now; or, never sent, its hold perhaps
                # standing (cost_pending), at most that, counted apart as pending.
                cost = answer.held_usd or "0"
                body = _charged_error(answer.error, UNKNOWN, cost, answer.cost_pending)
                await results.record(self.store, batch_id, index, custom_id, 502, body, cost, answer.cost_pending)
                continue
            entry = {"model": answer.model, "provider_batch_id": answer.provider_batch_id}
            await self.store.put_once(deferred_key(batch_id), str(index), json.dumps(entry).encode())
            deferred[index] = entry

    async def recorded(self, batch_id: str) -> dict[int, dict[str, str]]:
        return {int(k): json.loads(v) for k, v in (await self.store.get(deferred_key(batch_id))).items()}

    async def collect(
        self,
        batch_id: str,
        batch: dict[str, bytes],
        custom_ids: dict[int, str | None],
        deferred: dict[int, dict[str, str]],
        go_on: Callable[[], bool],
    ) -> bool:
        """Collect the deferred lines (`custom_ids`: theirs) without a result until all have one: True; False when
        `go_on` says to stop first (the edge stops, or lost the batch's lease)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for index, entry in sorted(deferred.items()):
            groups.setdefault((entry["model"], entry["provider_batch_id"]), []).append(index)
        while True:
            done = await self.store.names(results_key(batch_id))
            for key, indices in list(groups.items()):
                waiting = [i for i in indices if str(i) not in done]
                if not waiting or await self._collect(batch_id, batch, custom_ids, key, waiting):
                    del groups[key]
            if not groups:
                return True
            for _ in range(max(1, int(self.poll_s / 0.1))):  # a stopping edge leaves within 0.1 s
                if not go_on():
                    return False
                await asyncio.sleep(min(self.poll_s, 0.1))

    async def _collect(
        self,
        batch_id: str,
        batch: dict[str, bytes],
        custom_ids: dict[int, str | None],
        key: tuple[str, str],
        waiting: list[int],
    ) -> bool:
        """One provider batch's lines recorded, when it has ended: True."""
        model, provider_batch_id = key
        while waiting:
            part = waiting[:COLLECT_IDS]
            request = router_pb2.CollectBatchRequest(
                tenant=batch["tenant"].decode(),
                api_key_id=batch["key_id"].decode(),
                model=model,
                provider_batch_id=provider_batch_id,
                request_ids=[wire.request_id(batch_id, i, custom_ids[i]) for i in part],
                reads_cost_pending=True,
            )
            try:
                reply = await self.router.CollectBatch(request, timeout=CALL_S)
            except grpc.RpcError as err:
                log.warning("provider batch not collected; will try again", extra={"id": batch_id, "error": str(err)})
                return False
            if not reply.ended:
                return False
            if not 0 < len(reply.lines) <= len(part):
                log.warning("provider batch collect answered no line, or more; will try again", extra={"id": batch_id})
                return False
            # The first lines asked for: all, or those that fit the reply's message, the rest asked for again.
            answered, waiting = part[: len(reply.lines)], waiting[len(reply.lines) :]
            for index, line in zip(answered, reply.lines, strict=True):
                custom_id = custom_ids[index]
                if line.succeeded:
                    room = wire.logprobs_room(batch, self.max_file_bytes)
                    body = completion_body(without_large_logprobs(line.response, room))
                    cost, pending = line.response.cost_usd, line.response.cost_pending
                    await results.record(self.store, batch_id, index, custom_id, 200, body, cost, pending)
                else:
                    cost = line.charged_usd or "0"
                    # Charged without an answer: its worst case, as the provider may have run and billed it; or
                    # charged before, at an amount the router could not tell (pending).
                    code = UNKNOWN if line.cost_pending or Decimal(cost) else "provider_batch_line_failed"
                    body = _charged_error(line.error, code, cost, line.cost_pending)
                    await results.record(self.store, batch_id, index, custom_id, 502, body, cost, line.cost_pending)
        return True


def without_large_logprobs(response: router_pb2.CompleteResponse, room: int) -> router_pb2.CompleteResponse:
    """A batch line's answer without its log-probabilities (null) when they take more than `room` bytes as JSON
    (wire.logprobs_room), said in the log: the answer itself is kept."""
    if len(response.logprobs_json) > room:
        log.warning(
            "batch line's log-probabilities past its share of the output file; answer kept without them",
            extra={"request_id": response.id, "bytes": len(response.logprobs_json), "room": room},
        )
        response.logprobs_json = ""
    return response


def _charged_error(message: str, code: str, cost: str, cost_pending: bool = False) -> dict[str, Any]:
    """A deferred line's error body, with what it is charged (as an answer's x_router.cost_usd): the files' costs
    add up to the ledger's, but for lines whose cost is pending (x_router.cost_pending, as an answer's)."""
    told = {"cost_pending": True} if cost_pending else {"cost_usd": cost}
    return {**ApiError(502, message, code=code).body(), "x_router": told}


def _parts(
    batch_id: str, batch: dict[str, bytes], lines: wire.Lines, pending: list[int]
) -> Iterator[list[tuple[int, str, router_pb2.CompleteRequest]]]:
    """The valid lines (index, custom_id, request) in parts of at most PART_LINES lines and PART_BYTES bytes, each
    line parsed as its part is built. A line larger alone is not offered but runs through Complete (a 413 past
    gRPC's limit): one call over the limit failed every offer, and the batch, resumed to offer again, never ended."""
    part: list[tuple[int, str, router_pb2.CompleteRequest]] = []
    size = 0
    for index in pending:
        line = unparsed.read(lines.raw(index))
        if isinstance(line, unparsed.Unparsed):  # not offered: its run answers it as its own error
            continue
        request = _request(batch_id, batch, line)
        if request is None or request.ByteSize() > PART_BYTES:
            continue
        if len(part) == PART_LINES or size + request.ByteSize() > PART_BYTES:
            yield part
            part, size = [], 0
        part.append((index, line["custom_id"], request))
        size += request.ByteSize()
    if part:
        yield part


def _request(batch_id: str, batch: dict[str, bytes], line: dict[str, Any]) -> router_pb2.CompleteRequest | None:
    """The line as the router takes it; None when it is not a valid request (Complete's path reports that)."""
    try:
        parsed, raw = parse_request(json.dumps(line["body"]).encode())
    except ApiError:
        return None
    if parsed.stream:
        return None
    message = parsed.to_router(raw, batch["tenant"].decode(), "", f"{batch_id}:{line['custom_id']}")
    message.api_key_id = batch["key_id"].decode()
    return message
