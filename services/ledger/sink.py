"""The SQL sink: copies the router's ledger into the ledger table, at least once and idempotently.

From Redis it reads every shard's ledger stream as one consumer group per stream: an entry is acknowledged
(XACK) only after its row is committed, so a sink that stops (crash, database outage, deploy) leaves its
entries pending; the same consumer reads its pending entries again when it returns, and another consumer claims
them (XAUTOCLAIM) once they have been idle for `claim_idle_s`. Rows are keyed by the entry they were copied from
(its stream and entry id): an entry delivered twice is inserted once, and a request id charged twice (reused after
its TTL, a new request) is in the table twice, as in the budgets. An entry that is no row (unreadable, no charge
the table can hold, refused by the database) is kept whole in the ledger_rejected table before it is acknowledged:
never retried forever, and never lost (a ledger trim deletes only acknowledged entries). The streams are read
in turn without blocking (on a Redis Cluster they live on different masters), and the sink waits `block_s` only
when all of them are drained. Without Redis (the in-process store) it reads the store's ledger list from a cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Protocol

from llmrouter.json_depth import loads_stored
from llmrouter.redis_connect import is_cluster_client
from llmrouter.redis_scripts import Script
from llmrouter.tasks import raise_if_cancelled
from llmrouter.tasks import stop as stop_task
from services.ledger.backlog import Backlog, read_backlog
from services.ledger.db import LedgerDB, Rejected, row_from_record
from services.ledger.sink_metrics import PROCESS_SINK_METRICS, SinkMetrics
from services.router.store import SHARDS, MemoryStore, ledger_key

log = logging.getLogger("llmrouter.ledger")

GROUP = "llmrouter-sql-sink"
BATCH = 500
# A consumer of the group idle this long with nothing pending is deleted (a sink's consumer is named after its host and
# process, so each pod or restart adds one; a live sink reads every second or so, and is made again by its next read
# if deleted all the same).
FORGET_IDLE_S = 3600.0

# Deletes the consumers of group ARGV[1] on stream KEYS[1] idle for ARGV[2] ms or more that hold no pending entry, but
# ARGV[3] (the caller); returns how many. One script, so no entry can be delivered to a consumer between the check and
# its deletion (XGROUP DELCONSUMER drops its pending entries, which no sink would then ever read again): a consumer
# that died holding entries is deleted only after another claimed them (XAUTOCLAIM), whatever the number of sinks.
FORGET_IDLE_CONSUMERS = """
local deleted = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] ~= ARGV[3] and fields['pending'] == 0 and fields['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    deleted = deleted + 1
  end
end
return deleted
"""


# A ledger entry's record as a source reads it: the record; for a record that cannot be read, its text (kept whole by
# the sink, never lost); None for an entry gone from the source (trimmed after it was delivered): nothing to keep.
Record = dict[str, Any] | str | None


class Source(Protocol):
    async def read(self, block_s: float) -> list[tuple[str, Record]]:
        """Up to a batch of unacknowledged entries as (id, record). An id names its entry, the same on every delivery
        and never another entry's: the table's rows are keyed by it."""

    async def ack(self, ids: list[str]) -> None: ...

    async def backlog(self) -> Backlog:
        """The age of the oldest entry not acknowledged yet (0: none waits) and how many wait: backlog.py reports
        it."""


def stream_entry(stream: str, entry_id: str) -> str:
    """A Redis ledger entry's id as the sink reads it: its stream (a shard's, services/router/store/keys.py) and
    its entry id there."""
    return f"{stream} {entry_id}"


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisSource:
    def __init__(
        self,
        client: Any,
        consumer: str,
        claim_idle_s: float = 60.0,
        streams: list[str] | None = None,
        group: str = GROUP,
        forget_idle_s: float = FORGET_IDLE_S,
    ) -> None:
        self.client, self.consumer, self.group = client, consumer, group
        self.streams = streams if streams is not None else [ledger_key(shard) for shard in range(SHARDS)]
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self._ready: set[str] = set()  # streams whose group is known to exist
        self._unacked = True  # entries delivered to this consumer may await their ack (at start: maybe)
        self._last_claim = float("-inf")
        self.forget_idle_ms = int(forget_idle_s * 1000)
        self._last_forget = float("-inf")

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            if stream in self._ready:
                continue
            try:
                # From the stream's first entry: a sink started after the router copies everything still there.
                await self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except Exception as exc:  # redis.ResponseError BUSYGROUP: made before, by this or another sink
                if "BUSYGROUP" not in str(exc):
                    raise
            self._ready.add(stream)

    async def read(self, block_s: float) -> list[tuple[str, Record]]:
        """Up to a batch from each stream; ids are '<stream> <entry id>' (stream_entry). Own pending entries first
        (delivered before a restart or a failed commit), then those of consumers idle for claim_idle_s (about
        that often), then new ones: one XREADGROUP per stream in the common case. Not pipelined: redis-py 8.1
        hands a pipeline cancelled mid-flight (a sink stopped) back with its replies unread, and the next
        caller's replies shift, so entries were delivered that no one read (tests/ledger caught it)."""
        await self._ensure_groups()
        try:
            entries = await self._pending() if self._unacked else []
            if not entries and time.monotonic() - self._last_claim >= self.claim_idle_ms / 2000:
                self._last_claim = time.monotonic()
                entries = await self._claimed()
                if time.monotonic() - self._last_forget >= self.forget_idle_ms / 2000:
                    self._last_forget = time.monotonic()
                    await self._forget_quietly()
            if not entries:
                entries = await self._new()
        except Exception as exc:
            if "NOGROUP" in str(exc):  # a stream or its group was deleted: made again on the next read
                self._ready.clear()
            raise
        self._unacked = bool(entries)
        if not entries:
            await asyncio.sleep(block_s)
        return [(stream_entry(self.streams[i], _text(entry_id)), _record(fields)) for i, entry_id, fields in entries]

    async def _group_read(self, start: str) -> list[tuple[int, Any, Any]]:
        """XREADGROUP from `start` ('0': own pending, '>': new) without blocking: one command for every stream
        on one server, one per stream on a cluster (each stream has its own slot)."""
        index = {stream: i for i, stream in enumerate(self.streams)}
        groups = [self.streams] if not is_cluster_client(self.client) else [[stream] for stream in self.streams]
        found = []
        for streams in groups:
            reply = await self.client.xreadgroup(self.group, self.consumer, dict.fromkeys(streams, start), count=BATCH)
            found += [(index[_text(name)], *entry) for name, entries in reply or [] for entry in entries]
        return found

    async def _pending(self) -> list[tuple[int, Any, Any]]:
        return await self._group_read("0")

    async def _new(self) -> list[tuple[int, Any, Any]]:
        return await self._group_read(">")

    async def _claimed(self) -> list[tuple[int, Any, Any]]:
        found = []
        for index, stream in enumerate(self.streams):
            reply = await self.client.xautoclaim(
                stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=BATCH
            )
            found += [(index, *entry) for entry in reply[1]]
        return found

    async def _forget_quietly(self) -> None:
        """The clean-up is housekeeping: refused (an ACL without XGROUP DELCONSUMER) or failing, it must not fail the
        read, whose claimed entries would wait in this consumer's own pending list until it claimed them back."""
        try:
            await self.forget_idle_consumers()
        except Exception as exc:
            log.warning("ledger sink: idle consumers not deleted: %s: %s", exc.__class__.__name__, exc)

    async def forget_idle_consumers(self) -> int:
        """Delete the group's consumers idle for forget_idle_s that hold nothing (FORGET_IDLE_CONSUMERS), after this
        sink claimed what the dead ones held; returns how many."""
        script = Script(self.client, FORGET_IDLE_CONSUMERS)
        deleted = 0
        for stream in self.streams:
            deleted += int(await script(keys=[stream], args=[self.group, self.forget_idle_ms, self.consumer]))
        if deleted:
            log.info("idle ledger sink consumers deleted", extra={"deleted": deleted, "group": self.group})
        return deleted

    async def ack(self, ids: list[str]) -> None:
        by_stream: dict[str, list[str]] = {}
        for each in ids:
            stream, _, entry_id = each.rpartition(" ")
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, entry_ids in by_stream.items():
            await self.client.xack(stream, self.group, *entry_ids)
        self._unacked = False

    async def backlog(self) -> Backlog:
        return await read_backlog(self.client, self.streams, self.group)


class MemorySource:
    """The in-process store's ledger, read from a cursor over every record it ever appended. Ids are
    '<origin> <position>': the origin is new with each source, as the store is with each process, whose ledger
    starts again at 0 while the table keeps the rows of the processes before."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.consumed = 0
        self.origin = f"memory-{uuid.uuid4().hex}"

    async def read(self, block_s: float) -> list[tuple[str, Record]]:
        if self.store.ledger_appended == self.consumed:
            await asyncio.sleep(block_s)
        unread = self.store.ledger_appended - self.consumed
        ledger = self.store.ledger
        kept = list(itertools.islice(ledger, len(ledger) - min(unread, len(ledger)), None))
        if unread > len(kept):
            log.error(
                "ledger records dropped from memory before the sink read them", extra={"lost": unread - len(kept)}
            )
            self.consumed += unread - len(kept)
        return [(f"{self.origin} {self.consumed + i}", record) for i, record in enumerate(kept[:BATCH])]

    async def ack(self, ids: list[str]) -> None:
        self.consumed += len(ids)

    async def backlog(self) -> Backlog:
        """By the oldest unread record's charge time (the in-process ledger stamps no entry of its own); nothing is
        pending (a record read is acknowledged, or read again, by this one sink)."""
        unread = self.store.ledger_appended - self.consumed
        ledger = self.store.ledger
        if not unread or not ledger:
            return Backlog(0.0, 0.0, float(unread))
        oldest = ledger[max(len(ledger) - unread, 0)]
        return Backlog(max(time.time() - float(oldest["ts"]), 0.0), 0.0, float(unread))


class LedgerSink:
    def __init__(
        self,
        source: Source,
        db: LedgerDB,
        block_s: float = 1.0,
        retry_s: float = 2.0,
        metrics: SinkMetrics = PROCESS_SINK_METRICS,
    ) -> None:
        self.source, self.db = source, db
        self.block_s, self.retry_s = block_s, retry_s
        self.metrics = metrics
        self.inserted = 0

    async def step(self, block_s: float | None = None) -> int:
        """Copy one batch; returns how many entries it handled (0: nothing was waiting). A failure is counted by its
        stage in llmrouter_router_ledger_sink_failures_total and raised."""
        with self.metrics.failing("read"):
            entries = await self.source.read(self.block_s if block_s is None else block_s)
        rows, records, rejected = [], [], []
        for entry_id, record in entries:
            if record is None:
                continue  # gone from the source: nothing left to copy
            if isinstance(record, str):
                rejected.append(Rejected(entry_id, json.dumps(record), "unreadable record"))
                continue
            as_json = json.dumps(record, default=str)
            try:
                rows.append(row_from_record(record, entry_id))
                records.append(as_json)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                rejected.append(Rejected(entry_id, as_json, f"no charge the table can hold: {exc!r}"))
        # Not a charge anyone can account for, and not retried forever: kept whole in the SQL ledger (with those the
        # database refuses) before it is acknowledged, so an entry acknowledged (then trimmed) is never lost.
        with self.metrics.failing("write"):
            if rejected:
                await self.db.reject(rejected)
            inserted = await self.db.insert(rows, records)
        self.inserted += inserted
        self.metrics.rows.inc(inserted)
        with self.metrics.failing("ack"):
            await self.source.ack([entry_id for entry_id, _ in entries])
        self.metrics.last_success.set_to_current_time()  # its age is how far behind the SQL ledger may be
        return len(entries)

    async def drain(self) -> None:
        """Copy until nothing is waiting (tests, and the export command's catch-up)."""
        while await self.step(block_s=0.001):
            pass

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        """Copy until cancelled, or until `stopping` is set: then the round in flight ends as every round does (its
        rows committed, then its entries acknowledged) and no other starts. A failure (Redis or the database away) is
        retried, never fatal."""
        stopping = stopping or asyncio.Event()
        self.metrics.last_success.set_to_current_time()  # a sink failing from its start is stalled since then
        while not stopping.is_set():
            try:
                # The source is read without waiting: the wait for new entries is here, where a stop cuts it short.
                wait_s = 0.0 if await self.step(block_s=0) else self.block_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ledger sink retrying: %s: %s", exc.__class__.__name__, exc)
                wait_s = self.retry_s
            if wait_s:
                with contextlib.suppress(TimeoutError):  # nothing is in flight while it waits
                    await asyncio.wait_for(stopping.wait(), wait_s)
            # redis-py can swallow a cancellation (seen: the sink kept reading, and the router's stop() waited for
            # it forever); a cancelled sink stops anyway.
            raise_if_cancelled()


class RunningSink:
    """A sink copying in the background until its graceful stop: the router's and the standalone one's."""

    def __init__(self, sink: LedgerSink, stopping: asyncio.Event | None = None) -> None:
        self.stopping = stopping or asyncio.Event()
        self.task = asyncio.create_task(sink.run(self.stopping))

    async def stop(self, grace_s: float) -> None:
        """No round starts after this, and the one in flight has `grace_s` to end as every round does (its rows
        committed, then its entries acknowledged). Cancelled instead, a round would leave its entries pending until
        another sink claimed them (claim_idle_s later). One still unfinished after `grace_s` (a database that stopped
        answering) is cancelled all the same: its entries are copied later, once (rows are keyed by their entry)."""
        self.stopping.set()
        await asyncio.wait([self.task], timeout=grace_s)
        await stop_task(self.task)


def _text(value: Any, errors: str = "strict") -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


def _record(fields: Any) -> Record:
    if not fields:
        return None  # the entry was trimmed from the stream after it was delivered
    raw = fields.get(b"record", fields.get("record"))
    try:
        record = loads_stored(raw)
    except (TypeError, ValueError):
        record = None
    if isinstance(record, dict):
        return record
    if raw is None:  # no record field: the entry's fields are what there is to keep
        return json.dumps({_text(k, "backslashreplace"): _text(v, "backslashreplace") for k, v in fields.items()})
    return _text(raw, "backslashreplace")
