"""Batch lines sent through a provider's Batch API, at its batch price.

A line routed to a model with a batch price whose provider has a Batch API (Registry.batch_priced) is admitted
like any request, for that one model at its batch price (no fallback: the provider answers within its window or
not at all), with a hold that lasts the provider's 24 h window and a margin (ROUTER_PROVIDER_BATCH_HOLD_S, 26 h):
admission counts it against the budgets meanwhile, and the reconciler leaves it alone until then, whatever becomes
of the router that admitted it. The lines admitted together for one model go up as one provider batch. A line whose
admission may have left its hold standing (its undo failed by a bug, or was kept by neither the store nor the outbox)
is not sent: it is answered deferred with an error, its charge pending (DeferredLine.cost_pending, at most its hold),
as Complete tells such a request, so that its caller neither sends it again nor counts it free; the call's other lines
go on.

Collecting a provider batch that has ended settles each line once: charged at the batch price from the usage the
provider reports (its output never past the max_tokens the line was sent, recorded in its pending charge, as a
realtime answer's: one reported past it is charged max_tokens, flagged estimated); released when the provider reports
it failed, expired or cancelled (it bills none of those); charged its hold when its outcome is unknown (no usage,
or no result from a batch that ran). Everything needed lives in the money store (the pending charges), so any router
collects what another admitted. Request ids are the callers' (two tenants may both send 'r1'), so the provider batch
each line was sent in is recorded beside its pending charge ('' from admission until then), and a collect settles,
or reports, only the lines of the batch it names. A line whose batch stays unrecorded (its creation's outcome
unknown, or the store out of reach to record it) is settled from no batch's results: it is charged its hold, its worst
case. The model a line is admitted for is recorded beside
its pending charge too, and the line is priced at that model's batch price as it was at the line's admission (kept
beside its pending charge as well; a line admitted by a router of the version before, without them, at the batch price
of the collect's registry): a collect naming another model is refused whole, before the provider is asked (the model
named also picks the provider's Batch API that is). A line
offered again after it was sent in a recorded batch (the reply to its SubmitBatch lost: the call runs to its end
after its caller left) is answered deferred in that batch, for its recorded model, so the caller collects it; one
pending with no batch recorded is answered deferred with an error and the hold it is charged when the hold lapses,
what the ledger will have (refused as a duplicate, it was in the caller's files as pending), once its creation is
surely over: a SubmitBatch sends its lines within SEND_START_S of its start (or withdraws them), so within SENDING_S of
its admission a line is answered BATCH_BEING_SENT instead (UNAVAILABLE: ask again), whose batch, recorded meanwhile,
is then collected. A caller that may send no line any more (its batch cancelled, or past its window) asks instead
(FindDeferred), which admits nothing and answers each line so too. A line with nothing beside its
pending charge was admitted by a router of the version before: it is settled as that version did, from the batch a
collect names when that batch's results hold its request id (else charged its hold), at the model the collect names;
for such lines alone, until their holds lapse, the old risks stay that another tenant's line of the same request id
in the named batch settles it (and its answer is read), and that a collect naming a cheaper model of the same
provider underprices it. A collect in the last `give_up_s` of the lines' holds gives up on a provider batch that has
not ended (or whose model lost its batch price while a line still pending has no admitted prices recorded: with
them, the collect goes ahead at those): the lines still pending are charged their hold and reported ended, so the
caller's batch ends too. So it does on one that cannot be read, but only once no try can read it: a poll failing for a
reason that may pass is tried again until the lines' holds end or the caller's deadline comes (poll_retries), a
caller whose router stops told to collect again, nothing charged; one the providers say no try will read (the provider
no longer knows the batch, refuses its read, or its results are too large: BATCH_UNREADABLE) is given up on at once.
Before the window's end such a batch is told to its caller (FAILED_PRECONDITION BATCH_UNREADABLE), nothing charged:
only a collect near the end settles its lines. So does a poll's reply that reads none of the lines (the providers
always read the first asked for): malformed, it is taken as a batch no try reads. A line whose batch is never collected
is charged its hold by the reconciler when its hold lapses. A collect of lines all settled before (so charged, or
charged by a collect whose reply was lost) asks the provider first all the same, trying a passing failure again for
give_up_s or the caller's time; when no try reads the batch, or it has not ended, or its model is gone, the lines are
told ended as the money store has them, at the charge each took (else such a batch, forgotten by its provider, never
ended): as the collect that charged each told it, answer included, when that collect kept it (KeptAnswers), else
without their result. A collect charges a line only while its pending charge is open: one
the reconciler (or another collect) settled after the collect read it is never charged twice, whether or not its
charged marker has expired."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from llmrouter.errors import ServiceError, invalid
from llmrouter.output_charged import output_charged
from llmrouter.registry import ModelSpec, RegistrySource
from llmrouter.server import MAX_MESSAGE_BYTES
from llmrouter.upstream_messages import UPSTREAM_REASONS
from llmrouter.v1 import common_pb2, provider_pb2, provider_pb2_grpc, router_pb2
from services.router import admission as admitting
from services.router import faults, metrics, poll_retries
from services.router.admission import Admission
from services.router.capped_charges import PAST_MAX_TOKENS, REPORTED, count_charge
from services.router.outbox import NotRecorded
from services.router.routed import Routed, counts_below_nothing, generation_entry
from services.router.serving import generate_request
from services.router.store import (
    ANSWER_KEPT_BYTES,
    ANSWER_KEPT_S,
    PICO,
    UNRECORDED_BATCH,
    Account,
    PartlyTaken,
    Pending,
    Store,
    StoreUnavailable,
    UncountedCharge,
    money_now,
    to_pico,
)

log = logging.getLogger("llmrouter.router")

RouteFn = Callable[[router_pb2.CompleteRequest, Any], Awaitable[Routed]]
MAX_LINES = 1_000  # per SubmitBatch call: the caller sends a large batch in parts
ROUTING_CONCURRENCY = 16
PROVIDER_CALL_S = 120.0  # an upload of up to MAX_LINES requests, or a read of their results
POLL_IDS = 50  # lines whose answers are read in one PollBatch: 50 of 16k tokens fit its 16 MB message
# The most a collect's reply carries of lines (the first line whatever its size): up to MAX_LINES long answers, with
# their log-probabilities, passed one gRPC message many times over, and the reply, its lines charged, was lost.
REPLY_BYTES = MAX_MESSAGE_BYTES // 2
LINE_FRAMING_BYTES = 1024  # a collected line's fields beside its provider result: its id, model, cost...
# The providers service's refusals of a SubmitBatch before any upload (no batch exists): its own BATCH_NOT_CREATED,
# an unknown model, a line invalid as it stands or asking what its model cannot honour (a registry the router read
# before a reload). So is a call no providers handler saw: shed by their gRPC server or refused at their limit of calls
# in flight (ServiceError.shed), or never connected (never_connected). Any other failure may come after the upload: its
# outcome is unknown.
NOT_CREATED = ("BATCH_NOT_CREATED", "MODEL_NOT_FOUND", "INVALID_REQUEST", "UNSUPPORTED_PARAMETER")
# A SubmitBatch's lines go to their provider within this of the call's start, or are withdrawn (sent to Complete):
# so a line's batch is created, or its creation's outcome unknown, and recorded within SENDING_S of its admission.
SEND_START_S = 60.0
# Until then a line held with no provider batch recorded may still be in its creation (the upload, then the record;
# the margin covers the record, and the admission and the look are dated by one clock, store/clock.py): asked about
# meanwhile (its SubmitBatch's reply lost), it is not answered unknown at its hold, for the batch recorded next would
# never be collected, its answer lost and its hold blocking the budget a day; the caller is told to ask again
# (BATCH_BEING_SENT).
SENDING_S = SEND_START_S + PROVIDER_CALL_S + 60.0


# Each line a collect settles is kept, as it tells it, before it is charged (Store.keep_answer): a collect whose reply
# is lost leaves it for the next, which tells it again whether or not the provider can be read by then (else an answer
# charged was lost to its caller in an outage of the providers). Compressed, without its log-probabilities, at most
# KeptAnswers.most_bytes (one over it is not kept), for KeptAnswers.kept_s: by default (ROUTER_BATCH_ANSWER_KEPT_S,
# ROUTER_BATCH_ANSWER_KEPT_BYTES) 1 MiB, for a day, the caller's batch window, within which its batch collects the line
# again.
@dataclasses.dataclass(frozen=True)
class KeptAnswers:
    """How long a settled line is kept (Store.keep_answer), and the most bytes a kept one takes (kept_line)."""

    kept_s: float = ANSWER_KEPT_S
    most_bytes: int = ANSWER_KEPT_BYTES


KEEP_OFF_LOOP_BYTES = 64 * 1024  # a line longer than this is compressed in a thread: ~20 ms of CPU a megabyte
GIVE_UP_MAX_S = 600.0  # how early before its lines' holds end a provider batch is given up, at most
UNREAD = "the provider batch could not be read: collect it again"
# A failed line's, settled before at an amount its charged marker does not say (CollectedLine.cost_pending).
CHARGE_PENDING = "charged before, by an amount this router cannot read: its cost is pending (at most its hold)"
UNREADABLE_STATUS = "unreadable"  # a poll's, when no try read the provider batch (Deferred._poll)
UNREADABLE = (
    "the provider batch cannot be read, nor will it be (the provider no longer knows it, refuses its read, or its "
    "results are too large): collect it again near its lines' window's end, when each is charged its hold"
)
GAVE_UP = "the provider batch did not end within its window"
SETTLED_UNREAD = (
    "the provider's result could not be read, and the line was settled before: it is told at the charge it took (its "
    "hold, when that lapsed uncollected), without its result"
)
UNRECORDED = (
    "no provider batch is recorded for request id {}: its batch's creation had an unknown outcome, or the store was "
    "out of reach to record it, so no batch's results settle it; it is charged its hold at the batch price"
)
NOT_FOUND = (
    "no provider batch is recorded for request id {}: its batch's creation had an unknown outcome (or was not "
    "recorded), so the line is charged its hold at the batch price when the hold lapses"
)
CHARGED_UNANSWERED = (
    "request id {} was charged without its answer (its hold, its outcome unknown: the reconciler charged it as its "
    "hold lapsed, or a collect gave its provider batch up) before this answer was read: it is told at that charge, "
    "as the ledger has it"
)
NO_USAGE = "the provider reported no usage, or one its answer belies"
OVER_REPORTED = "the provider reported more usage than the line may be billed"
UNDER_REPORTED = "the provider reported a usage below nothing"
LEFT_HELD = (
    "request id {} was not sent: its admission failed ({}) in a way that may have left its hold standing, so its "
    "charge is pending (at most its hold, charged by the reconciler as the hold lapses)"
)
UNANSWERED = (
    "no result for request id {} in provider batch {!r}, and no provider batch is recorded for the line (it was sent "
    "by a router of the version before): it is charged its hold at the batch price"
)


class Deferred:
    def __init__(
        self,
        route: RouteFn,
        admission: Admission,
        store: Store,
        providers: provider_pb2_grpc.ProviderStub,
        registry: RegistrySource,
        baseline: Callable[[], ModelSpec | None],
        hold_s: float,
        kept: KeptAnswers = KeptAnswers(),
    ) -> None:
        self.route = route  # routes a request without admitting it (the servicer's)
        self.admission = admission
        self.store = store
        self.providers = providers
        self.registry = registry
        self.baseline = baseline  # the strongest available model, as the ledger's baseline
        self.hold_s = hold_s  # a deferred line's hold: the provider's window and a margin
        self.kept = kept
        # Time enough before the holds end for the edge's next poll to land, however slow the provider batch.
        self.give_up_s = min(GIVE_UP_MAX_S, hold_s / 4)
        self._stopping = asyncio.Event()
        # The wait before a poll is tried again (poll_retries): a test's clock passes it at once.
        self.wait: Callable[[float], Awaitable[bool]] = self._wait

    def stop(self) -> None:
        """The router stops: a collect waiting to try its poll again fails now, for its caller to collect again (from
        another router), nothing charged; the router's close does not wait for its retries."""
        self._stopping.set()

    async def _wait(self, seconds: float) -> bool:
        """Whether `seconds` passed with the router still running."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def submit(self, request: router_pb2.SubmitLinesRequest, context: Any) -> router_pb2.SubmitLinesResponse:
        started = time.monotonic()  # before any line's admission (SEND_START_S)
        lines = list(request.lines)
        ids = _line_ids(lines)
        # Every line looked up before any is admitted: one still being sent fails the call having admitted none.
        found = await self._sent(lines)
        answers = {i: found.get(i) or router_pb2.DeferredLine(request_id=i) for i in ids}
        slots = asyncio.Semaphore(ROUTING_CONCURRENCY)

        async def admit(line: router_pb2.CompleteRequest) -> Routed | router_pb2.DeferredLine | None:
            async with slots:
                return await self._admit(line, context)

        admissions = await asyncio.gather(*(admit(line) for line in lines if line.request_id not in found))
        admitted = [routed for routed in admissions if isinstance(routed, Routed)]
        left_held = {line.request_id: line for line in admissions if isinstance(line, router_pb2.DeferredLine)}
        answers.update(left_held)
        # A line another call of the same lines (its reply lost, offered again) admitted after this one looked it up
        # is refused here as a duplicate: looked up again, it is not answered not deferred (to Complete, refused as a
        # duplicate) while that call sends it. Being sent, this call fails BATCH_BEING_SENT, its own lines withdrawn.
        # Not a line whose hold this call may have left standing: answered already, that hold is no other call's.
        taken = {routed.request_id for routed in admitted} | left_held.keys()
        try:
            answers.update(await self._sent([line for line in lines if line.request_id not in found.keys() | taken]))
        except Exception:  # a bug too: its lines, never sent, are not left held to be charged their holds
            await self._withdraw(admitted)
            raise
        groups: dict[str, list[Routed]] = {}
        for routed in admitted:
            groups.setdefault(routed.plan.order[0].model.name, []).append(routed)
        # Each model's batch sent at once, not after the others' uploads: all start within SEND_START_S. One failing
        # (a withdrawal kept nowhere) fails the call once every other is sent and recorded: the call runs to its end
        # (servicer.py) so that a stopping router cuts no send, which would leave its lines held with no batch
        # recorded, charged their hold when it lapses; offered again, each line is answered as it was sent.
        sends = [self._send(model, group, started) for model, group in groups.items()]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            answers.update(outcome)
        return router_pb2.SubmitLinesResponse(lines=[answers[i] for i in ids])

    async def find(self, request: router_pb2.SubmitLinesRequest, context: Any) -> router_pb2.SubmitLinesResponse:
        """FindDeferred: the lines of a SubmitBatch whose reply the caller lost, answered as it answered them, once
        the caller may send no line any more (its batch cancelled, or past its window): none is admitted. Without
        this, the lines it sent would never be collected, charged their hold when it lapses, with no answer. With the
        money store out of reach it fails (UNAVAILABLE), not answering a line not deferred: its caller asks again."""
        lines = list(request.lines)
        ids = _line_ids(lines)
        found = await self._sent(lines)
        return router_pb2.SubmitLinesResponse(
            lines=[found.get(i) or router_pb2.DeferredLine(request_id=i) for i in ids]
        )

    async def _sent(self, lines: list[router_pb2.CompleteRequest]) -> dict[str, router_pb2.DeferredLine]:
        """The lines sent before (_sent_before), by request id."""
        slots = asyncio.Semaphore(ROUTING_CONCURRENCY)

        async def look_up(line: router_pb2.CompleteRequest) -> router_pb2.DeferredLine | None:
            async with slots:
                return await self._sent_before(line)

        found = await asyncio.gather(*(look_up(line) for line in lines))
        return {answer.request_id: answer for answer in found if answer is not None}

    async def _sent_before(self, request: router_pb2.CompleteRequest) -> router_pb2.DeferredLine | None:
        """A line offered again that was sent in a provider batch before, answered as that SubmitBatch answered it:
        deferred in that batch, for the model recorded with it. SubmitBatch runs to its end after its caller left
        (its deadline passed, its connection closed), so a reply lost that way is asked for again by offering the
        lines again: refused as duplicates, they would never be collected, and be charged their hold with no answer.
        A line pending with no batch recorded (its batch's creation had an unknown outcome, or was not recorded, or
        the line was admitted by a router of the version before) is answered deferred with the error its SubmitBatch
        gave, or would have given, and the hold it is charged when the hold lapses (no collect settles it from a
        batch), as the ledger will have it: refused as a duplicate, the caller wrote it as pending. Within SENDING_S
        of its admission such a line may still be in its creation: BATCH_BEING_SENT (the caller asks again later).
        None for any other line, which admission then takes as before (a new one is admitted; one in use otherwise,
        refused)."""
        try:
            account = admitting.account_for(request)
            pending = await self.store.pending_charge(account, request.request_id)
        except StoreUnavailable:
            # Not "not sent before": FindDeferred's answer is taken for good, and a SubmitBatch's line would be admitted
            # anew or sent to Complete, refused as a duplicate once the store is back. The call fails UNAVAILABLE having
            # admitted nothing (every line is looked up first), and its caller asks again.
            raise
        except ServiceError:  # admission refuses it the same way
            return None
        if pending is None or pending.key != account.key or not pending.until:
            return None
        if not (pending.provider_batch and pending.model):
            if money_now() - pending.ts < SENDING_S:
                raise _being_sent(request.request_id, pending.ts)
            return router_pb2.DeferredLine(
                request_id=request.request_id,
                deferred=True,
                model=pending.model or "",
                error=NOT_FOUND.format(request.request_id),
                held_usd=format(Decimal(pending.hold_pico) / PICO, "f"),
            )
        log.info("batch line offered again: deferred in its provider batch", extra={"request_id": request.request_id})
        return router_pb2.DeferredLine(
            request_id=request.request_id,
            deferred=True,
            model=pending.model,
            provider_batch_id=pending.provider_batch,
            held_usd=format(Decimal(pending.hold_pico) / PICO, "f"),
        )

    async def _admit(
        self, request: router_pb2.CompleteRequest, context: Any
    ) -> Routed | router_pb2.DeferredLine | None:
        """The line routed and admitted at its model's batch price; None when it is not deferred (nothing held):
        its model has no batch price or Batch API, or routing or admission refused it (Complete says why), or failed
        by a bug of the router's (faults.py): that line's admission, should the store have taken it, is withdrawn, and
        the call's other lines go on. Left to fail the call, a bug in one line's left every other line admitted, never
        sent, each charged its hold as it lapsed. Its answer, not sent and its charge pending (_left_held), when its
        admission failed so that its hold may stand: its undo failed by a bug too, or was kept by neither the store
        nor the outbox."""
        try:
            routed = await self.route(request, context)
            assert routed.registry is not None  # every routed request keeps its registry snapshot
            priced = routed.registry.batch_priced(routed.plan.order[0].model)
            if priced is None:
                return None
            # That one model (a session's too: the turn's own plan is no batch line's to go back to).
            routed.plan = dataclasses.replace(
                routed.plan, order=[dataclasses.replace(routed.plan.order[0], model=priced)], own=None
            )
            routed.max_tokens = admitting.output_caps(routed.plan, routed.limits, routed.decision)
            await self._admit_counted(routed)
        except (faults.HoldLeft, NotRecorded) as left:  # before ServiceError: NotRecorded is one
            return _left_held(routed, left)
        except ServiceError as exc:
            log.info("batch line not deferred", extra={"request_id": request.request_id, "reason": exc.reason})
            return None
        except Exception:  # an admission the store may have taken is undone as it failed (Admission._hold_under)
            log.exception("batch line not deferred: an unexpected failure", extra={"request_id": request.request_id})
            return None
        return routed

    async def _admit_counted(self, routed: Routed) -> None:
        """The line's admission, a bug in which is counted as Complete's is (llmrouter_router_faults_total)."""
        try:
            await self.admission.admit(routed, until=money_now() + self.hold_s)
        except ServiceError:
            raise
        except Exception as bug:
            metrics.ROUTER_FAULTS.labels(faults.admission_fault_charge(bug)).inc()
            raise

    async def _send(self, model: str, group: list[Routed], started: float) -> dict[str, router_pb2.DeferredLine]:
        """One provider batch of the lines for `model`. When the provider is known to have created none, or the
        call is past SEND_START_S (its lines admitted too slowly), their admissions are withdrawn (they go to
        Complete instead); when that is unknown, their holds stay, to be charged when they lapse. So are they withdrawn
        when making the provider's request fails by a bug: nothing was sent (left to fail the call, they stayed held,
        never sent, charged their holds as they lapsed)."""
        if time.monotonic() - started > SEND_START_S:
            log.warning("provider batch not sent: its lines took too long to admit", extra={"model": model})
            await self._withdraw(group)
            return {}
        try:
            calls = [generate_request(r, r.plan.order[0].model, self.admission.end_users) for r in group]
        except Exception:
            log.exception("provider batch not sent: an unexpected failure making it", extra={"model": model})
            await self._withdraw(group)
            return {}
        try:
            reply = await self.providers.SubmitBatch(
                provider_pb2.SubmitBatchRequest(model=model, requests=calls), timeout=PROVIDER_CALL_S
            )
        except grpc.RpcError as err:
            error = ServiceError.from_rpc_error(err)
            if (error.explained and error.reason in NOT_CREATED) or error.shed or error.never_connected:
                log.warning("provider batch not created", extra={"model": model, "error": error.message})
                await self._withdraw(group)
                return {}
            log.error("provider batch creation outcome unknown", extra={"model": model, "error": error.message})
            # The caller is told no more than that: the error may quote the provider or name an internal address.
            unknown = (
                "the provider batch's creation failed with an unknown outcome (request id {}): the line is "
                "charged its hold at the batch price when the hold lapses"
            )
            return {
                r.request_id: router_pb2.DeferredLine(
                    request_id=r.request_id,
                    deferred=True,
                    model=model,
                    error=unknown.format(r.request_id),
                    held_usd=_held_usd(r),
                )
                for r in group
            }
        log.info("provider batch created", extra={"model": model, "batch": reply.batch_id, "lines": len(group)})
        await self._record_batch(group, reply.batch_id)
        return {
            r.request_id: router_pb2.DeferredLine(
                request_id=r.request_id,
                deferred=True,
                model=model,
                provider_batch_id=reply.batch_id,
                held_usd=_held_usd(r),
            )
            for r in group
        }

    async def _withdraw(self, group: list[Routed]) -> None:
        """Withdraw each line's admission. One that fails (its undo kept by neither the store nor the outbox: a
        failing disk) leaves the others to be withdrawn all the same, or each would stay held for the provider's
        window and then be charged its hold, for a line never sent; the first failure is raised once all were tried."""
        failures: dict[str, Exception] = {}
        for routed in group:
            try:
                await self.admission.withdraw(routed)
            except Exception as exc:  # logged where it failed too (the outbox's critical line)
                failures[routed.request_id] = exc
        if failures:
            log.critical(
                "batch lines not withdrawn: held until their holds lapse",
                extra={"lines": len(failures), "of": len(group), "request_ids": list(failures)[:20]},
            )
            raise next(iter(failures.values()))

    async def _record_batch(self, group: list[Routed], batch_id: str) -> None:
        """Each line's provider batch recorded beside its pending charge: only its results settle the line. One not
        recorded (the store out of reach, or a bug) keeps '' there: no batch's results settle it (module docstring)."""
        slots = asyncio.Semaphore(ROUTING_CONCURRENCY)

        async def record(routed: Routed) -> bool:
            assert routed.hold is not None  # every deferred line was admitted
            async with slots:
                try:
                    return await self.store.record_provider_batch(routed.account, routed.hold, batch_id)
                except Exception as failed:  # a bug too: as the store out of reach, not failing a call whose batch ran
                    bug = None if isinstance(failed, StoreUnavailable) else failed
                    log.error(
                        "provider batch of a line not recorded", exc_info=bug, extra={"request_id": routed.request_id}
                    )
                    return False

        await asyncio.gather(*(record(routed) for routed in group))

    async def collect(self, request: router_pb2.CollectBatchRequest, context: Any) -> router_pb2.CollectBatchResponse:
        """The lines settled, and the charges the collect made (or found made and counted nowhere) counted in the
        metrics at its end, each by the one collect that takes its count (Store.count_once_each): one call a shard,
        not one a line. A collect that fails part way (a poll of a later part, the store out of reach) takes the counts
        of the lines it charged before all the same; should that take go unheard, the store sends it again at its next
        reconcile rounds and counts what it took; should it never be sent, or the router die first, the reconciler's
        sweep takes them (its shard lists each line's charge: lua.py, CHARGE)."""
        counts: list[UncountedCharge] = []
        try:
            collected = await self._collect(request, context, counts)
        except BaseException:
            try:
                await self._count(counts)
            except Exception:  # the collect's own failure is the one its caller hears
                log.exception(
                    "batch lines' charges not counted here: left for the reconciler", extra={"lines": len(counts)}
                )
            raise
        await self._count(counts)
        return collected

    async def _count(self, counts: list[UncountedCharge]) -> None:
        if not counts:
            return
        try:
            records = await self.store.count_once_each(counts)
        except PartlyTaken as partly:  # what its calls took before the store failed is counted here or nowhere
            for taken in partly.taken:
                count_charge(taken)
            raise
        for record in records:
            if record is not None:
                count_charge(record)

    async def _collect(
        self, request: router_pb2.CollectBatchRequest, context: Any, counts: list[UncountedCharge]
    ) -> router_pb2.CollectBatchResponse:
        account = admitting.account_for(
            router_pb2.CompleteRequest(tenant=request.tenant, api_key=request.api_key, api_key_id=request.api_key_id)
        )
        ids = list(request.request_ids)
        batch_id = request.provider_batch_id
        if not 0 < len(ids) <= MAX_LINES:
            raise invalid(f"collect 1 to {MAX_LINES} lines at a time", "request_ids")
        if not all(ids) or len(set(ids)) != len(ids):  # the reply's lines answer the ids asked for, in their order
            raise invalid("name each line once, by its request_id", "request_ids")
        if not batch_id:
            raise invalid("name the provider batch the lines were sent in", "provider_batch_id")
        pending = {request_id: await self._pending_line(account, request_id) for request_id in ids}
        _refuse_another_model(pending, request.model)
        # Near the window's end the provider is still asked first: a batch that has ended gives its answers.
        last_moment = self._last_moment(pending, batch_id)
        ending = last_moment is not None
        # Every line asked for settled before (its hold lapsed, or an earlier collect whose reply was lost charged it),
        # one at least charged from this batch (else none is the account's line there: the poll's failure is told):
        # none waits for the window's end any more, so a provider batch no try reads within the caller's time (or that
        # has not ended) ends them as the money store has them, else no collect would ever end them.
        settled = all(line is None for line in pending.values()) and await self._charged_from(account, ids, batch_id)
        tries_until = money_now() + self.give_up_s if settled else last_moment
        model = self.registry.current.get(request.model)
        priced = None if model is None else self.registry.current.batch_priced(model)
        if priced is None and model is not None and (settled or _admitted_with_prices(pending)):
            # Its batch price gone since: each line is charged at the prices it was admitted with, or was charged before
            # (told at that charge, an answer read too).
            priced = model
        if priced is None:
            if ending:
                return await self._give_up(account, ids, batch_id, counts)
            if settled:  # the model gone from the registry: its Batch API unknown
                told = await self._told_settled(
                    account, ids, batch_id, SETTLED_UNREAD, counts, request.reads_cost_pending
                )
                return router_pb2.CollectBatchResponse(status="window_ended", ended=True, lines=told)
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "NO_BATCH_PRICE",
                f"model {request.model!r} has no batch price here: its lines are charged their hold at window's end",
                {"model": request.model},
            )
        lines: list[router_pb2.CollectedLine] = []
        size = 0  # of the lines so far, as sent
        # The answers are read POLL_IDS lines at a time: each part's within one gRPC message.
        for start in range(0, len(ids), POLL_IDS):
            part = ids[start : start + POLL_IDS]
            polled = await self._poll(request.model, batch_id, part, tries_until, context)
            if polled.ended and not lines and part[0] in polled.unread_ids:
                # The providers never leave out the first line asked for: a reply that does is malformed and reads
                # nothing. Given each time, it would fail every collect, near the window's end and after it: taken as a
                # batch no try reads, it is given up on there, or its settled lines told as charged.
                if not (ending or settled):
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "no result was read")
                log.warning("provider batch poll read no line", extra={"batch": batch_id})
                polled = provider_pb2.PollBatchResponse(status=UNREADABLE_STATUS)
            if not polled.ended:
                if settled:  # the parts told already keep what they told; the rest are told as charged
                    why = SETTLED_UNREAD if polled.status == UNREADABLE_STATUS else GAVE_UP
                    # Their callers get no answer for what they were charged: the on-call learns why here.
                    log.warning(
                        "provider batch ended as the money store has its lines, settled before: no result read",
                        extra={"batch": batch_id, "lines": len(ids) - start, "status": polled.status},
                    )
                    reads_pending = request.reads_cost_pending
                    lines.extend(await self._told_settled(account, ids[start:], batch_id, why, counts, reads_pending))
                    return router_pb2.CollectBatchResponse(status="window_ended", ended=True, lines=lines)
                if not ending:
                    return router_pb2.CollectBatchResponse(status=polled.status)
                # The parts settled already keep their outcome; the rest are given up on.
                lines.extend((await self._give_up(account, ids[start:], batch_id, counts)).lines)
                return router_pb2.CollectBatchResponse(status="window_ended", ended=True, lines=lines)
            results: dict[str, provider_pb2.BatchLineResult] = {}
            for read in polled.results:
                known = results.get(read.request_id)
                # A line both answered and failed (a provider's duplicate) was billed: its first answer counts.
                if known is None or (read.succeeded and not known.succeeded):
                    results[read.request_id] = read
            unread = set(polled.unread_ids)  # left out of the poll's reply: not read, so not settled here
            for request_id in part:
                result = results.get(request_id)
                weight = LINE_FRAMING_BYTES + (result.ByteSize() if result is not None else 0)
                # The rest, unsettled, are the caller's next collect.
                if request_id in unread or (lines and size + weight > REPLY_BYTES):  # never the first: read above
                    log.info("provider batch collected in part", extra={"lines": len(lines), "asked": len(ids)})
                    return router_pb2.CollectBatchResponse(status=polled.status, ended=True, lines=lines)
                lines.append(await self._settle(account, priced, batch_id, request_id, result, polled.status, counts))
                size += LINE_FRAMING_BYTES + lines[-1].ByteSize()
        return router_pb2.CollectBatchResponse(status=polled.status, ended=True, lines=lines)

    async def _poll(
        self, model: str, batch_id: str, part: list[str], tries_until: float | None, context: Any
    ) -> provider_pb2.PollBatchResponse:
        """The provider batch's state and the part's results. Near its lines' window's end (`tries_until`: the
        earliest end of their holds), or once every line is settled (`tries_until`: give_up_s from now), a passing
        failure is tried again until then, or the caller's deadline (poll_retries); a poll no try read by then, or one
        that failed as no try will pass, answers UNREADABLE_STATUS (not ended: the lines are given up on, or told as
        charged). Any other failure is raised, for the caller to collect again."""
        asked = provider_pb2.PollBatchRequest(model=model, batch_id=batch_id, request_ids=part, partial=True)

        async def poll(timeout_s: float) -> provider_pb2.PollBatchResponse:
            return await self.providers.PollBatch(asked, timeout=timeout_s)

        try:
            if tries_until is None:
                return await poll(PROVIDER_CALL_S)
            tries = poll_retries.Tries.before(tries_until, context.time_remaining(), PROVIDER_CALL_S)
            polled = await poll_retries.through_passing_failures(poll, tries, self.wait)
        except grpc.RpcError as err:
            raise _unread(err) from None
        return provider_pb2.PollBatchResponse(status=UNREADABLE_STATUS) if polled is None else polled

    def _last_moment(self, pending: dict[str, Pending | None], batch_id: str) -> float | None:
        """The earliest end of the holds of this provider batch's lines (or with none recorded) still pending, when
        within give_up_s: the batch is given up on by then, before the reconciler charges a hold unseen by the
        caller, who would then wait forever. None while every hold has longer to run."""
        ends = [
            line.until
            for line in pending.values()
            if line is not None and line.provider_batch in (batch_id, "", None) and line.until
        ]
        if not ends or min(ends) - money_now() > self.give_up_s:
            return None
        return min(ends)

    async def _give_up(
        self, account: Account, ids: list[str], batch_id: str, counts: list[UncountedCharge]
    ) -> router_pb2.CollectBatchResponse:
        """The lines ended without asking the provider: each of this batch still pending charged its hold (its
        outcome is unknown: the provider batch may still run and bill it); one settled before only reported."""
        log.warning("provider batch given up at its window's end", extra={"lines": len(ids)})
        pending = {request_id: await self._pending_line(account, request_id) for request_id in ids}
        for request_id, line in pending.items():
            if line is not None and not line.until:
                raise invalid(f"request {request_id!r} is not a provider batch line", "request_ids")
        lines = []
        for request_id, line in pending.items():
            told = _of_another_batch(line, request_id, batch_id) or await self._owe_hold(
                account, line, request_id, f"{GAVE_UP} (request id {request_id})", counts
            )
            if line is None:
                told = await self._settled_before(account, request_id, batch_id, told, counts) or told
            lines.append(told)
        return router_pb2.CollectBatchResponse(status="window_ended", ended=True, lines=lines)

    async def _settle(
        self,
        account: Account,
        model: ModelSpec,
        batch_id: str,
        request_id: str,
        result: provider_pb2.BatchLineResult | None,
        status: str,
        counts: list[UncountedCharge],
    ) -> router_pb2.CollectedLine:
        """One line's outcome, settled once, and only from the results of the provider batch it was sent in:
        request ids are the callers', so another tenant's line (or another of the account's batches) may have the
        same id there. A line whose pending charge is gone was settled before (by an earlier collect, or at its
        hold by the reconciler) and is only reported, when it was charged from this batch, at what it was charged. A
        line with no batch recorded is settled from this one only when its results hold the line's request id (module
        docstring)."""
        pending = await self._pending_line(account, request_id)
        if pending is not None and not pending.until:
            raise invalid(f"request {request_id!r} is not a provider batch line", "request_ids")
        if pending is not None:
            if pending.provider_batch == "":  # which batch ran it is unknown: its worst case, whatever batch is named
                return await self._owe_hold(account, pending, request_id, UNRECORDED.format(request_id), counts)
            foreign = _of_another_batch(pending, request_id, batch_id)
            if foreign is not None:
                return foreign
            if pending.model is not None and pending.model != model.name:  # refused before polling: not met here
                error = f"request {request_id!r} was sent for model {pending.model!r}: collect it naming that model"
                return router_pb2.CollectedLine(request_id=request_id, error=error, charged_usd="0")
            if pending.provider_batch is None:  # a line of the version before
                if result is None:  # nothing says it is this batch's (a failed one would release it): its worst case
                    why = UNANSWERED.format(request_id, batch_id)
                    return await self._owe_hold(account, pending, request_id, why, counts)
                held_account, hold = pending.account_and_hold()  # its charge keeps the batch, so a collect again
                if await self.store.record_provider_batch(held_account, hold, batch_id):  # reports it, its answer
                    pending = dataclasses.replace(pending, provider_batch=batch_id)  # kept under it (_charge)
        else:  # settled before (an earlier collect, its reply lost, or the reconciler at its hold), or no line
            outcome = await self._outcome(account, None, model, request_id, result, status, counts)
            settled = await self._settled_before(account, request_id, batch_id, outcome, counts)
            # Neither held nor charged for this account from this batch: not its line, and not its answer to read.
            return settled or _no_line(request_id, batch_id)
        return await self._outcome(account, pending, model, request_id, result, status, counts)

    async def _charged_from(self, account: Account, ids: list[str], batch_id: str) -> bool:
        """Whether one of the account's request ids was charged as a line of this provider batch (or of none recorded,
        told under any: _settled_before)."""
        for request_id in ids:
            if await self.store.charged_batch(account, request_id) in (batch_id, UNRECORDED_BATCH):
                return True
        return False

    async def _told_settled(
        self,
        account: Account,
        ids: list[str],
        batch_id: str,
        why: str,
        counts: list[UncountedCharge],
        reads_cost_pending: bool,
    ) -> list[router_pb2.CollectedLine]:
        """Lines all settled before, whose provider batch no try read (or that has not ended past their holds):
        each told ended as the money store has it, without asking the provider again: at the charge it took, `why`
        its error (one charged with no batch recorded as ever, UNRECORDED); one that is no line of the account there,
        so. Nothing is charged. A failed line whose charge is not on record (a router from before batch lines' charged
        markers said it charged it) is told pending (`cost_pending`, its error saying so) to a caller that
        `reads_cost_pending`; it fails the collect for any other, to collect again: an edge of the version before reads
        a line without `charged_usd` as charged nothing, and its files would not add up to the ledger."""
        lines = []
        for request_id in ids:
            unread = router_pb2.CollectedLine(request_id=request_id, error=f"{why} (request id {request_id})")
            told = await self._settled_before(account, request_id, batch_id, unread, counts)
            if told is not None and not told.succeeded and told.cost_pending:  # an answer kept is told at its cost
                if not reads_cost_pending:
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", UNREAD)
                told.error = f"{told.error}: {CHARGE_PENDING}"
            lines.append(told or _no_line(request_id, batch_id))
        return lines

    async def _settled_before(
        self,
        account: Account,
        request_id: str,
        batch_id: str,
        outcome: router_pb2.CollectedLine,
        counts: list[UncountedCharge],
    ) -> router_pb2.CollectedLine | None:
        """A line of the account settled before, told at what it was charged: `outcome` (read from this batch's
        results) for one charged from this batch; for one charged with no batch recorded (its worst case, from no
        batch's results: UNRECORDED), that, whatever batch is named, as the collect that charged it told it. None for
        a request that is no line of the account's charged so (read nothing of this batch for it)."""
        charged_from = await self.store.charged_batch(account, request_id)
        if charged_from == UNRECORDED_BATCH:
            unrecorded = router_pb2.CollectedLine(request_id=request_id, error=UNRECORDED.format(request_id))
            return await self._as_charged(account, request_id, unrecorded, counts)
        if charged_from != batch_id:
            return None
        # The line as a collect kept it before its charge, with the answer it was charged for, when that charge is the
        # one on record. A collect keeps the line before charging it: one whose charge never landed (it failed, or the
        # line was charged meanwhile at its hold, without an answer) leaves a line the ledger does not have, told as
        # the charge on record is. Told as kept when the marker says no amount (a router of the version before
        # charged it).
        kept = await self._kept(account, request_id, batch_id)
        charged = await self.store.charged_pico(account, request_id)
        if kept is not None and kept.succeeded and charged is not None and charged != _told_as(kept):
            # A collect read its answer while it was pending, but the line was charged without it (its hold): told so
            # by every collect, as the ledger has it, whether or not the provider gives the answer again.
            outcome = router_pb2.CollectedLine(request_id=request_id, error=CHARGED_UNANSWERED.format(request_id))
        elif not outcome.succeeded and kept is not None and charged in (None, _told_as(kept)):
            outcome = kept  # no answer read now (the provider's result unread, or none): as kept
        elif outcome.succeeded and kept is not None and kept.succeeded:
            # The answer read again, told with the usage it was charged for: read with no pending charge, its output is
            # not bounded by the line's max_tokens (_charged_usage).
            outcome.response.usage.CopyFrom(kept.response.usage)
        return await self._as_charged(account, request_id, outcome, counts)

    async def _outcome(
        self,
        account: Account,
        pending: Pending | None,
        model: ModelSpec,
        request_id: str,
        result: provider_pb2.BatchLineResult | None,
        status: str,
        counts: list[UncountedCharge],
    ) -> router_pb2.CollectedLine:
        """The line's outcome from its result, charged while `pending` (its open pending charge); None: settled
        before, so only reported."""
        if pending is not None and pending.prices is not None:
            # Charged at the prices the line was admitted with (its hold was sized at them), not at the registry's of
            # this collect, a day later perhaps: a price change within the window changes no line sent before it.
            prices = pending.prices
            admitted = {
                "input_usd_per_mtok": prices.input,
                "output_usd_per_mtok": prices.output,
                "cached_input_usd_per_mtok": prices.cached_input,
                "cache_write_usd_per_mtok": prices.cache_write,
            }
            model = model.model_copy(update=admitted)
        if result is not None and result.succeeded:
            reply = result.response
            if reply.usage.estimated:  # the provider said nothing of what it billed (or what its answer belies)
                return await self._owe_hold(account, pending, request_id, NO_USAGE, counts)
            usage = _charged_usage(reply.usage, pending, model)
            cost = model.usage_cost_usd(usage)
            if pending is not None and to_pico(cost) > pending.hold_pico:
                # More than the line could be billed (its prompt, max_tokens written): a false report, and a
                # charge beyond the hold would pass the budget that admitted it. The operator absorbs the rest, as a
                # request's charge capped at its hold: counted so.
                past = usage.estimated
                return await self._owe_hold(
                    account, pending, request_id, OVER_REPORTED, counts, reported=cost, past_max_tokens=past
                )
            if pending is not None and (cost < 0 or counts_below_nothing(usage)):
                # A negative count, which no provider bills either: charged as it stands, it would lower the spend (or
                # the charge, below what the rest of the report was written for), and the budget would let that much
                # more through. The hold, as for an outcome unknown.
                return await self._owe_hold(account, pending, request_id, UNDER_REPORTED, counts)
            response = router_pb2.CompleteResponse(
                id=request_id,
                content=reply.content,
                refusal=reply.refusal,
                model=model.name,
                provider=model.provider,
                usage=usage,
                cost_usd=format(cost, "f"),
                finish_reason=reply.finish_reason,
                tool_calls_json=reply.tool_calls_json,
                logprobs_json=reply.logprobs_json,
            )
            answered = router_pb2.CollectedLine(request_id=request_id, succeeded=True, response=response)
            if pending is not None:
                record = self._record(pending, response, "ok")
                return await self._charge(account, pending, to_pico(cost), record, answered, counts)
            return answered
        if result is None and status != "failed":  # it ran, or may have: unknown, so its worst case
            why = f"no result from the provider batch ({status})"
            return await self._owe_hold(account, pending, request_id, why, counts)
        error = result.error if result is not None else "the provider batch failed before running"
        error = f"{error} (request id {request_id})"
        failed = router_pb2.CollectedLine(request_id=request_id, error=error, charged_usd="0")
        if pending is not None:  # the provider bills none of it: released, on record at nothing
            record = _unanswered(pending, "0", "batch_failed", error)
            return await self._charge(account, pending, 0, record, failed, counts)
        return failed

    async def _as_charged(
        self,
        account: Account,
        request_id: str,
        line: router_pb2.CollectedLine,
        counts: list[UncountedCharge],
        at_admitted_prices: bool = False,
    ) -> router_pb2.CollectedLine:
        """A line settled before, reported at what the ledger charged it, which its outcome read again may not say: the
        hold it was charged when that outcome was unknown, or its batch given up on, or its hold lapsed, was told as 0,
        or as the answer's own cost. Told pending when its charged marker does not say (a router of the version before
        charged it): no amount, rather than one the ledger may not hold. Its charge is counted by this collect when it
        is counted nowhere yet: the reply to the collect that made it was lost (`counts`, taken by any charge id at the
        collect's end)."""
        counts.append(UncountedCharge(account, request_id))
        pico = await self.store.charged_pico(account, request_id)
        if pico is None:
            line.cost_pending, line.charged_usd = True, ""
            if line.succeeded:
                line.response.cost_pending, line.response.cost_usd = True, ""
            return line
        charged = format(Decimal(pico) / PICO, "f")
        # An answer is told at that charge whatever its usage costs now: read again, it is priced at today's prices,
        # not those it was admitted at, so a cost past the charge may be a price rise, not a report past its hold.
        if line.succeeded and not at_admitted_prices:
            line.response.cost_usd = charged
        elif line.succeeded and _told_as(line) != pico:
            # Read at the prices the line was admitted at, yet charged otherwise: that charge was made without this
            # answer (its hold, by the reconciler or a collect that gave up), and the ledger says so. Told as the
            # ledger has it, an outcome unknown at that charge, not as an answer the ledger never charged.
            line = router_pb2.CollectedLine(
                request_id=request_id, error=CHARGED_UNANSWERED.format(request_id), charged_usd=charged
            )
        elif not line.succeeded:
            line.charged_usd = charged
        return line

    async def _pending_line(self, account: Account, request_id: str) -> Pending | None:
        """The request's pending charge when it is the account's own: request ids are per tenant, and another key of the
        tenant must neither read that request's answer or model nor have it settled (at its hold, near its window's
        end). Such a request is no line of this account: not pending, and never charged to it (charged_batch)."""
        pending = await self.store.pending_charge(account, request_id)
        return pending if pending is None or pending.key == account.key else None

    async def _owe_hold(
        self,
        account: Account,
        pending: Pending | None,
        request_id: str,
        why: str,
        counts: list[UncountedCharge],
        reported: Decimal | None = None,
        past_max_tokens: bool = False,
    ) -> router_pb2.CollectedLine:
        """The line charged its hold; or, when a collect before read its answer from this batch and kept it (its charge
        never landed), charged that answer. `reported`: the cost of a report past the hold, capped by the charge (its
        output at most max_tokens: `past_max_tokens` when the report's was past it)."""
        if pending is None:
            return router_pb2.CollectedLine(request_id=request_id, error=why, charged_usd="0")
        held_account, _ = pending.account_and_hold()
        # Only a line with its batch recorded: one with none is settled from no batch's results, and what is kept under
        # none ('') is another line's (a line of the version before keeps its answer so), its request id used again.
        batch = pending.provider_batch
        kept = await self._kept(held_account, request_id, batch) if batch else None
        if kept is not None and kept.succeeded:
            # A collect read its answer from this batch and kept it, but its charge never landed (it failed): the line
            # is charged that answer, as read (at its admitted prices), not its hold as an outcome unknown, which the
            # kept answer, told by a later collect, would contradict.
            record = self._record(pending, kept.response, "ok")
            return await self._charge(account, pending, _told_as(kept), record, kept, counts)
        charged = format(Decimal(pending.hold_pico) / PICO, "f")
        line = router_pb2.CollectedLine(request_id=request_id, error=why, charged_usd=charged)
        record = _unanswered(pending, charged, "batch_unknown", why)
        if reported is not None:  # on record, so whichever router counts the charge counts it capped (count_charge)
            record[REPORTED] = format(reported, "f")
        if past_max_tokens:  # and its output past max_tokens
            record[PAST_MAX_TOKENS] = True
        return await self._charge(account, pending, pending.hold_pico, record, line, counts)

    async def _charge(
        self,
        account: Account,
        pending: Pending,
        pico: int,
        record: dict[str, Any],
        line: router_pb2.CollectedLine,
        counts: list[UncountedCharge],
    ) -> router_pb2.CollectedLine:
        """`line`, charged only while its pending charge (read before) is still open: one settled meanwhile (by another
        collect, or by the reconciler as its hold lapsed) is never charged again, even once its charged marker
        (kept for the request id TTL, which may be shorter than the hold) has expired, and is told at that charge.
        Counted in the metrics once, by the router that takes its count (Store.count_once_each): this collect, at its
        end (`counts`), once its charge returns; else, its reply lost (this collect fails, and its caller collects
        again), a later collect of the line (_as_charged), or the reconciler's sweep. A capped charge is counted capped
        by that one, from its record (_owe_hold)."""
        held_account, hold = pending.account_and_hold()
        unkept = await self._keep(held_account, hold.request_id, pending.provider_batch or "", line)
        charge_id = secrets.token_hex(8)  # this charge: its count is this collect's to take
        if await self.store.charge(held_account, hold, pico, record, late=True, charge_id=charge_id):
            # Another router may take it first (a collect of the line that found it charged, the sweep): counted there.
            counts.append(UncountedCharge(held_account, hold.request_id, charge_id))
            if unkept is not None:
                await self._keep_over(held_account, hold.request_id, unkept)
            return line
        log.warning("batch line charged before; not charged again", extra={"request_id": hold.request_id})
        if not line.succeeded and pending.provider_batch:
            # No answer read here, the line charged meanwhile: by another collect that read its answer, told as kept.
            told = await self._settled_before(account, hold.request_id, pending.provider_batch, line, counts)
            if told is not None:
                return told
        # An answer read while the line was pending is priced at its admitted prices, when it has them (_outcome).
        priced = pending.prices is not None
        return await self._as_charged(account, hold.request_id, line, counts, at_admitted_prices=priced)

    async def _keep(
        self, account: Account, request_id: str, batch_id: str, line: router_pb2.CollectedLine
    ) -> bytes | None:
        """The line as this collect tells it, kept before its charge (self.kept: how long, how large) under the batch
        it was read from: a charge whose reply is lost leaves it to the next collect (_kept). One too large is not kept:
        a later collect reads it from the provider, or tells it unread. The line as kept when another collect's line of
        the batch was kept first (Store.keep_answer), for this one to keep over it should its charge be the one that
        lands (_keep_over)."""
        # Compressed off the loop when long: a line of megabytes held every tenant's calls for a tenth of a second and
        # more.
        long = line.ByteSize() > KEEP_OFF_LOOP_BYTES
        most = self.kept.most_bytes
        kept = await asyncio.to_thread(kept_line, batch_id, line, most) if long else kept_line(batch_id, line, most)
        if kept is None:
            log.warning("batch line's answer too large to keep", extra={"request_id": request_id})
            return None
        return None if await self.store.keep_answer(account, request_id, kept, self.kept.kept_s) else kept

    async def _keep_over(self, account: Account, request_id: str, kept: bytes) -> None:
        """The line whose charge landed kept over the one another collect kept first and whose charge was refused (two
        collects at once: one giving the batch up at its hold, the other reading its answer): else a collect whose reply
        was lost left the line charged told without the answer charged. Not kept (the store out of reach): this reply
        still tells it."""
        try:
            await self.store.keep_answer(account, request_id, kept, self.kept.kept_s, replace=True)
        except StoreUnavailable:
            log.warning("batch line charged not kept over another collect's", extra={"request_id": request_id})

    async def _kept(self, account: Account, request_id: str, batch_id: str) -> router_pb2.CollectedLine | None:
        """The line as the collect that settled it from `batch_id` told it, while kept."""
        kept = await self.store.kept_answer(account, request_id)
        return None if kept is None else told_line(kept, batch_id)

    def _record(self, pending: Pending, response: router_pb2.CompleteResponse, outcome: str) -> dict[str, Any]:
        baseline_model = self.baseline()
        usage = response.usage
        # The line's tokens at the baseline model's realtime prices, its cached input at its cached price.
        baseline = baseline_model.usage_cost_usd(usage) if baseline_model else response.cost_usd
        record = pending.ledger_record(
            model=response.model,
            provider=response.provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            # Only an output reported past the line's max_tokens, charged max_tokens, is (_charged_usage).
            tokens_estimated=usage.estimated,
            cost_usd=response.cost_usd,
            # What an auditor checks cost_usd against: one generation, its tokens at the model's batch prices (every
            # record of reason 'batch' is priced so), nothing owed.
            generations=[generation_entry(response.model, usage)],
            owed_usd="0",
            baseline_cost_usd=format(Decimal(baseline), "f"),
            reason="batch",
            reason_detail="served by the provider's Batch API at its batch price",
            outcome=outcome,
            admitted_ts=pending.ts,
        )
        if usage.estimated:  # on record, so whichever router counts the charge counts it (count_charge)
            record[PAST_MAX_TOKENS] = True
        return record


def kept_line(batch_id: str, line: router_pb2.CollectedLine, most_bytes: int = ANSWER_KEPT_BYTES) -> bytes | None:
    """A line as kept (Store.keep_answer): the batch it was read from, a newline, the line compressed, never its
    log-probabilities; None when over `most_bytes`. Log-probabilities are ~25x the answer's text (20 top
    log-probabilities a token): kept, a tenant's day of cheap batch lines would fill the money Redis every tenant's
    charges need, for an answer told only when a collect's reply was lost."""
    packed = batch_id.encode() + b"\n" + zlib.compress(_without_logprobs(line).SerializeToString())
    return packed if len(packed) <= most_bytes else None


def told_line(kept: bytes, batch_id: str) -> router_pb2.CollectedLine | None:
    """The line kept_line kept, when it was read from `batch_id` (and can be read: else None, as if not kept)."""
    kept_from, _, packed = kept.partition(b"\n")
    if kept_from != batch_id.encode():
        return None
    try:
        return router_pb2.CollectedLine.FromString(zlib.decompress(packed))
    except (zlib.error, DecodeError):
        log.warning("a kept batch line's answer could not be read: told without it")
        return None


def _told_as(line: router_pb2.CollectedLine) -> int:
    """What a line as a collect told it says it is charged (pico-USD): its answer's cost, else its charge."""
    return to_pico(Decimal(line.response.cost_usd if line.succeeded else line.charged_usd or "0"))


def _without_logprobs(line: router_pb2.CollectedLine) -> router_pb2.CollectedLine:
    lighter = router_pb2.CollectedLine()
    lighter.CopyFrom(line)
    lighter.response.ClearField("logprobs_json")
    return lighter


def _charged_usage(reported: common_pb2.Usage, pending: Pending | None, model: ModelSpec) -> common_pb2.Usage:
    """The usage a line's answer is charged: as the provider reported it, its output never past the max_tokens the line
    was sent (output_charged, as a realtime answer's), flagged estimated when past it (on record, PAST_MAX_TOKENS, to
    be counted once with its charge: capped_charges.count_charge). A line whose max_tokens is not on record (admitted
    by a router of the version before) is charged its report as it stands, within its hold; one settled before, only
    reported, is told with the usage it was charged for when kept (_settled_before)."""
    output, past = output_charged(reported.output_tokens, pending.max_tokens if pending is not None else None)
    if past and pending is not None:
        log.warning(
            "batch line's output reported past its max_tokens; charged max_tokens",
            extra={
                "request_id": pending.request_id,
                "model": model.name,
                "reported_output_tokens": reported.output_tokens,
                "max_tokens": output,
            },
        )
    return common_pb2.Usage(
        input_tokens=reported.input_tokens,
        output_tokens=output,
        cached_input_tokens=reported.cached_input_tokens,
        cache_write_input_tokens=reported.cache_write_input_tokens,
        estimated=past,
    )


def _unanswered(pending: Pending, cost_usd: str, outcome: str, why: str) -> dict[str, Any]:
    """The ledger record of a line settled without an answer: failed (at nothing), or unknown (at its hold). No
    generation is on record: what it costs is owed whole (its worst case for an unknown outcome)."""
    return pending.ledger_record(
        cost_usd=cost_usd,
        generations=[],
        owed_usd=cost_usd,
        model=pending.model or "",  # none recorded for a line of the version before
        reason="batch",
        outcome=outcome,
        error=why,
    )


def _refuse_another_model(pending: dict[str, Pending | None], model: str) -> None:
    """A collect naming another model than a line still pending was admitted and sent for is refused, whole, before
    the provider is asked: the line is priced at its own model's batch price, and the model named picks the
    provider's Batch API that is asked. Lines with no model recorded (admitted by a router of the version before)
    are collected with the model named, as that version did. A request that is no line (its model recorded too) is
    left to the collect, which refuses it as no line."""
    for request_id, line in pending.items():
        if line is not None and line.until and line.model is not None and line.model != model:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_REQUEST",
                f"request {request_id!r} was sent for model {line.model!r}, not {model!r}: collect it naming that "
                "model",
                {"field": "model", "request_id": request_id, "model": line.model},
            )


def _admitted_with_prices(pending: dict[str, Pending | None]) -> bool:
    """Whether the lines still pending (one at least) were all admitted with their prices recorded: their collect
    charges them at those (Deferred._settle), whatever the registry says of the model's batch price by then."""
    lines = [line for line in pending.values() if line is not None]
    return bool(lines) and all(line.prices is not None for line in lines)


def _no_line(request_id: str, batch_id: str) -> router_pb2.CollectedLine:
    error = f"no line of this account in provider batch {batch_id!r} (request id {request_id})"
    return router_pb2.CollectedLine(request_id=request_id, error=error, charged_usd="0")


def _of_another_batch(pending: Pending | None, request_id: str, batch_id: str) -> router_pb2.CollectedLine | None:
    """A pending line recorded as sent in another batch than `batch_id`, reported and left unsettled: its hold stays
    for its own batch's collect, or for the reconciler when it lapses. None for a line of this batch, one with no
    batch recorded (settled as the version before did), or one no longer pending."""
    if pending is None or pending.provider_batch in (batch_id, "", None):
        return None
    error = f"request {request_id!r} was sent in another provider batch than {batch_id!r}: it is settled from that one"
    return router_pb2.CollectedLine(request_id=request_id, error=error, charged_usd="0")


def _unread(err: grpc.RpcError) -> ServiceError:
    """A poll that failed, for the collect's caller to try again: the providers' own refusal as they gave it; a batch
    no poll will read (BATCH_UNREADABLE) told to be collected again near its lines' window's end; a provider's failure
    with its code and reason, in fixed words (not the provider's); a call that broke on the way (no ErrorInfo) as
    UNAVAILABLE, without gRPC's text, which names the providers' address."""
    error = ServiceError.from_rpc_error(err)
    if error.explained and error.metadata.get("field") == "batch_id":  # PollBatch's name for the caller's field
        said = error.message.replace("batch_id", "provider_batch_id", 1)
        return ServiceError(error.code, error.reason, said, {**error.metadata, "field": "provider_batch_id"})
    if error.explained and error.reason == "BATCH_UNREADABLE":  # only the window's end settles its lines
        return ServiceError(error.code, error.reason, UNREADABLE)
    if error.explained and error.reason not in UPSTREAM_REASONS:
        return error
    # A provider's failure (a providers service of the version before quoted its error body) told in fixed words.
    log.warning("provider batch not read", extra={"reason": error.reason, "error": error.message})
    code = error.code if error.explained else grpc.StatusCode.UNAVAILABLE
    reason = error.reason if error.explained else "UPSTREAM_UNAVAILABLE"
    return ServiceError(code, reason, UNREAD, error.metadata if error.explained else None)


def _being_sent(request_id: str, admitted: float) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        "BATCH_BEING_SENT",
        f"request id {request_id!r} may still be in its provider batch's creation: ask again later",
        {"retry_after_s": str(math.ceil(max(1.0, admitted + SENDING_S - money_now())))},
    )


def _line_ids(lines: list[router_pb2.CompleteRequest]) -> list[str]:
    ids = [line.request_id for line in lines]
    if not 0 < len(lines) <= MAX_LINES:
        raise invalid(f"send 1 to {MAX_LINES} lines at a time", "lines")
    if not all(ids) or len(set(ids)) != len(ids):
        raise invalid("every line needs its own request_id", "lines")
    return ids


def _left_held(routed: Routed, failure: Exception) -> router_pb2.DeferredLine:
    """A line whose admission may have left its hold standing (Admission.admit: Routed.unanswered_hold_pico), answered
    as Complete answers such a request: its charge pending, at most that hold (the reconciler charges it as it lapses,
    or nothing when the store never took it). Deferred, so that its caller never sends it again (to Complete, run a
    second time, or refused as a duplicate whose charge stays open a day), nor counts it free."""
    log.error("batch line not sent: its hold may stand", exc_info=failure, extra={"request_id": routed.request_id})
    why = failure.message if isinstance(failure, ServiceError) else "an unexpected failure in the router"
    return router_pb2.DeferredLine(
        request_id=routed.request_id,
        deferred=True,
        model=routed.plan.order[0].model.name,
        error=LEFT_HELD.format(routed.request_id, why),
        held_usd=_usd(routed.unanswered_hold_pico),
        cost_pending=True,
    )


def _held_usd(routed: Routed) -> str:
    assert routed.hold is not None  # every deferred line was admitted
    return _usd(routed.hold.pico)


def _usd(pico: int) -> str:
    return format(Decimal(pico) / PICO, "f")
