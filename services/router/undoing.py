"""Undoing an admission whose outcome is unknown: the store may have run it while its reply was lost (a timeout, a
dropped connection), or it may run after its caller left. The request is not served, so it must leave nothing
behind: no hold blocking the budget, no pending charge for the reconciler to charge at its hold, no used request
id refusing the caller's retry. The undo names the one admission by its nonce (Store.undo); one that cannot reach
the store waits in the outbox, replayed until it lands.

An outage would otherwise make an undo, and an fsynced outbox line, of every request refused meanwhile (and a full
store a marker for each). So once an undo (or a key's binding, asked before admission: key_tenants.py) finds the store
unreachable, or the store refuses writes, admissions and bindings are
not sent to it at all (refused at once, STORE_UNAVAILABLE), but for one probe every PROBE_S, until the store
answers one: an outage leaves the admissions in flight when it began and one a probe to undo, not one per
request."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from llmrouter.errors import ServiceError
from services.router.outbox import Outbox, OutboxUndo, undo_or_give_back
from services.router.store import Account, Hold, Store, StoreRefusing, StoreUnavailable, Verdict

log = logging.getLogger("llmrouter.router")

PROBE_S = 1.0  # while the store is out of reach, one admission a second is sent to learn that it is back


class UndoWaiting(StoreUnavailable):
    """A request id used by an admission whose undo waits in this router's outbox (its reply lost, its caller told
    STORE_UNAVAILABLE), sent again before the undo lands (within an upkeep round of the store's return): not admitted,
    as STORE_UNAVAILABLE says, to be sent again, rather than refused as a duplicate told the hold of an admission that
    is being undone and will cost nothing."""

    def __init__(self, request_id: str) -> None:
        ServiceError.__init__(
            self,
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            f"request id {request_id!r} is not admitted yet: its earlier admission, which was not served, is "
            "still being undone; send it again in a moment",
            {"retry_after_s": "2"},
        )


class Undoing:
    def __init__(self, store: Store, outbox: Outbox, probe_s: float = PROBE_S) -> None:
        self.store = store
        self.outbox = outbox
        self.probe_s = probe_s
        self._next_probe: float | None = None  # set while the store is out of reach (monotonic time)
        self._running: set[asyncio.Task[None]] = set()

    def may_send(self) -> bool:
        """Whether to send an admission to the store: always, but while it is out of reach once every probe_s."""
        if self._next_probe is None:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.probe_s
        return True

    def probing(self) -> bool:
        """Whether the store was found out of reach: may_send lets a probe alone through."""
        return self._next_probe is not None

    def give_back_probe(self) -> None:
        """A probe taken by a read that was answered (a key's binding, key_tenants.refuse_if_another): a store refusing
        writes (full, read-only) answers reads: the read reopens no admissions, and the next one sent is the probe."""
        if self._next_probe is not None:
            self._next_probe = time.monotonic()

    def undo_waiting(self, account: Account, request_id: str) -> bool:
        """Whether an undo of an admission of the request id waits in the outbox: a retry refused as a duplicate
        meanwhile is the caller's retry of a request it was told was not admitted (UndoWaiting)."""
        return self.outbox.undo_waiting(account.tenant, request_id)

    def answered(self) -> None:
        """The store answered an admission (or the upkeep's ping and heartbeat): it is within reach."""
        self._next_probe = None

    async def undo(self, account: Account, hold: Hold, failure: StoreUnavailable) -> None:
        """Undo an admission that failed (its reply may have been lost after it ran). Runs to its end (the outbox
        write included) whatever the caller does meanwhile; close() waits for it. A store that refuses writes (full,
        read-only) is treated as out of reach: it would refuse every admission sent meanwhile too."""
        if isinstance(failure, StoreRefusing):
            self.out_of_reach()
        await asyncio.shield(self._run(self._undo(account, hold)))

    async def withdraw(self, account: Account, hold: Hold) -> None:
        """Undo an admission that answered, of a request that will not be served after all (nothing was sent for
        it): its id may be sent again. Runs to its end, as undo."""
        await asyncio.shield(self._run(self._undo(account, hold)))

    def undo_if_held(self, admitting: asyncio.Future[Verdict], account: Account, hold: Hold) -> None:
        """For a caller that left while it was admitted: once the admission ends, undo it unless it was refused."""
        self._run(self._undo_if_held(admitting, account, hold))

    def out_of_reach(self) -> None:
        """The store was found out of reach (an undo, or a key's binding asked: key_tenants.py): admissions are sent but
        for a probe every probe_s."""
        self._next_probe = time.monotonic() + self.probe_s

    async def close(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _run(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(_consume_error)  # its caller may be gone: the outbox logged a failure
        return task

    async def _undo_if_held(self, admitting: asyncio.Future[Verdict], account: Account, hold: Hold) -> None:
        try:
            if (await admitting).refused:
                return  # refused: it made nothing
        except Exception:  # its outcome is unknown: out of reach, or a bug reading its reply (the hold may be taken)
            pass
        await self._undo(account, hold)

    async def _undo(self, account: Account, hold: Hold) -> None:
        try:
            undone = await undo_or_give_back(self.store, account, hold)
        except StoreUnavailable:
            self.out_of_reach()
            await self.outbox.add(OutboxUndo(account, hold))
            return
        log.warning("admission of a request not served undone", extra={"request_id": hold.request_id, "undone": undone})


def _consume_error(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
