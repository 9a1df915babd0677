"""Charges that could not reach the money store, kept in an append-only local file until they land; and the undos
of admissions whose reply was lost, likewise.

A charge is written here (and fsynced) before the answer is released, so a Redis outage at charge time never
loses it; a background task replays the file. Replays are idempotent: the store charges a request id once, and
undoes an admission (by its nonce) once. A charge of 0 of a request that delivered nothing carries the release of its
id for the caller's retry, landed with the charge as the charge made directly would have (OutboxCharge.release).
The file is locked while it is appended to or rewritten, so routers sharing a data dir do not interleave; the lock
is waited for without blocking the event loop or a thread, so routers in one process (tests start many) take turns
rather than freeze it.

On a Redis Cluster (Store.shards_fail_apart), the store out of reach, or refusing the router, for one shard only
(keys.py: a tenant's keys are all on one of SHARDS hash slots; a master down or refusing its keys) holds up that shard's
entries only: the replay keeps
the entry whose call failed so, in its place, keeps every later entry of its shard without asking the store again (at
most one failed call per shard and replay, however long the file), and lands the other shards' entries. A replay
begins by asking each master for a PING, once (Store.shards_away): the entries of the shards of one that does not
answer are kept so at once, without that call, which would wait out the cluster client's retries (seconds a shard)
with the file locked. An account's
entries, all of one shard, keep their order; entries of different shards touch none of each other's keys (and each
lands once, by its charge id or nonce), so landing one before another queued ahead of it changes nothing. On one
server a failure is every shard's: the replay stops there, rather than wait out a timeout per shard with the file
locked (and the charges being added waiting for it).

An entry that keeps failing for a reason other than the store being out of reach (a store error on its own keys such as
WRONGTYPE, a script error, a bug; a store that answers but refuses the router, read-only, full, loading, denying its
user by ACL, is out of reach: redis_store.py, _reachable, tells them apart), and a line that cannot be read, never hold
up the entries after it, and are never dropped: they move to a dead-letter file beside the outbox (the same format, for
an operator to look into and append back once mended), logged, and counted in llmrouter_router_outbox_dead_letters (what
that file holds, until an operator empties it)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc

from llmrouter.errors import ServiceError
from llmrouter.json_depth import loads_stored
from llmrouter.private_paths import private_dir, private_file, private_opener
from services.router import metrics
from services.router.store import HOLD_S, REQUEST_ID_TTL_S, Account, Hold, Store, StoreUnavailable, money_now
from services.router.store.keys import SHARDS, shard_of

log = logging.getLogger("llmrouter.router")
T = TypeVar("T")

LOCK_POLL_S = 0.01  # how often a router waiting for the file's lock tries again
# Written over the first byte of a line whose charge landed when the file could not be rewritten without it (a full
# disk): overwriting a byte in place needs no room, and one byte is written whole or not at all. Any router sharing the
# file then skips the line, rather than land it again and count it again; the next rewrite drops it.
LANDED_MARK = "#"
# How many replays in a row (one an upkeep round, ROUTER_UPKEEP_INTERVAL_S: 2 s by default) an entry must fail,
# otherwise than by the store being out of reach, before it is dead-lettered. Such failures (WRONGTYPE on a key of
# another type, a script error, a record the code cannot take) come back the same every time; a passing one (a reply
# garbled by a failover, a script flushed mid-call) is gone within a round or two. Thirty in a row, a minute at the
# default interval, is a fault that is not passing, while a good charge met by one passing error is replayed again
# and lands. The count is kept in memory: a restarted router counts again from 0, which only delays the move.
POISON_REPLAYS = 30


class NotRecorded(ServiceError):
    """Neither the money store nor the outbox kept a charge, a release or an undo. The request stays admitted (its
    pending charge is settled at its hold by the reconciler, see ROUTER_PENDING_STALE_S), so this is never
    STORE_UNAVAILABLE, which tells the caller that nothing was admitted and to send the same request id again; and its
    charge is pending (`cost_pending`): the edge lets no SDK retry it as a failure that cost nothing, charged again."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.INTERNAL,
            "MONEY_NOT_RECORDED",
            "the money store is unreachable, and what this request owes could not be kept on disk either",
            {"cost_pending": "true"},
        )


@dataclass(frozen=True)
class OutboxCharge:
    account: Account
    hold: Hold
    pico: int
    record: dict[str, Any]
    # Names the charge (Store.charge): its attempt that met the outage may have landed, its reply lost. '' in lines
    # of routers of the version before, which counted the charge in the metrics as they kept it here.
    charge_id: str = ""
    # When it was charged, by the money's clock (clock.py), which dates the markers' expiry too: what a line whose hold
    # has no marked_until (a router of a version before kept it) is aged by, as are this version's lines by routers of
    # the versions before. 0 in lines of routers of the versions before that: aged by the record's `ts`, the router's
    # own clock.
    charged_s: float = 0.0
    # Late whenever it is replayed, for a router that reads no marked_until: kept past it by the money's clock (by a
    # router of the version before: charged past its request's life and its markers').
    late: bool = False
    # A charge of 0 of a request that delivered nothing, which releases its id for the caller's retry (Store.charge)
    # as it lands, atomically, as the charge made directly would have. A top-level field, which every version before
    # ignores (each reads the fields it knows by name, entry_from_json): such a router lands the charge of 0 and
    # leaves the id used, as it would its own; one that rewrites the file while the line waits keeps the charge and
    # drops the field alike. False in lines of the versions before: none asked it.
    release: bool = False

    @classmethod
    def kept(
        cls,
        account: Account,
        hold: Hold,
        pico: int,
        record: dict[str, Any],
        charge_id: str,
        marked_s: float,
        release: bool = False,
    ) -> OutboxCharge:
        """A charge kept now: its replay judged late by the store (Hold.marked_until); `charged_s` and `late` say it
        for routers of the version before, which read no marked_until and take a line for late once `marked_s` (the
        outbox's) past its `charged_s`. Dated no later than `marked_s` before marked_until, as they dated their own
        back to the end of the request's life: dated by its keeping (its router frozen long past that life), its
        replay by them once the reconciler's marker had expired was young, and charged the request again."""
        now = money_now()
        charged_s = min(now, hold.marked_until - marked_s) if hold.marked_until else now
        return cls(account, hold, pico, record, charge_id, charged_s, 0 < hold.marked_until <= now, release)

    def to_json(self) -> str:
        line = asdict(self)
        line["hold"], line["marked_until"] = _hold_json(self.hold), self.hold.marked_until
        return json.dumps(line, separators=(",", ":"))

    async def land(self, store: Store, marked_s: float) -> None:
        """A charge whose hold says until when its request's charges are marked (Hold.marked_until) is judged late by
        the store, by its own clock (lua.py, CHARGE): whichever router replays it, whatever its clock and settings.

        A line of a router of a version before is judged here. Within `marked_s` of the charge, a charge of the request
        by anyone else (the reconciler's, of a router it took for dead) is surely still marked, so it lands whether or
        not its pending charge is open: a store that lost the admission (a crash, a failover behind) is still paid.
        Later, only while it is open: the marker may have expired. Aged by the money's clock, as Redis ages the
        markers, not by the router's own: that clock stepped by a day between the charge and its replay (NTP setting
        right a pod's clock) took a charge a moment old for late, or one past its markers for one within them.

        Counted in the metrics only when it is this charge that the store holds: one the reconciler settled meanwhile
        is counted as its charge, at its hold, and this one never reaches the ledger."""
        if self.hold.marked_until:
            late = False  # the store's to judge
        elif self.late or self.charged_s:
            late = self.late or money_now() - self.charged_s > marked_s
        else:
            late = time.time() - float(self.record.get("ts", 0)) > marked_s
        # Released only where the direct charge would have released it (lua.py, CHARGE): never when this charge landed
        # before (its reply lost, or replayed again after a crash before the file's rewrite; the charge id is in the
        # marker), nor on an id a retry has used since (its charge rewrote the marker unreleased).
        charged = await store.charge(
            self.account, self.hold, self.pico, self.record, late=late, charge_id=self.charge_id, release=self.release
        )
        if charged:
            if self.charge_id:  # a line of the version before was counted when it was kept
                metrics.count_charge(self.record)
            return
        # Settled meanwhile by the reconciler at its hold, while this router's caller was told this charge: amended to
        # it (Store.give_back, which counts what it gives back). A line of the version before was counted when kept,
        # beside the reconciler's hold: its own cost is given back in the metrics too.
        if await store.give_back(self.account, self.hold, self.pico, self.release) and not self.charge_id:
            metrics.count_given_back(self.record, self.pico)

    def logged(self) -> tuple[str, dict[str, Any]]:
        return "charge", self.record


@dataclass(frozen=True)
class OutboxUndo:
    """An admission to undo (Store.undo): its reply was lost, and the store was out of reach for the undo too."""

    account: Account
    hold: Hold

    def to_json(self) -> str:
        undo = {"account": asdict(self.account), "hold": _hold_json(self.hold)}
        return json.dumps({"undo": undo}, separators=(",", ":"))

    async def land(self, store: Store, marked_s: float) -> None:
        await undo_or_give_back(store, self.account, self.hold)

    def logged(self) -> tuple[str, dict[str, Any]]:
        return "undo of a lost admission", {"request_id": self.hold.request_id, "tenant": self.account.tenant}


OutboxEntry = OutboxCharge | OutboxUndo


async def undo_or_give_back(store: Store, account: Account, hold: Hold) -> bool:
    """Undo an admission whose caller was told nothing was admitted (once by its nonce, whenever it lands); when the
    reconciler charged it its hold first (its router taken for dead meanwhile), that charge given back whole
    (Store.give_back), once, and the request id freed as the undo would have freed it. Whether it was undone."""
    if await store.undo(account, hold):
        return True
    await store.give_back(account, hold, None)
    return False


def _hold_json(hold: Hold) -> dict[str, Any]:
    """A hold as a line keeps it: without marked_until (a charge's line keeps it beside) and max_tokens (a charge or
    undo needs none), which a router of the version before, making a Hold of every field there, would not know: it
    would dead-letter the line."""
    fields = asdict(hold)
    del fields["marked_until"], fields["max_tokens"]
    return fields


def _undo_id(entry: OutboxUndo) -> tuple[str, str]:
    return entry.account.tenant, entry.hold.request_id


def entry_from_json(line: str) -> OutboxEntry:
    raw = loads_stored(line)
    if "undo" in raw:
        undo = raw["undo"]
        return OutboxUndo(Account(**undo["account"]), Hold(**undo["hold"]))
    account, hold = Account(**raw["account"]), Hold(**raw["hold"], marked_until=raw.get("marked_until", 0.0))
    return OutboxCharge(
        account,
        hold,
        raw["pico"],
        raw["record"],
        raw.get("charge_id", ""),
        raw.get("charged_s", 0.0),
        raw.get("late", False) is True,
        raw.get("release", False) is True,
    )


class Outbox:
    def __init__(
        self, data_dir: Path, marked_s: float = REQUEST_ID_TTL_S - HOLD_S, poison_replays: int = POISON_REPLAYS
    ) -> None:
        """`marked_s`: how long after a charge any other charge of its request is surely still marked (the request id
        TTL less the longest a request runs and its charge lands), for lines of routers of a version before, whose
        holds have no marked_until (OutboxCharge.land); the default holds for every request timeout.
        `poison_replays`: how many replays in a row an entry fails otherwise before it is dead-lettered."""
        self.marked_s = marked_s
        self.poison_replays = poison_replays
        # Entries the replay under way has yet to try (0 while none runs), read at each scrape from this outbox (a
        # process's last opened): another outbox's replay, ending, resets nothing.
        self.replay_remaining = 0
        metrics.OUTBOX_REPLAY_REMAINING.set_function(lambda: self.replay_remaining)
        # Whoever could write here could have charges replayed against any tenant: checked, or refused (UnsafePath).
        private_dir(data_dir)
        self.path = data_dir / "charges-outbox.jsonl"
        self.dead_path = data_dir / "charges-outbox.dead.jsonl"
        private_file(self.path)
        # Its name made durable before a charge is kept in it: a power loss would lose the file made just now, and
        # with it the charges appended to it (fsynced as each was).
        _sync_dir(data_dir)
        private_file(self.dead_path, create=False)
        # Replays in a row that failed each entry still waiting (by its line) otherwise than by the store being away.
        self._failures: dict[str, int] = {}
        self._lock = asyncio.Lock()
        # Charges (by id) a replay landed, and counted, that are still in the file: its rewrite failed (a full disk),
        # and so did marking them landed. The next replay drops them without landing them again: the store would
        # answer that each is this very charge, made before, and it would be counted again.
        self._landed: set[str] = set()
        with self.path.open(encoding="utf-8") as file:
            waiting, _, _, undos = _scan(file)
        # The (tenant, request id) of each undo the file holds, as of its last read: a retry of one is not admitted yet.
        self._undos = set(undos.values())
        metrics.OUTBOX.set(len(waiting))
        metrics.OUTBOX_DEAD_LETTERS.set(len(self.dead_letters()))

    async def add(self, entry: OutboxEntry) -> None:
        what, fields = entry.logged()
        async with self._lock:
            try:
                # Closed (unlocked) by the thread, which runs to its end even if this call is cancelled.
                await asyncio.to_thread(_append_and_close, await self._locked("a"), entry.to_json())
            except OSError as exc:
                # Neither the store nor the disk keeps it: the log is the last record, and the call fails.
                log.critical(f"{what} kept by neither store nor outbox", extra={**fields, "error": str(exc)})
                raise NotRecorded() from exc
        if isinstance(entry, OutboxUndo):
            self._undos.add(_undo_id(entry))
        metrics.OUTBOX.inc()
        log.error(f"money store unreachable: {what} kept in the outbox", extra=fields)

    async def replay(self, store: Store, budget_s: float | None = None) -> int:
        """Land what the file holds, oldest first; returns how many landed. An entry the store fails for its own sake
        (StoreUnavailable) stays where it is, as do the later entries of its shard, not tried this replay; one failing
        otherwise stays where it is too, and the replay goes on with the next; after `poison_replays` such replays
        in a row it moves to the dead-letter file, as does a line that cannot be read at once (reading it again
        would not help). The file stays locked throughout, so a line appended meanwhile by another router is never
        rewritten away. What landed leaves the file however the replay ends (a cancellation): replayed again, each
        would be counted again in the metrics.
        With `budget_s`, no entry is begun once that long has passed since the first was (the file's read not
        counted: however long the file, each replay lands some): the rest stays in the file, in order, for the next
        replay, and what landed leaves it now. A long outbox so lands in slices, each durable: a router killed
        mid-replay (SIGKILL; its startup probe's budget spent) lands again, once each, only the slice under way."""
        async with self._lock:
            with await self._locked() as file:
                # Kept as lines, each parsed as its turn comes: parsed at once, an outbox an outage left long (some
                # 3 KB an entry, against 0.5-1 KB a line) took more memory than the router's limit, and the kubelet
                # killed it as it read the file, at each start. Read off the loop, each line parsed: some 6 s for an
                # outbox of 100,000 lines, read again each round while a long one lands a slice a round, and the router
                # served nothing meanwhile. Run to its end through a cancellation: the file is closed as this block is
                # left.
                read = asyncio.ensure_future(asyncio.to_thread(_scan, file))
                waiting, unreadable, marked, undos = await _to_its_end(read)
                # Still waiting, in order: indexes into `waiting`, not entries, which would take several times the
                # file's size when the store keeps them all (a Redis Cluster out of reach: every shard away).
                kept: list[int] = []
                unread = "unreadable: cut short by a crash, or written by another version"
                dead = [(line, unread) for line in unreadable]
                landed = 0
                landed_ids: set[str] = set()
                done = 0  # lines of `waiting` dealt with
                # Shards the store failed this replay, for its own sake: first those whose master does not answer now,
                # their entries kept without a call that would wait out the cluster client's retries, seconds a shard,
                # with the file locked.
                away = await _shards_away(store) if waiting else set()
                until = None if budget_s is None else time.monotonic() + budget_s
                try:
                    for line in waiting:
                        if until is not None and done and time.monotonic() >= until:
                            break  # the rest, from this entry on, waits for the next replay (remaining, below)
                        self.replay_remaining = len(waiting) - done
                        entry = entry_from_json(line)  # read once already (_scan)
                        if _charge_id(entry) not in self._landed:
                            shard = shard_of(entry.account.tenant)
                            if shard in away:  # not asked again this replay: kept, in its place
                                kept.append(done)
                                done += 1
                                continue
                            try:
                                await entry.land(store, self.marked_s)
                            except StoreUnavailable:
                                if not store.shards_fail_apart:  # one server: every entry would wait its timeout
                                    break
                                away.add(shard)
                                kept.append(done)
                                done += 1
                                continue
                            except Exception as exc:  # this entry's own fault: the next ones are landed all the same
                                if self._poisoned(entry, exc):
                                    dead.append((entry.to_json(), repr(exc)[:300]))
                                else:
                                    kept.append(done)
                                done += 1
                                continue
                            if _charge_id(entry):
                                self._landed.add(_charge_id(entry))
                        landed += 1
                        landed_ids.add(_charge_id(entry))
                        self._failures.pop(entry.to_json(), None)
                        done += 1
                finally:
                    self.replay_remaining = 0
                    # The lines kept and those not reached, as they were read: each as its entry is written (to_json).
                    remaining = [waiting[at] for at in kept] + waiting[done:]
                    still_at = set(kept)
                    self._undos = {undo for at, undo in undos.items() if at >= done or at in still_at}
                    metrics.OUTBOX.set(len(remaining))
                    landed_ids.discard("")
                    if landed or dead or marked:
                        # Run to its end through a cancellation (the router stopping), the file locked meanwhile:
                        # unlocked before it replaced the file, a line another router appends would be lost.
                        rewrite = asyncio.to_thread(self._rewrite, remaining, [line for line, _ in dead], landed_ids)
                        try:
                            await _to_its_end(asyncio.ensure_future(rewrite))
                        except OSError:  # the dead letters were not moved (_rewrite): they wait in the outbox too
                            metrics.OUTBOX.set(len(remaining) + len(dead))
                            raise
                        self._landed.difference_update(landed_ids)
                        still = set(remaining)  # each line as its entry's to_json
                        self._failures = {line: n for line, n in self._failures.items() if line in still}
                        for line, why in dead:
                            log.critical(
                                "outbox entry dead-lettered: it never lands; it is kept in the dead-letter file",
                                extra={"line": line[:500], "error": why, "dead_letters": str(self.dead_path)},
                            )
                    # Read each round: an operator who emptied the file (once its lines are looked into) sees it here.
                    metrics.OUTBOX_DEAD_LETTERS.set(len(self.dead_letters()))
                    if landed:
                        log.info("outbox charges landed", extra={"landed": landed, "waiting": len(remaining)})
            return landed

    def _poisoned(self, entry: OutboxEntry, exc: Exception) -> bool:
        """Whether an entry that failed this replay, otherwise than by the store being away, has failed
        `poison_replays` replays in a row (POISON_REPLAYS says why so many)."""
        line = entry.to_json()
        failed = self._failures[line] = self._failures.get(line, 0) + 1
        what, fields = entry.logged()
        log.error(f"outbox {what} failed to land", extra={**fields, "error": repr(exc)[:300], "failed_replays": failed})
        return failed >= self.poison_replays

    def __len__(self) -> int:
        with self.path.open(encoding="utf-8") as file:
            return len(_scan(file)[0])

    async def _locked(self, mode: str = "r") -> IO[str]:
        """The file, open and locked (closing it unlocks); reopened if another router replaced it while this
        one waited for the lock."""
        while True:
            file = open(self.path, mode, encoding="utf-8", opener=private_opener)  # noqa: SIM115 (closing unlocks)
            try:
                while not _try_lock(file):
                    await asyncio.sleep(LOCK_POLL_S)
            except BaseException:  # cancelled while waiting: nothing is left locked
                file.close()
                raise
            if os.fstat(file.fileno()).st_ino == os.stat(self.path).st_ino:
                return file
            file.close()

    def waiting(self) -> list[OutboxEntry]:
        """What the file holds now, read without its lock (for the metric and tests): never waits."""
        with self.path.open(encoding="utf-8") as file:
            return _read(file)[0]

    def undo_waiting(self, tenant: str, request_id: str) -> bool:
        """Whether an undo of an admission of the request id waits here (added by this router, or read from the file at
        its start or last replay): until it lands, the id is used by an admission its caller was told never was."""
        return (tenant, request_id) in self._undos

    def dead_letters(self) -> list[str]:
        """The lines of the dead-letter file."""
        if not self.dead_path.exists():
            return []
        return [line for line in self.dead_path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _rewrite(self, remaining: list[str], dead: list[str], landed_ids: set[str]) -> None:
        """Replace the file (its lock held by the caller) with what is still waiting, once the dead letters are on
        disk beside it: a crash in between leaves a line in both files, never in neither (landing one again is
        idempotent). When either cannot be written (a full disk), the charges of `landed_ids` are marked landed in
        the file (LANDED_MARK): another router sharing it would land each again, and the store would answer that it
        is this very charge, made before, counted by that router too. And the dead-letter file is cut back to what it
        held before: the dead letters stay in the outbox alone, moved once by the replay that can rewrite it (each
        replay until then appended them again, one line many times, for an operator to put back many times)."""
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        dead_size: int | None = None  # what the dead-letter file held before these lines
        try:
            if dead:
                with open(self.dead_path, "a", encoding="utf-8", opener=private_opener) as out:
                    dead_size = os.fstat(out.fileno()).st_size
                    out.writelines(line + "\n" for line in dead)
                    out.flush()
                    os.fsync(out.fileno())
            with open(tmp, "w", encoding="utf-8", opener=private_opener) as out:
                out.writelines(line + "\n" for line in remaining)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError:
            try:
                self._mark_landed(landed_ids)
                self._landed.difference_update(landed_ids)  # no replay meets them again
            finally:
                if dead_size is not None:  # cutting a file short needs no room
                    os.truncate(self.dead_path, dead_size)
            raise
        # The new file's name made durable: until then a power loss may bring back the file replaced, and with it lose
        # the charges appended since to the new one (fsynced as they were, their file's name was not).
        _sync_dir(self.path.parent)

    def _mark_landed(self, charge_ids: set[str]) -> None:
        """Write LANDED_MARK over the first byte of the lines of these charges (the file's lock held by the caller)."""
        if not charge_ids:
            return
        with open(self.path, "r+b") as file:
            offset = 0
            for line in file.read().splitlines(keepends=True):
                try:
                    entry = entry_from_json(line.decode("utf-8"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    entry = None
                if entry is not None and _charge_id(entry) in charge_ids:
                    file.seek(offset)
                    file.write(LANDED_MARK.encode())
                offset += len(line)
            file.flush()
            os.fsync(file.fileno())


def _sync_dir(path: Path) -> None:
    """fsync the directory, for the names in it. Failing, it is said, not raised: the file it names is whole either
    way, and raised here (the rename done) the replay would take its rewrite for undone."""
    try:
        directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        log.exception("outbox directory not synced: a power loss now may bring back the outbox as it was")


async def _to_its_end(work: asyncio.Future[T]) -> T:
    """Await `work` until it is done, even when cancelled meanwhile (a shielded wait ends at the cancellation while
    the work runs on); the cancellation is raised once it is."""
    cancelled = False
    while not work.done():
        try:
            await asyncio.wait((work,))  # cancelled, it leaves `work` running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not work.cancelled() and (error := work.exception()) is not None:
            log.error("outbox read or rewrite failed as its replay was cancelled", exc_info=error)
        raise asyncio.CancelledError
    return work.result()


async def _shards_away(store: Store) -> set[int]:
    """The shards whose master does not answer now (Store.shards_away); every shard when the store cannot be reached
    at all, none of its entries asked."""
    try:
        return await store.shards_away()
    except StoreUnavailable:
        return set(range(SHARDS))


def _charge_id(entry: OutboxEntry) -> str:
    """A charge's id; '' for an undo, or a charge of the version before (landing either again counts nothing)."""
    return entry.charge_id if isinstance(entry, OutboxCharge) else ""


def _try_lock(file: IO[str]) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _append_and_close(file: IO[str], line: str) -> None:
    with file:
        # The leading newline ends a line a crash may have cut short (its answer was never released).
        file.write("\n" + line + "\n")
        file.flush()
        os.fsync(file.fileno())


def _scan(file: IO[str]) -> tuple[list[str], list[str], int, dict[int, tuple[str, str]]]:
    """The lines of the file's entries (each parsed to tell it readable, and kept as its entry is written: to_json),
    the lines that are none (cut short by a crash, or of a shape this version does not know: written by another
    version, or mangled), how many lines are marked landed (LANDED_MARK), and the undos among the entries, by their
    index. A line, not its entry, for what a long outbox takes in memory."""
    lines: list[str] = []
    unreadable: list[str] = []
    marked = 0
    undos: dict[int, tuple[str, str]] = {}
    for line in file:
        if line.startswith(LANDED_MARK):
            marked += 1
        elif line.strip():
            try:
                entry = entry_from_json(line)
            except (ValueError, KeyError, TypeError, AttributeError):
                unreadable.append(line.strip())
                continue
            if isinstance(entry, OutboxUndo):
                undos[len(lines)] = _undo_id(entry)
            lines.append(entry.to_json())
    return lines, unreadable, marked, undos


def _read(file: IO[str]) -> tuple[list[OutboxEntry], list[str], int]:
    """The entries of the file, the lines that are none (cut short by a crash, or of a shape this version does not
    know: written by another version, or mangled), and how many lines are marked landed (LANDED_MARK)."""
    lines, unreadable, marked, _ = _scan(file)
    return [entry_from_json(line) for line in lines], unreadable, marked
