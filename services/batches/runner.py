"""Running batches: the lines the router defers go to the providers' Batch APIs (deferral.py); every other line
is a chat completion sent to the router like any request (same policy, budgets and ledger), as the batch's tenant
and key, with request id `<batch id>:<custom_id>`, at most EDGE_BATCH_CONCURRENCY lines at a time across the
edge's batches, and at most EDGE_BATCH_MAX_RUNNING batches at a time, each holding its input file (wire.Lines: the
bytes and where each line is, a line parsed as it is sent; one that cannot be is its own error, unparsed.py); the
others wait in the store's active set, but one past its window, or cancelled, runs without a place (one such at a
time), so that it ends on time, `expired`, or at once, `cancelled` (a cancelled batch with no line at a provider ends
without reading its input file). An edge runs only the batches of keys it serves (Runner._may_run): a revoked key's
batch sends nothing more, one running as its key is revoked (the key file reloaded) no new line.

Each line's result is written once to the store, so a restarted edge resumes a batch where it stopped. A line the
router never admitted (the router unreachable or restarting, the money store down, a rate limit) is retried with the
same request id, its batch parked until the router's retry time (pending.py) so that its lines hold no slot
meanwhile; a park of PARK_LEAVE_S or more (a rate limit's next window) ends the run, its input file dropped, its
running place and its lease given up, with its time to run again in the batch's hash (parked_until, seen by every
edge's adoption); any other failure is the line's error (the error file). A run that finds the router out of reach
as it offers the batch's lines (deferral.py) ends too, parked for a second, doubled each time in a row up to an
adoption pass, never past its window's end (Store.back_off); one the router refused at its limit of calls in flight
(OVERLOADED), for the delay the router asked for (within OVERLOADED_LEAST_S and OVERLOADED_MOST_S). A run that
fails (raises) parks its batch too, for a time that doubles with each failure in a row (counted in the batch's
hash), but not past its window's end, and its first failure past that end is run again at once: that run sends no
new line (it needs no router but for lines in doubt or in provider batches), so it ends the batch `expired` on time
unless it fails too. Stopping the edge
(from the start of its shutdown, while its requests drain: Runner.stop) takes no batch and no line any more, lets the
lines in flight finish and gives up its batches' leases; a crash loses the results of lines in flight, whose retry the
router then refuses as a duplicate (charged once, in the ledger; the error file has that charge, counted once in the
batch's cost). While that charge is still open (the first attempt still running, or its router dead and the reconciler
not yet past), the refusal says it is pending at its hold: the line is asked again, its batch parked meanwhile as for a
line not admitted (CHARGE_OPEN_RETRY_S), until the router says what it charged. Not past its batch's window or a
cancel: the line is sent once more then (as any line in doubt), and if its charge is still open it is written as the
refusal says, a 409 whose x_router has cost_pending: true and held_usd (the most it is charged) but no cost_usd,
counted at 0 in the batch's cost: the ledger has its charge under its request id.
Such a line, sent and without a result, is in doubt: it goes first when the batch resumes, even past its window or
cancelled (sent before, only the router knows whether it ran: a cancel lets the lines in flight finish), and is never
reported as never sent, nor left out of a cancelled batch's files. An edge ending a
batch of a key it does not serve does not send it again: it goes to the error file as `outcome_unknown`, expired or
cancelled.

A batch expires at its expires_at (EDGE_BATCH_WINDOW_S after its creation, both by the store's clock, Store.clock:
edges whose clocks disagree end it at the same time), as OpenAI's do: no line is sent or offered after it; the lines
in flight finish and are recorded; the lines never sent go to the error file as `batch_expired` (failed in
request_counts); not those of an offer whose reply was lost, which the router is asked about (Deferral.recover), as a
cancelled batch's are. The lines in provider batches were sent: they finish within their
provider's window, bounded by the router's hold on them, and are collected as ever, so a charged line keeps its
answer; the batch then ends `expired` (or `completed`, when every line was sent in time). A batch whose input file
is gone from the store ends `failed`, with OpenAI's `errors` and the files of the lines that finished."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Gauge

from llmrouter.errors import ServiceError
from llmrouter.tasks import stop as stop_task
from llmrouter.v1 import router_pb2_grpc
from services.batches import output_files, results, unparsed, wire
from services.batches.deferral import HELD_UNANSWERED, OFFER_IN_DOUBT, Deferral, Unreached, without_large_logprobs
from services.batches.pending import Pending
from services.batches.quota import PAST_QUOTA_DETAILS, count_output, counted_bytes
from services.batches.router_refusals import admitted_nothing, seconds
from services.batches.store import (
    ENDED,
    Store,
    batch_key,
    deferred_key,
    delete_if_unread,
    file_key,
    readers_key,
    results_key,
    sent_key,
    stamp,
)
from services.edge.off_loop import parse_off_loop
from services.edge.openai_api import ApiError, check_encoded_size, completion_body, parse_request

log = logging.getLogger("llmrouter.edge.batches")

RUNNING = Gauge("llmrouter_edge_batches_running", "Batches this edge is running")

LEASE_S = 30  # an edge that stops renewing (crashed) loses its batches to another within this
STOP_CHECK_S = 0.1  # a parked batch of a stopping edge, or one that lost its lease, leaves within this
CANCEL_CHECK_S = 1.0  # and a parked batch cancelled, perhaps through another edge, ends within this
# A park this long ends the run: parked for a rate limit's window (up to MAX_PARK_S, again and again), it held its
# place and input file, and one tenant's batches kept every other tenant's waiting. Shorter parks keep the run, so
# that a backoff's quick retries do not read the input file again each time.
PARK_LEAVE_S = 5.0
# A run that fails (raises) parks its batch this long, doubled with each failure in a row up to FAILED_MOST_S, for
# every edge: retried at each adoption pass (LEASE_S / 2), a batch whose run always fails kept failing.
FAILED_FIRST_S = float(LEASE_S)
FAILED_MOST_S = 600.0
# A run whose lines could not be offered (the router out of reach, deferral.py) ends, parking its batch this long,
# doubled each time in a row up to UNREACHED_MOST_S, for every edge (Store.back_off, its own count): a router
# restarting is back within seconds, and was waited for up to an adoption pass (LEASE_S / 2); one down for long is
# tried as often as before, by one edge, not by each at its own pass.
UNREACHED_FIRST_S = 1.0
UNREACHED_MOST_S = LEASE_S / 2
UNREACHED = "unreached"  # the batch's hash field counting them
# A run whose offer the router refused at its limit of calls in flight (OVERLOADED) ends too, parking its batch for the
# delay the router asked for, at least OVERLOADED_LEAST_S (a delay of 0 would run it again at once, again and again)
# and at most OVERLOADED_MOST_S (an adoption pass, as long as a router out of reach is waited for): the router answered,
# so it is not counted as out of reach (that back-off starts again), but in its own field.
OVERLOADED_LEAST_S = 1.0
OVERLOADED_MOST_S = LEASE_S / 2
OVERLOADED = "overloaded"  # the batch's hash field counting them, in a row
# A resent line whose first attempt's charge is open is asked again after this at least (the park's backoff grows from
# there): the charge lands when that attempt ends (a completion's seconds), or when the reconciler settles a dead
# router's hold (its heartbeat TTL, 15 s by default). Each ask is routed and refused: no provider call, no charge.
CHARGE_OPEN_RETRY_S = 1.0

ErrorFor = Callable[[grpc.RpcError, str], ApiError]
Serves = Callable[[str, str], bool]  # (tenant, key id) -> whether this edge serves them

SENT, REFUSED = b"sent", b"refused"  # a line's mark in sent_key: sent to the router; not admitted by it
FINISHING = ("validating", "in_progress", "finalizing")  # it ends `completed` from these (finalizing: run again)
KINDS = (("output", True), ("error", False))  # a batch's files, and whether their lines are answers
MISSING_INPUT = ("input_file_missing", "The batch's input file is no longer stored, so its lines cannot be run.")


@dataclass(frozen=True)
class Refused:
    """The router did not admit a line for now; retry_after_s: when it said to try again, if it did. `maybe`: or
    did it, and died mid-call without answering (ServiceError.cut_mid_call). `counted`: refused for its budget, the
    call counted against its tenant's requests per minute all the same (the lines after it then go one at a time)."""

    retry_after_s: float | None
    maybe: bool = False
    counted: bool = False


@dataclass(frozen=True)
class ChargeOpen:
    """The router refused the line as a duplicate whose first attempt's charge is still open (held, not yet settled):
    (status, body), the refusal as the line's result would have it, pending at its hold."""

    status: int
    body: dict[str, Any]


class Runner:
    def __init__(
        self,
        store: Store,
        router: router_pb2_grpc.RouterStub,
        error_for: ErrorFor,
        serves: Serves,
        concurrency: int,
        timeout_s: float,
        retention_s: int,
        poll_s: float = 60.0,
        max_running: int = 4,
        max_file_bytes: int = 100 * 1024 * 1024,
        tenant_file_bytes: int | None = None,
        max_running_per_tenant: int | None = None,
    ) -> None:
        self.store = store
        self.tenant_file_bytes = tenant_file_bytes  # the file quota an output is counted against, never refused by
        # Each batch running holds its input file's content: past max_running the others stay in the store's
        # active set, run by another edge, or here once a batch running here ends.
        self.max_running = max_running
        # One tenant's at most (None: all of them): a batch keeps its place until it ends, so a tenant with as many long
        # batches as there are places held them all, for hours, and another tenant's batch waited past its window.
        self.max_running_per_tenant = max_running if max_running_per_tenant is None else max_running_per_tenant
        self._tenant_of: dict[str, str] = {}  # the tenant of each batch run here, when its starter knew it
        # Batches whose run ended them or parked them (not one that stopped, to resume later): their place is free.
        self._ended_here: set[str] = set()
        # Runs only waiting for their provider batches (up to the provider's 24 h): their input file dropped, they
        # take no place, or batches created meanwhile would wait that long and expire unsent.
        self._collecting: set[str] = set()
        # A batch past its window started while every place was taken (one at a time): its run sends no new line, so
        # it is short, but holds the input file too (deploy/README.md, "Edge memory": the +3). It runs as any
        # expiring run does: its lines in doubt are sent again and its deferred lines collected, each settled as the
        # ledger has it.
        self._expiring: set[str] = set()
        self._freed = asyncio.Event()
        self.max_file_bytes = max_file_bytes  # a line's answer keeps log-probabilities up to its share of it
        # The lines sent through the providers' Batch APIs.
        self.deferral = Deferral(store, router, poll_s, max_file_bytes)
        self.owner = uuid.uuid4().hex  # this edge, in batch leases
        self.retention_s = retention_s
        self.router = router
        self.error_for = error_for  # the edge's mapping of a router error to OpenAI's status and body
        self.serves = serves  # whether this edge serves a batch's tenant and key id (its key file has the key)
        self.slots = asyncio.Semaphore(concurrency)
        self.timeout_s = timeout_s
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._leasing: str | None = None  # the batch whose lease the adoption is taking, until it runs or is given up

    async def resume(self) -> None:
        """Run the batches still active in the store that no other edge runs (a stopped or crashed edge
        left them unfinished), now and then every LEASE_S / 2, so another edge's batches outlive it."""
        wake_s = await self._adopt()
        self._watch = asyncio.create_task(self._keep_adopting(wake_s))

    async def _adopt(self) -> float:
        """Start the batches that may run, as places allow; returns when to look again (a parked batch's time)."""
        active = list(await self.store.active())
        random.shuffle(active)  # past max_running, the same few do not always go first
        names = ["status", "tenant", "key_id", "failures", OFFER_IN_DOUBT]
        states = await self.store.fields([batch_key(b) for b in active], names)
        parked = await self.store.parked_s(active)
        windows_left = await self.store.window_left_s(active)  # by the store's clock, not this edge's
        wake_s = LEASE_S / 2
        for batch_id, state, parked_s, left_s in zip(active, states, parked, windows_left, strict=True):
            if self.stopping:
                break
            if batch_id in self.runs or not self._may_run(state, left_s <= 0):
                continue
            if parked_s > 0 and _waits_parked(state):
                wake_s = min(wake_s, parked_s)
                continue
            # Past its window, a batch that finds no place still ends on time, `expired`; cancelled, it ends at once,
            # `cancelled`, as OpenAI's do, not after the batches running (_expiring).
            ending = "tenant" in state and (left_s <= 0 or state.get("status") == b"cancelling")
            tenant = state["tenant"].decode() if "tenant" in state else None
            # Its tenant's places here all taken: one of them ending frees one (_ended wakes the adoption).
            tenant_full = tenant is not None and self._tenant_full(tenant)
            if (self._full() or tenant_full) and not (ending and not self._expiring):
                if "tenant" in state and not ending:  # it expires then: looked at again at that time
                    wake_s = min(wake_s, left_s)
                continue
            # Only batches no other edge runs run here (its run renews the lease taken now).
            self._leasing = batch_id
            if await self.store.lease(batch_id, self.owner, LEASE_S):
                if (parked_s := await self._parked_now(batch_id)) > 0:
                    await self._give_back(batch_id)
                    wake_s = min(wake_s, parked_s)
                    self._leasing = None
                    continue
                placeless = self._full() or (tenant is not None and self._tenant_full(tenant))
                if placeless and not ending and batch_id not in self.runs:
                    # Its place taken while the lease came back (a batch created or cancelled here started): it waits,
                    # as above; run without a place, it sent lines past the caps and held the slot of a batch ending.
                    await self._give_back(batch_id)
                    wake_s = min(wake_s, left_s)
                    self._leasing = None
                    continue
                self.start(batch_id, expiring=placeless, tenant=tenant)
                if batch_id not in self.runs:  # the edge began stopping meanwhile: the batch is any edge's again
                    await self.store.release(batch_id, self.owner)
            self._leasing = None
        return wake_s

    async def _give_back(self, batch_id: str) -> None:
        """The adoption's lease given back, unless the batch was started here meanwhile (a cancel, api.py): its run
        holds that lease, this edge's. One started as the give-back was on its way, its run's lease landing first,
        takes it again: given back under the run, another edge's adoption ran the batch beside it until the run's
        renewal found the lease lost."""
        if batch_id in self.runs:
            return
        await self.store.release(batch_id, self.owner)
        if batch_id in self.runs:
            await self.store.lease(batch_id, self.owner, LEASE_S)

    async def _parked_now(self, batch_id: str) -> float:
        """How long the batch, just leased, must still wait, as it stands now: its state and park were read before the
        lease, and a run ending meanwhile (here, or on another edge, its lease then free) may have parked it since. Run
        on that stale read, a batch backing off from a router out of reach asked it again at once."""
        (state,) = await self.store.fields([batch_key(batch_id)], ["status", "failures", OFFER_IN_DOUBT])
        (parked_s,) = await self.store.parked_s([batch_id])
        return parked_s if parked_s > 0 and _waits_parked(state) else 0.0

    def _may_run(self, batch: dict[str, bytes], past_window: bool) -> bool:
        """A batch whose key this edge does not serve (revoked, or not yet given to this edge in a rolling change of
        keys) sends no line from here: it is left to an edge that serves it. Once cancelled, or its window over,
        any edge may end it, which sends no line that was never sent."""
        if "tenant" not in batch or batch.get("status") == b"cancelling":
            return True  # gone from the store, or only to be ended: its run sorts that out
        return self._serves(batch) or past_window

    def _serves(self, batch: dict[str, bytes]) -> bool:
        return self.serves(batch["tenant"].decode(), batch.get("key_id", b"").decode())

    async def _keep_adopting(self, wake_s: float) -> None:
        while not self.stopping:
            try:
                async with asyncio.timeout(wake_s):
                    await self._freed.wait()
            except TimeoutError:
                pass
            self._freed.clear()
            if self.stopping:
                return
            try:
                wake_s = await self._adopt()
            except Exception:
                wake_s = LEASE_S / 2
                log.warning("batch store unreachable; will look for batches to resume again", exc_info=True)

    def start(self, batch_id: str, expiring: bool = False, tenant: str | None = None) -> None:
        """`expiring`: a batch past its window or cancelled, run without a place (_expiring). `tenant`: the batch's,
        when known, which holds at most max_running_per_tenant places here."""
        placed = not self._full() and (tenant is None or not self._tenant_full(tenant))
        if batch_id not in self.runs and not self.stopping and (expiring or placed):
            task = asyncio.create_task(self._run(batch_id))
            self.runs[batch_id] = task
            if tenant is not None:
                self._tenant_of[batch_id] = tenant
            if expiring:
                self._expiring.add(batch_id)
            RUNNING.inc()
            task.add_done_callback(lambda _: self._ended(batch_id))
        elif not self.stopping and batch_id not in self.runs:  # waits for a place: the adoption wakes at its window's
            self._freed.set()  # end, ending it then if no place freed meanwhile

    def _full(self) -> bool:
        return len(self.runs) - len(self._collecting | self._expiring) >= self.max_running

    def _tenant_full(self, tenant: str) -> bool:
        placeless = self._collecting | self._expiring
        held = sum(1 for batch_id, of in self._tenant_of.items() if of == tenant and batch_id not in placeless)
        return held >= self.max_running_per_tenant

    def _ended(self, batch_id: str) -> None:
        self.runs.pop(batch_id, None)
        if self._tenant_of.pop(batch_id, None) is not None:  # its tenant's batch waiting for a place may start now
            self._freed.set()
        self._collecting.discard(batch_id)
        self._expiring.discard(batch_id)
        RUNNING.dec()
        if batch_id in self._ended_here:  # a batch waiting for a place starts now; one that failed, at its back-off
            self._ended_here.discard(batch_id)
            self._freed.set()

    def stop(self) -> None:
        """The edge's shutdown begins (its open requests drain before close()): from now on no batch is adopted or
        started here and no line sent, so none is taken up only to be given up moments later, its run held up or
        cut short; the batches running here end as their lines in flight finish, their leases given up to the
        other edges."""
        self.stopping = True
        self._freed.set()  # the adoption loop wakes, and ends

    async def close(self) -> None:
        """Take no more lines; let the lines in flight finish and record their results."""
        self.stop()
        if self._watch is not None:
            # Woken by stop(), it ends by itself (the shutdown began before the requests drained); or is cut short
            # here, perhaps in a lease call that landed unseen: given up then, not held until it lapses.
            await stop_task(self._watch)  # it reads the store, which can swallow one cancellation
            if self._leasing is not None and self._leasing not in self.runs:
                try:
                    await self.store.release(self._leasing, self.owner)
                except Exception:
                    log.warning("batch lease not released; it lapses", extra={"id": self._leasing}, exc_info=True)
        if self.runs:
            await asyncio.gather(*self.runs.values(), return_exceptions=True)

    async def _run(self, batch_id: str) -> None:
        if self.stopping:
            # Started as the shutdown began (the adoption, having leased it, moved on before this first step): the
            # lease it took is given up, so the other edges need not wait it out. Only this edge's: none is a no-op.
            try:
                await self.store.release(batch_id, self.owner)
            except Exception:
                log.warning("batch lease not released; it lapses", extra={"id": batch_id}, exc_info=True)
            return
        if not await self.store.lease(batch_id, self.owner, LEASE_S):
            return  # another edge runs it
        renewing = asyncio.create_task(self._renew(batch_id))
        batch: dict[str, bytes] = {}
        failed = False
        try:
            found = await self.store.get(batch_key(batch_id))
            # Its window's end on this edge's monotonic clock, from what it has left by the clock that stamped it (the
            # store's, Store.clock): this edge's own clock, off, expired it early or late, and a step of it moves this
            # not at all. One round trip per run, not one per line.
            window_ends = time.monotonic() + (await self.store.window_left_s([batch_id]))[0]

            def past_window() -> bool:
                return time.monotonic() >= window_ends

            if not self._may_run(found, past_window()):
                # Left to an edge that serves its key, having sent nothing: neither a failed run nor one that ran
                # without failing, its count of failures in a row is kept (`batch` left empty for _settle).
                return
            batch = found
            if batch.get("status") == b"validating":
                batch = await self._start_progress(batch_id, batch)
            if not batch:  # evicted from the store: nothing left to run or to report to
                await self.store.activate(batch_id, False)
                self._ended_here.add(batch_id)
                return
            if batch["status"] in ENDED:
                # Still active: its finish was interrupted past its status, or another edge's adoption read it active
                # just before its run ended it. Finished again as it ended: run on, a `cancelled` batch sent the lines
                # it never sent, and ended `completed`.
                await self._finish(batch_id, batch, batch["status"].decode())
                return
            cancelled_in_window = batch["status"] == b"cancelling" and not past_window()
            if (
                cancelled_in_window
                and OFFER_IN_DOUBT not in batch
                and not await self.deferral.recorded(batch_id)
                and not await self._any_in_doubt(batch_id)
            ):
                # No line goes out any more, nor is one at a provider to collect or in doubt to send again: it ends
                # now, without its input file (read, it took a place's memory; gone, it failed the batch).
                await self._finish(batch_id, batch, "cancelled")
                return
            content = await self.store.content(file_key(batch["input_file_id"].decode()))
            if content is None:  # evicted, or the store flushed: the batch cannot go on (and its run not crash)
                await self._finish(batch_id, batch, "failed", wire.batch_errors(*MISSING_INPUT, "input_file_id"))
                return
            lines = await wire.index_off_loop(content)  # validated at upload; each line parsed as it is sent
            done = await self.store.names(results_key(batch_id))
            served = self._serves(batch)

            def revoked() -> bool:
                """Its key taken out of the key file (reloaded) while it ran: it sends no new line from here, those in
                flight finishing, and is left to an edge that serves the key (or, cancelled or past its window, to a
                run that only ends it). Not a run that began on a key not served: that one is here to end the batch."""
                return served and not self._serves(batch)

            if batch["status"] == b"cancelling" or past_window():  # no line goes out any more
                deferred: dict[int, dict[str, str]] | Unreached = await self.deferral.recover(
                    batch_id, batch, lines, done
                )
            else:

                async def offering() -> bool:
                    stopped = self.stopping or renewing.done() or past_window() or revoked()
                    return not stopped and not await self._cancelling(batch_id)

                deferred = await self.deferral.offer(batch_id, batch, lines, done, offering)
            if isinstance(deferred, Unreached):  # resumed at its park's end
                await self._park_unreached(batch_id, batch, deferred)
                return
            for counter in (UNREACHED, OVERLOADED):
                if counter in batch:
                    await self.store.drop(batch_key(batch_id), counter)
            done = await self.store.names(results_key(batch_id))
            sent = await self.store.get(sent_key(batch_id))
            unfinished = [i for i in range(len(lines)) if str(i) not in done and i not in deferred]
            in_doubt = {i for i in unfinished if sent.get(str(i)) == SENT}
            # Holds of the batch's own that settle only after its other lines end (collected), or past its window.
            (held,) = await self.store.fields([batch_key(batch_id)], [HELD_UNANSWERED])
            holds_settle = not deferred and HELD_UNANSWERED not in held
            left_in_doubt: set[int] = set()
            if not served:
                # Here only to be ended (_may_run): a line in doubt is not sent again either, on a key this edge does
                # not serve (one that never reached the router would run, a revoked key spending). Its outcome is
                # left unknown: the ledger has it.
                left_in_doubt, in_doubt = in_doubt, set()
            pending = Pending(sorted(unfinished, key=lambda i: i not in in_doubt))
            expired = False
            # Cancelled, the lines in flight finish: those in doubt were, when their edge died, so they are sent again
            # (the router's answer is their result, as past the window), and no other line is sent.
            cancelled = batch["status"] == b"cancelling"
            checked = 0.0  # when a parked batch last looked for a cancel

            def ending() -> str:  # why the batch ends, as the run stands now ("" while it runs on)
                return "cancelled" if cancelled else "expired" if past_window() else ""

            async with asyncio.TaskGroup() as group:
                while (wait_s := pending.wait_s()) is not None:
                    # Stopping, the lease lost, or the key revoked: another edge resumes it.
                    if self.stopping or renewing.done() or revoked():
                        return
                    if past_window() and pending.keep(in_doubt):
                        expired = True  # the lines in flight finish (those refused meanwhile wait); no new one is sent
                    if cancelled:
                        pending.keep(in_doubt)  # and a line refused meanwhile, unless in doubt, is not sent again
                    # A cancelled run waits out its park here: resumed elsewhere, a cancelled batch runs again at once.
                    if wait_s >= PARK_LEAVE_S and pending.parked() and not pending.in_flight and not cancelled:
                        # Its place and input file go to other batches; any edge resumes it at its time (_adopt).
                        # Or until its window's end, when it ends sooner: it expires then.
                        left_s = window_ends - time.monotonic()
                        await self._park(batch_id, wait_s if left_s <= 0 else min(wait_s, left_s))
                        return
                    if wait_s > 0:  # parked, holding no slot; or only lines in flight are left
                        await pending.changed(min(wait_s, STOP_CHECK_S))
                        if not cancelled and pending.parked() and time.monotonic() - checked >= CANCEL_CHECK_S:
                            checked = time.monotonic()
                            cancelled = await self._cancelling(batch_id)
                        continue
                    await self.slots.acquire()
                    sending = False  # the slot goes to the line's task, which gives it back
                    try:
                        if past_window() and pending.keep(in_doubt):
                            expired = True
                        if pending.wait_s() == 0 and not cancelled and await self._cancelling(batch_id):
                            cancelled = True  # the lines in flight finish, those in doubt sent again; no other
                            pending.keep(in_doubt)
                        # parked, stopping, or expired or cancelled with nothing to send, while waiting for the slot
                        if pending.wait_s() != 0 or self.stopping or renewing.done() or revoked():
                            continue
                        index = pending.take()
                        line = self._line(batch_id, batch, index, lines, pending, in_doubt, ending, holds_settle)
                        group.create_task(line)
                        sending = True
                    finally:
                        if not sending:  # a store error too: a slot lost was lost for good, and once all were, no
                            self.slots.release()  # line was sent again nor the edge able to stop
            if expired:
                await self._expire(batch_id, lines, deferred, left_in_doubt)
            elif cancelled:  # its lines in doubt not sent again (a key not served here): of an unknown outcome
                for index in sorted(left_in_doubt):
                    custom_id = unparsed.custom_id(lines.raw(index))
                    await results.record_unknown(self.store, batch_id, index, custom_id, "cancelled")
            # The lines in provider batches finish too, cancelled, expired or not: they run at the provider, within
            # its own window, charged when collected; their answers are kept. Only their custom_ids are needed: the
            # input file is dropped and its place goes to a batch waiting for one.
            custom_ids = await asyncio.to_thread(_custom_ids, lines, deferred)
            del content, lines
            self._collecting.add(batch_id)
            self._expiring.discard(batch_id)  # input file dropped: its room goes to another expired batch
            self._freed.set()
            if not await self.deferral.collect(
                batch_id, batch, custom_ids, deferred, lambda: not (self.stopping or renewing.done())
            ):
                return
            expired = "expired_at" in await self.store.get(batch_key(batch_id))  # perhaps by an earlier run
            await self._finish(batch_id, batch, "cancelled" if cancelled else "expired" if expired else "completed")
        except Exception:
            failed = True
            log.exception("batch run failed; it stays active and is resumed", extra={"id": batch_id})
        finally:
            await stop_task(renewing)  # not left renewing the lease of a run that ended
            # Nor holding it: parked, or this edge stopping, the batch is any edge's to resume (at its time), not
            # only this one's until the lease lapses (LEASE_S).
            if await self._settle(batch_id, batch, failed):
                try:
                    await self.store.release(batch_id, self.owner)
                except Exception:
                    log.warning("batch lease not released; it lapses", extra={"id": batch_id}, exc_info=True)

    async def _start_progress(self, batch_id: str, batch: dict[str, bytes]) -> dict[str, bytes]:
        """The batch read `validating`, `in_progress` from now in one step only while still `validating`: moved on
        since it was read (failed as a retry took over its stalled creation, idempotent.py; or cancelled), it is not
        run as read but as it is now (a failed one ends, sending nothing). Its fields as they stand."""
        at = await self.store.advance(batch_id, ("validating",), "in_progress")
        if at is not None:
            return batch | {"status": b"in_progress", "in_progress_at": at.encode()}
        return await self.store.get(batch_key(batch_id))

    async def _settle(self, batch_id: str, batch: dict[str, bytes], failed: bool) -> bool:
        """A failed run's batch backs off; one that ran without failing starts its count again. False when the
        back-off could not be recorded: the lease is kept then, the batch left alone until it lapses."""
        try:
            if failed:
                until = await self.store.back_off(batch_id, FAILED_FIRST_S, FAILED_MOST_S)
                if until is not None:
                    log.warning("batch parked after its run failed", extra={"id": batch_id, "until": until})
                    # Parked: the adoption looks again at once, and so wakes at its time (perhaps its expires_at),
                    # not at its next pass, up to LEASE_S / 2 later.
                    self._ended_here.add(batch_id)
            elif "failures" in batch:
                await self.store.drop(batch_key(batch_id), "failures")
        except Exception:
            log.warning("batch run's outcome not recorded", extra={"id": batch_id}, exc_info=True)
            return not failed
        return True

    async def _park_unreached(self, batch_id: str, batch: dict[str, bytes], unreached: Unreached) -> None:
        """A batch whose lines the router did not take parked: for the delay it asked for when it refused them at its
        limit of calls in flight; else (out of reach) for a back-off doubled each time in a row."""
        if unreached.overloaded_s is None:
            until = await self.store.back_off(batch_id, UNREACHED_FIRST_S, UNREACHED_MOST_S, UNREACHED)
            log.warning("batch parked: the router is out of reach", extra={"id": batch_id, "until": until})
        else:
            wait_s = min(max(unreached.overloaded_s, OVERLOADED_LEAST_S), OVERLOADED_MOST_S)
            until = await self.store.back_off(batch_id, wait_s, wait_s, OVERLOADED)  # not doubled: the router's
            if UNREACHED in batch:
                await self.store.drop(batch_key(batch_id), UNREACHED)
            log.warning("batch parked: the router is overloaded", extra={"id": batch_id, "until": until})
        self._ended_here.add(batch_id)  # the adoption wakes at `until`; its place goes to a waiting batch

    async def _park(self, batch_id: str, wait_s: float) -> None:
        await self.store.park(batch_id, wait_s)
        self._ended_here.add(batch_id)  # a batch waiting for a place starts now; the adoption wakes at its time

    async def _renew(self, batch_id: str) -> None:
        """Keeps the lease while the batch runs; returns when it is lost (the run then stops taking lines)."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                if not await self.store.lease(batch_id, self.owner, LEASE_S):
                    log.warning("batch lease lost to another edge; stopping", extra={"id": batch_id})
                    return
            except Exception:
                log.warning("batch lease not renewed; stopping", extra={"id": batch_id}, exc_info=True)
                return

    async def _any_in_doubt(self, batch_id: str) -> bool:
        """Whether a line was sent without its result recorded (its edge died with it in flight)."""
        sent = await self.store.get(sent_key(batch_id))
        if SENT not in sent.values():
            return False
        done = await self.store.names(results_key(batch_id))
        return any(mark == SENT and index not in done for index, mark in sent.items())

    async def _cancelling(self, batch_id: str) -> bool:
        return (await self.store.get(batch_key(batch_id))).get("status") == b"cancelling"

    async def _line(
        self,
        batch_id: str,
        batch: dict[str, bytes],
        index: int,
        lines: wire.Lines,
        pending: Pending,
        in_doubt: set[int],
        ending: Callable[[], str],
        holds_settle: bool,
    ) -> None:
        """Send one line and record its result. `in_doubt`: the run's lines sent before that may have been admitted
        then (resent past the window: only the router knows). `ending`: why the batch ends ("expired", "cancelled"),
        or "" while it runs on; once it ends, a line whose charge is open is written pending rather than asked
        again. `holds_settle`: the batch has no lines at providers, nor any deferred unanswered (their holds stand until
        they lapse), so a line refused for the budget's holds in flight may wait for them (not_admitted), while the
        batch runs on."""
        try:
            # Parsed as the chat route parses a body: a large one off the event loop, which a line of megabytes of
            # tiny values held for seconds (a batch of three lines of 8 MB of empty arrays: over a minute).
            line = await parse_off_loop(lines.raw(index), unparsed.read)
            if isinstance(line, unparsed.Unparsed):  # not a run failing at it for ever: its own error, not sent
                if index in in_doubt:  # sent before, parsed then: it may have run, and been charged
                    await results.record_unknown(self.store, batch_id, index, line.custom_id, ending(), wire.UNPARSED)
                else:  # never reached the router: charged nothing
                    await results.record(self.store, batch_id, index, line.custom_id, 400, line.error.body())
                pending.finished()
                return
            custom_id = line["custom_id"]
            await self.store.put(sent_key(batch_id), {str(index): SENT})
            # Once the batch ends, a line is sent (again: in doubt) only for the router's answer: one refused for the
            # room in flight holds is never admitted, charged nothing, and is answered so, not waited for.
            may_wait = holds_settle and not ending()
            answered = await self._complete(batch, f"{batch_id}:{custom_id}", line["body"], may_wait)
            if isinstance(answered, Refused):
                if answered.maybe:  # perhaps admitted by a router that died mid-call: in doubt
                    in_doubt.add(index)
                elif index not in in_doubt:  # never admitted (a line in doubt stays so: sent before, maybe admitted)
                    await self.store.put(sent_key(batch_id), {str(index): REFUSED})
                pending.refused(index, answered.retry_after_s, answered.counted)  # it waits parked, holding no slot
                return
            if isinstance(answered, ChargeOpen):
                if not ending():
                    # Asked again until the router says what it charged, parked, holding no slot; in doubt, so that
                    # it is sent once more if the window ends or the batch is cancelled meanwhile.
                    in_doubt.add(index)
                    pending.refused(index, CHARGE_OPEN_RETRY_S)
                    return
                answered = answered.status, answered.body  # written pending, at its hold
            status, body = answered
            told = body.get("x_router", {})
            cost = told.get("cost_usd", "0")  # a failure's too: what its attempts were charged
            pending_cost = told.get("cost_pending") is True  # charged, by how much the ledger alone says
            await results.record(self.store, batch_id, index, custom_id, status, body, cost, pending_cost)
            pending.finished()
        finally:
            self.slots.release()

    async def _complete(
        self, batch: dict[str, bytes], request_id: str, body: Any, holds_settle: bool
    ) -> tuple[int, Any] | Refused | ChargeOpen:
        """(HTTP status, body) of one line, as POST /v1/chat/completions would answer it; Refused when the router
        did not admit it (nothing claimed, nothing charged): the line is sent again, with the same request id;
        ChargeOpen when it refused it as a duplicate whose charge is still open."""
        try:
            parsed, raw = await parse_off_loop(json.dumps(body).encode(), parse_request)
            if parsed.stream:
                raise ApiError(400, "a batch request cannot stream", param="stream", code="invalid_value")
            message = parsed.to_router(raw, batch["tenant"].decode(), "", request_id)
            message.api_key_id = batch["key_id"].decode()
            check_encoded_size(message)
        except ApiError as err:
            return err.status, err.body()
        try:
            response = await self.router.Complete(message, timeout=self.timeout_s)
        except grpc.RpcError as err:
            error = ServiceError.from_rpc_error(err)
            if not_admitted(error, holds_settle):
                retry_after_s = seconds(error.metadata.get("retry_after_s", ""))
                return Refused(retry_after_s, error.cut_mid_call, error.reason == "BUDGET_EXCEEDED")
            api_error = self.error_for(err, request_id)
            # Its body says what the failed line was charged (x_router), as the ledger does: a duplicate's, what the
            # line sent before was charged, or that its charge is still pending.
            if error.reason == "DUPLICATE_REQUEST" and error.metadata.get("held_usd"):
                return ChargeOpen(api_error.status, api_error.body())
            if error.reason == "DUPLICATE_REQUEST" and not error.metadata.get("charged_usd"):
                # This line's own id (the batch's in it), charged before at an amount the router cannot tell (its
                # charged marker says none): pending, not 0.
                api_error.cost_pending = True
            return api_error.status, api_error.body()
        return 200, completion_body(without_large_logprobs(response, wire.logprobs_room(batch, self.max_file_bytes)))

    async def _expire(
        self, batch_id: str, lines: wire.Lines, deferred: dict[int, dict[str, str]], in_doubt: set[int]
    ) -> None:
        """The window ended with lines unsent: they go to the error file as OpenAI writes them, and count as failed.
        Lines in doubt are not among them: sent again past the window, they have the router's answer; those not sent
        again (`in_doubt`: their key not served here) go to the error file as of an unknown outcome."""
        expired_at = await stamp(self.store, batch_key(batch_id))  # by the clock its expires_at is
        await self.store.put_once(batch_key(batch_id), "expired_at", expired_at.encode())  # when, kept if run again
        done = await self.store.names(results_key(batch_id))
        unsent = [i for i in range(len(lines)) if str(i) not in done and i not in deferred]
        # Up to every line parsed for its custom_id: off the event loop, as the file's check is.
        custom_ids = await asyncio.to_thread(lambda: [unparsed.custom_id(lines.raw(i)) for i in unsent])
        for index, custom_id in zip(unsent, custom_ids, strict=True):
            if index in in_doubt:
                await results.record_unknown(self.store, batch_id, index, custom_id, "expired")
            else:
                await results.record_expired(self.store, batch_id, index, custom_id)

    async def _finish(self, batch_id: str, batch: dict[str, bytes], status: str, errors: str | None = None) -> None:
        """The batch ends with `status` (completed, cancelled, expired or failed with `errors`) and the output and
        error files of the lines that finished, in input order; ids derived from the batch, so a finish interrupted
        and run again writes the same files (its status and the time it ended kept)."""
        again = batch["status"] == status.encode()
        if status == "completed" and not again:
            # Cancelled since its run last looked (its last lines in flight, or at providers): `cancelled`, as the
            # cancel answered (`cancelling`), with every line's result.
            finalizing = await self.store.advance(batch_id, FINISHING, "finalizing")
            status = "completed" if finalizing is not None else "cancelled"
        tenant = batch["tenant"].decode()
        fields: dict[str, str | bytes] = {"status": status}
        counted: dict[str, int] = {}  # output and error file id -> the bytes it counts
        ended = await stamp(self.store, batch_key(batch_id))  # by the clock of its created_at, as its files' are
        if status != "expired" and not again:  # an expired batch's expired_at: when it expired, not its last line
            fields[f"{status}_at"] = ended
        if errors is not None:
            fields["errors"] = errors
        # Each file written a part at a time as the results are read a part's worth at a time (output_files.py), not
        # joined whole: a batch's answers are bounded by no upload.
        writers = {ok: output_files.PartWriter(self.store, file_key(f"file-{batch_id}-{kind}")) for kind, ok in KINDS}
        finished = 0
        async for result in output_files.results(self.store, batch_id, int(batch["total"])):
            await writers[result["ok"]].write((result["line"] + "\n").encode())
            finished += 1
        for kind, ok in KINDS:
            writer = writers[ok]
            await writer.close()
            if writer.size:
                file_id = f"file-{batch_id}-{kind}"
                # Counted against the tenant's quota, never refused: its lines were served and charged, and this
                # write settles the batch. The tenant's uploads are refused while its outputs fill its quota; one
                # past it says so in its status_details.
                counted[file_id] = counted_bytes(writer.size)
                filename = f"{batch_id}_{kind}.jsonl"
                stored = output_files.stored_fields(tenant, filename, writer.size, writer.parts) | {"created_at": ended}
                if again:  # written, as its record was, by the finish cut: dated when that one ended, not now
                    stored |= (await self.store.fields([file_key(file_id)], ["created_at"]))[0]
                if await count_output(self.store, tenant, file_id, writer.size, self.tenant_file_bytes):
                    stored["status_details"] = PAST_QUOTA_DETAILS
                await self.store.put(file_key(file_id), stored)
                # Stored whole by an edge of an earlier version whose finish was cut (before or after the batch's
                # record said it ended): its parts now, the whole gone, or the file is held twice for its retention.
                await self.store.drop(file_key(file_id), "content")
                fields[f"{kind}_file_id"] = file_id
        await self.store.put(batch_key(batch_id), fields)
        kept = [
            batch_key(batch_id),
            results_key(batch_id),
            sent_key(batch_id),
            deferred_key(batch_id),
            *(file_key(str(fields[f"{k}_file_id"])) for k in ("output", "error") if f"{k}_file_id" in fields),
        ]
        await self.store.expire(kept, self.retention_s)
        await self.store.index(tenant, "batch", batch_id, self.retention_s)
        for kind in ("output", "error"):
            if f"{kind}_file_id" in fields:
                output_id = str(fields[f"{kind}_file_id"])
                # As long as it is kept. Its count lapsed meanwhile (this end stalled past COUNTING_S): counted
                # again, or the file stays stored uncounted for its whole retention.
                while not await self.store.keep_counted(tenant, output_id, self.retention_s):
                    await self.store.count_file(tenant, output_id, counted[output_id], None)
                await self.store.index(tenant, "file", output_id, self.retention_s, "batch_output")
        input_id = batch["input_file_id"].decode()
        await self.store.drop(readers_key(input_id), batch_id)  # before it leaves the active set: a rerun redoes it
        await delete_if_unread(self.store, input_id)  # deleted while the batch ran: now it goes
        await self.store.activate(batch_id, False)
        self._ended_here.add(batch_id)
        log.info("batch ended", extra={"id": batch_id, "lines": finished, "status": fields["status"]})


def _custom_ids(lines: wire.Lines, indices: Iterable[int]) -> dict[int, str | None]:
    return {i: unparsed.custom_id(lines.raw(i)) for i in indices}


def not_admitted(error: ServiceError, holds_settle: bool = True) -> bool:
    """A line the router did not admit, which may be sent again under the same request id: a call it admitted nothing
    of (router_refusals.admitted_nothing), or one it refused before admission (its money store out of reach, a rate
    limit), or one a draining router refused as its cut ran, charged nothing and its id released (SHUTTING_DOWN,
    `retryable` true: services/router/shutdown_cut.py); or one it may have admitted, cut mid-call (cut_mid_call:
    Refused.maybe), whose retry the router answers as a duplicate if it was. With the router's ErrorInfo (reason
    UPSTREAM_ERROR: its own call to the providers broke, or the providers' OVERLOADED passed on), the request was
    admitted. A budget refusal is one too unless the router says it is for good (`retryable: false`: the spend alone
    leaves too little): the holds of requests in flight took the room, the batch's own lines among them, and it may be
    admitted once they settle; written as the line's 429, a batch lost lines its budget would have paid for. Unless
    they may not settle in time (`holds_settle` false): the batch's own lines at providers hold its budget until its
    run collects them, once its other lines have ended, so a line waiting for that room waited out the window."""
    released = error.reason == "SHUTTING_DOWN" and error.metadata.get("retryable") == "true"
    held_room = holds_settle and error.reason == "BUDGET_EXCEEDED" and error.metadata.get("retryable") != "false"
    return (
        admitted_nothing(error)
        or error.cut_mid_call
        or released
        or held_room
        or error.reason in ("STORE_UNAVAILABLE", "RATE_LIMITED")
    )


def file_fields(
    tenant: str, filename: str, content: bytes, purpose: str = "batch_output", lines: int | None = None
) -> dict[str, str | bytes]:
    """A file's fields but its created_at, which its writer stamps by the store's clock (stamp): `lines`, an input
    file's requests, counted at upload, so that a batch's creation never reads its content."""
    fields: dict[str, str | bytes] = {
        "tenant": tenant,
        "filename": filename,
        "purpose": purpose,
        "bytes": str(len(content)),
        "content": content,
    }
    if lines is not None:
        fields["lines"] = str(lines)
    return fields


def _waits_parked(state: dict[str, bytes]) -> bool:
    """A parked batch waits for its time, unless cancelled: its run then ends it at once (unless it fails, or must first
    ask the router, out of reach then, what became of the lines of an offer whose reply was lost)."""
    return state.get("status") != b"cancelling" or "failures" in state or OFFER_IN_DOUBT in state
