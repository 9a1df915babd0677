"""Charges that could not reach the money store, kept in an append-only local file until they land.

A charge is written here (and fsynced) before the answer is released, so a Redis outage at charge time never
loses it; a background task replays the file. Replays are idempotent: the store charges a request id once.
The file is locked while it is appended to or rewritten, so routers sharing a data dir do not interleave; the
lock is waited for without blocking the event loop or a thread, so routers in one process (tests start many)
take turns rather than freeze it."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from services.router import metrics
from services.router.store import Account, Hold, Store, StoreUnavailable

log = logging.getLogger("llmrouter.router")

LOCK_POLL_S = 0.01  # how often a router waiting for the file's lock tries again


@dataclass(frozen=True)
class OutboxCharge:
    account: Account
    hold: Hold
    pico: int
    record: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> OutboxCharge:
        raw = json.loads(line)
        return cls(Account(**raw["account"]), Hold(**raw["hold"]), raw["pico"], raw["record"])


class Outbox:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "charges-outbox.jsonl"
        self.path.touch(exist_ok=True)
        self._lock = asyncio.Lock()
        metrics.OUTBOX.set(len(self._read()))

    async def add(self, charge: OutboxCharge) -> None:
        async with self._lock:
            try:
                # Closed (unlocked) by the thread, which runs to its end even if this call is cancelled.
                await asyncio.to_thread(_append_and_close, await self._locked("a"), charge.to_json())
            except OSError as exc:
                # Neither the store nor the disk keeps it: the log is the last record, and the call fails.
                log.critical("charge kept by neither store nor outbox", extra={**charge.record, "error": str(exc)})
                raise StoreUnavailable() from exc
        metrics.OUTBOX.inc()
        log.error("money store unreachable: charge kept in the outbox", extra=charge.record)

    async def replay(self, store: Store) -> int:
        """Charge what the file holds, oldest first, until the store fails; returns how many landed. The
        file stays locked throughout, so a line appended meanwhile by another router is never rewritten away."""
        async with self._lock:
            with await self._locked() as file:
                waiting = _parse(file)
                landed = 0
                for charge in waiting:
                    try:
                        await store.charge(charge.account, charge.hold, charge.pico, charge.record, late=True)
                    except StoreUnavailable:
                        break
                    landed += 1
                if landed:
                    await asyncio.to_thread(self._rewrite, waiting[landed:])
                    log.info("outbox charges landed", extra={"landed": landed, "waiting": len(waiting) - landed})
            metrics.OUTBOX.set(len(waiting) - landed)
            return landed

    def __len__(self) -> int:
        return len(self._read())

    async def _locked(self, mode: str = "r") -> IO[str]:
        """The file, open and locked (closing it unlocks); reopened if another router replaced it while this
        one waited for the lock."""
        while True:
            file = self.path.open(mode, encoding="utf-8")
            try:
                while not _try_lock(file):
                    await asyncio.sleep(LOCK_POLL_S)
            except BaseException:  # cancelled while waiting: nothing is left locked
                file.close()
                raise
            if os.fstat(file.fileno()).st_ino == os.stat(self.path).st_ino:
                return file
            file.close()

    def _read(self) -> list[OutboxCharge]:
        """What the file holds now, read without its lock (a count, for the metric and tests): never waits."""
        with self.path.open(encoding="utf-8") as file:
            return _parse(file)

    def _rewrite(self, remaining: list[OutboxCharge]) -> None:
        """Replace the file (its lock held by the caller) with what is still waiting."""
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines(charge.to_json() + "\n" for charge in remaining)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


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


def _parse(file: IO[str]) -> list[OutboxCharge]:
    charges = []
    for line in file:
        if line.strip():
            try:
                charges.append(OutboxCharge.from_json(line))
            except (ValueError, KeyError, TypeError):
                log.error("outbox line cut short by a crash; skipped", extra={"line": line[:200]})
    return charges
