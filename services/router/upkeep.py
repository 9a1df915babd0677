"""The router's background duties towards the money store, on one loop: say it is alive (heartbeat), choose
whether admission may trust the running hold totals (ROUTER_HOLD_TOTALS=auto), replay
the charge outbox, settle the pending charges of dead routers (one replica at a time, by lease), report
whether the store is reachable (metric and gRPC health), and how full the stores' Redis are (store_memory.py). At
shutdown, a last replay of the outbox (close)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from llmrouter.tasks import stop as stop_task
from services.router import metrics
from services.router.outbox import Outbox
from services.router.store import Store, StoreUnavailable
from services.router.store_memory import StoreMemory

log = logging.getLogger("llmrouter.router")

HealthReport = Callable[[bool], Awaitable[None]]
# Whether the money store's masters allow the router to serve (money_policy.EvictionRecheck.never_evicts).
PolicyCheck = Callable[[], Awaitable[bool]]

# The longest the router's shutdown waits for its last replay of the outbox (Upkeep.close). A store in reach lands
# hundreds of charges in it; one out of reach fails the replay at its first call (a Redis call times out after 5 s).
# The chart's terminationGracePeriodSeconds leaves it this long past the drain (helm deployment.yaml, $afterDrain).
FINAL_REPLAY_S = 5.0
# The longest a round's replay lands entries before it rewrites the outbox without them and lets the round go on
# (Outbox.replay, budget_s); the rest lands in the next rounds. The first round runs before the router serves gRPC
# health (first_round), and the chart's startupProbe gives a pod 2 minutes to answer it: a whole replay of an outbox
# an outage left long (some 3,000 charges a second against a Redis on loopback, fewer across a network) outlasted
# that, the kubelet killed the router mid-replay, and the next start replayed the same entries again, never the end.
# Bounded, each round's replay is durable too: a router killed mid-replay loses only the slice under way.
REPLAY_SLICE_S = 10.0


class Upkeep:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        router: str,
        interval_s: float,
        heartbeat_ttl_s: float,
        stale_s: float,
        memory: StoreMemory | None = None,
        policy: PolicyCheck | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.policy = policy
        self.outbox = outbox
        self.router = router
        self.interval_s = interval_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.stale_s = stale_s
        self.report: HealthReport | None = None
        self.up: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self.round: asyncio.Task[None] | None = None  # the round under way (_beating_through), or the last one
        self.look: asyncio.Task[None] | None = None  # the look at the heartbeats under way, or the last one
        self.finishing: asyncio.Task[None] | None = None  # limit changes left unconfirmed being finished, or the last
        self.round_started = 0.0  # Unix time the round under way began, 0 while none runs

    def start(self, report: HealthReport | None = None) -> None:
        self.report = report
        metrics.HEARTBEAT_TTL.set(self.heartbeat_ttl_s)
        # Read at each scrape, from this upkeep (a process's last started): another's round, ending, resets nothing.
        metrics.UPKEEP_ROUND_STARTED.set_function(lambda: self.round_started)
        self._task = asyncio.create_task(self._run())

    async def first_round(self) -> None:
        """The round run before the router serves (services.router.build): its heartbeat first, so no pending charge
        of this router is ever admitted while it is not known alive, and the outbox replayed for REPLAY_SLICE_S at
        most, the heartbeat beaten meanwhile; what is left lands in the rounds once it serves (start)."""
        await self._beating_through(self.tick())

    async def looked(self) -> None:
        """Once the look at the heartbeats under way, if any, has ended."""
        if self.look is not None:
            await asyncio.wait({self.look})

    async def close(self) -> None:
        """Stops the loop, then replays the outbox once more (the router's closers run this after its last charge is
        written): the outbox is on the pod's emptyDir unless the chart keeps it on a volume claim, and a charge left in
        one deleted with its pod is settled by the reconciler at its hold, not at what was generated. What does not
        land in FINAL_REPLAY_S stays in the file, for the next router started on it (its first round replays it)."""
        # The round stopped here, not from within the loop's cancellation: one slow to end (a lost cancellation, a
        # replay's rewrite run to its end) outlasted that, stop() cancelled the loop again, and it ran on past close,
        # the outbox locked, so the replay below waited FINAL_REPLAY_S for it and landed nothing.
        for task in (self._task, self.round, self.look, self.finishing):
            if task is not None:
                await stop_task(task)
        try:
            await asyncio.wait_for(self.outbox.replay(self.store), FINAL_REPLAY_S)
        except TimeoutError:
            pass  # what landed has left the file (Outbox.replay); the rest is said below
        except Exception:  # a full disk: said below all the same
            log.exception("outbox replay at shutdown failed")
        try:
            waiting = len(self.outbox)
        except OSError:  # the file gone or unreadable: the other closers run all the same
            log.exception("outbox unreadable at shutdown")
            return
        if waiting:
            log.error(
                "charges left in the outbox at shutdown: they land once a router starts on this data dir, else the "
                "reconciler settles them at their holds",
                extra={"waiting": waiting, "outbox": str(self.outbox.path)},
            )

    async def _run(self) -> None:
        # The first round (first_round) found the store refusing the router before it served, with none to tell; the
        # server then said SERVING, and the rounds report a change only: it went on saying so for as long as the
        # store refused (full, read-only), and readiness sent it requests that were all refused.
        if self.report is not None and self.up is False:
            await self.report(False)
        while True:
            try:
                await self._beating_through(self.tick())
            except Exception:  # never let one bad round end the loop that keeps money settled
                log.exception("router upkeep failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def _beating_through(self, work: Coroutine[Any, Any, None]) -> None:
        """A round, the heartbeat kept every interval while it runs. Beaten once a round, it lapsed whenever a round
        outlasted its TTL (an outbox replay of the charges an outage left, a master gone away mid-round: seconds a
        shard), and another router's reconciler took this live router for dead: its requests in flight, and those
        whose charges wait in its outbox, were charged at their holds. Cancelled (close), the round is close's to
        stop. A round past the TTL is a warning at each beat, with its age: beating on, a hung round shows nowhere else
        (its outbox unreplayed, no sweep), and its router's pending charges wait for ROUTER_PENDING_STALE_S. Its start
        is a metric too, for the alert LLMRouterUpkeepRoundHung."""
        began = time.monotonic()
        self.round_started = time.time()
        try:
            self.round = round_ = asyncio.create_task(work)
            while not (await asyncio.wait({round_}, timeout=self.interval_s))[0]:
                age_s = time.monotonic() - began
                if age_s > self.heartbeat_ttl_s:
                    log.warning(
                        "upkeep round running longer than the heartbeat TTL: hung, or a long outbox replay",
                        extra={"round_age_s": round(age_s, 3), "heartbeat_ttl_s": self.heartbeat_ttl_s},
                    )
                try:
                    await self._heartbeat()  # out of reach: the round says it, and the next round's heartbeat
                except Exception:  # the round goes on all the same, as the next beat does
                    log.exception("router heartbeat failed while a round ran")
            round_.result()
        finally:
            self.round_started = 0.0

    async def tick(self) -> None:
        await self._settle_money()
        if self.memory is not None:  # after the money's duties: a store slow to answer INFO delays none of them
            await self.memory.refresh()

    async def _settle_money(self) -> None:
        # The policy asked after the heartbeat: a master slow to answer it delays none of this round's.
        up = await self.store.ping() and await self._heartbeat() and (self.policy is None or await self.policy())
        if up != self.up:
            self.up = up
            metrics.STORE_UP.labels("money").set(1 if up else 0)
            (log.info if up else log.error)("money store " + ("reachable" if up else "unreachable: failing closed"))
            if self.report is not None:
                await self.report(up)
        if not up:
            return
        if self.look is None or self.look.done():  # not awaited: a look may scan the keyspace, millions of keys
            self.look = asyncio.create_task(self._choose_hold_totals())  # may take seconds, this round's duties none
        try:
            await self._replay()
            settled = await self.store.reconcile(self.router, self.heartbeat_ttl_s, self.stale_s)
        except StoreUnavailable:
            return  # the next round's ping reports it
        if settled:
            metrics.PENDING_RECONCILED.inc(settled)
            log.warning("settled orphaned pending charges at their hold", extra={"settled": settled})
        if self.finishing is None or self.finishing.done():  # not awaited: a shard's master down waits out its calls
            self.finishing = asyncio.create_task(self._finish_limit_changes())

    async def _replay(self) -> None:
        """A replay that fails otherwise than by the store being away (its file cannot be rewritten: a full disk) holds
        up none of the round's other duties: it failed every round while the disk stayed full, and the dead routers'
        pending charges were never settled. What it landed is counted, and the outbox gauge says what waits."""
        try:
            await self.outbox.replay(self.store, REPLAY_SLICE_S)
        except StoreUnavailable:
            raise
        except Exception:
            log.exception("outbox replay failed; retrying next round")

    async def _finish_limit_changes(self) -> None:
        """Apart from the round's duties: a change left unconfirmed on a shard whose master is down waits out that
        master's calls each round until it is back, and the heartbeat must not wait with it."""
        try:
            await self.store.finish_limit_changes()  # each logged by the store
        except StoreUnavailable:
            return  # the change stays recorded for the next round
        except Exception:  # a task's own: nothing else would report it
            log.exception("finishing budget limit changes failed; retrying next round")

    async def _choose_hold_totals(self) -> None:
        """Apart from the money's duties: on a Redis Cluster a look that scans (while the heartbeats' slot migrates)
        reads every master, and one down says nothing of the shards on the others, whose charges the replay and the
        reconciler still settle."""
        try:
            trusted = await self.store.choose_hold_totals(self.router, self.interval_s)
        except StoreUnavailable:  # the store admits by a scan until it can look again
            trusted = False
        metrics.HOLD_TOTALS_TRUSTED.set(1 if trusted else 0)

    async def _heartbeat(self) -> bool:
        """False when the store answers but takes no writes (full, or a demoted primary): nothing is admitted."""
        try:
            await self.store.heartbeat(self.router, self.heartbeat_ttl_s, self.stale_s)
        except StoreUnavailable:
            return False
        return True
