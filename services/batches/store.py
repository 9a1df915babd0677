"""Where batches and their files live: Redis (EDGE_BATCH_REDIS_URL: shared by edge replicas, and what a
restarted edge resumes from), or in process without it (a restart loses them). Per tenant: a file or batch
of another tenant is not found.

Keys (prefix llmrouter:batch:): `file:<id>` a hash (tenant, filename, purpose, created_at, bytes, content; a
batch's output and error files, `parts` and their content in `part:<n>` instead: output_files.py);
`batch:<id>` a hash (the batch's fields, counters included, `parked_until`: the epoch time, by Redis's clock,
before which no edge runs it again, `failures`: its runs that failed in a row, and `unreached`: its runs in a row
that found the router out of reach, runner.py); `batch:<id>:results` a hash from line index to its result line,
written once (the line counts once however often it is retried); `batch:<id>:deferred` a hash from
line index to the provider batch it was sent in (deferral.py); `active` the set of batches still to run;
`lease:<id>` which edge runs a batch now (one at a time, or two would send each line twice); `file:<id>:readers` a
hash of the batches created on an input file (a deleted file's content stays while one of them runs);
`idempotency:<kind>:<hash>` a string, '<id> <body digest>': the file or batch an Idempotency-Key created
(idempotent.py).

A tenant's files and batches are listed from its index, never a scan of the keyspace: `index:{<tenant>}:<kind>`
(kind `file` or `batch`) a sorted set of ids by creation time (ms), and `index:{<tenant>}:<kind>:until` the
same ids by when their hash expires (+inf while it does not: a running batch), both by Redis's clock, as the quota's
below. Entries past that time leave the index whenever it is written, and the index itself expires with its last
entry. A file is listed as well in the
index of its purpose, `index:{<tenant>}:file:purpose:<purpose>` (the same ids and scores, those of one purpose, kept
and expired with the file index), so that a listing of one purpose reads that index alone, not every file of the
tenant. Every entry of the file index is in one purpose's index: when the purposes' hold another count, or a page of
one an entry the file index no longer has (an index written by an edge of an earlier version, which drops entries past
their deadline from the file index alone), a listing of one mends them first. A deleted or vanished entry
stays a TOMBSTONE_S more, hidden, so that a listing that deletes as it pages (the SDK's next page starts `after`
the last id it saw) goes on from there. A tenant's keys share a Redis Cluster hash slot (the braces), so one script
updates them together.

A tenant's stored files are counted against its quota (Store.count_file): `quota:{<tenant>}:file` a hash from file id
to the bytes it is counted (`*`: their sum), and `quota:{<tenant>}:file:until` the same ids by when their count lapses,
as their hash expires. A script checks, counts and uncounts in one step, dropping first the counts past their time:
two uploads at the quota's edge never both pass, and a file's bytes come back once, however it goes. The counts' times
are Redis's clock, so that edges whose clocks disagree agree on when a count lapses."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

from pydantic import SecretStr

from llmrouter.redis_connect import connect
from services.batches import wire

PREFIX = "llmrouter:batch:"
ACTIVE = PREFIX + "active"


def file_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def results_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:results"


def deferred_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:deferred"


def readers_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}:readers"


def index_keys(tenant: str, kind: str) -> tuple[str, str]:
    base = f"{PREFIX}index:{{{tenant}}}:{kind}"
    return base, base + ":until"


# The groups a kind's items are listed in as well, each an index of its own: a file's purpose, one of those files here
# have (an upload's, and a batch's output and error files').
GROUPS: dict[str, tuple[str, ...]] = {"file": ("batch", "batch_output"), "batch": ()}


def group_keys(tenant: str, kind: str) -> list[str]:
    """The indexes of the kind's groups, in the order of GROUPS."""
    base = index_keys(tenant, kind)[0]
    return [f"{base}:purpose:{group}" for group in GROUPS[kind]]


def quota_keys(tenant: str) -> tuple[str, str]:
    base = f"{PREFIX}quota:{{{tenant}}}:file"
    return base, base + ":until"


TOMBSTONE_S = 3600
# A file's count lapses this long after it was taken, until its file is stored (count_file, then keep_counted): an
# edge dying between the two leaks its tenant's quota no longer. At least as long as storing a file takes.
COUNTING_S = 600
HASHES_READ = 1000  # hashes read at a time to group an index's entries
ENDED = (b"completed", b"failed", b"expired", b"cancelled")  # a batch in no other status still reads its input
CANCELLABLE = ("validating", "in_progress")  # a batch that may be cancelled


def sent_key(batch_id: str) -> str:
    """Per line sent to the router, 'sent'; 'refused' once the router did not admit it (runner.py)."""
    return f"{PREFIX}batch:{batch_id}:sent"


class Store(Protocol):
    async def put(self, key: str, fields: dict[str, str | bytes], ttl_s: int | None = None) -> None:
        """The fields written, with the key's expiry in the same step when ttl_s is given: a process killed between
        the two writes left the key without expiry, for ever."""
        ...

    async def get(self, key: str) -> dict[str, bytes]: ...

    async def names(self, key: str) -> set[str]:
        """The hash's field names, not their values: which lines of a batch have a result, without the results (a
        batch's answers run to hundreds of MB)."""

    async def sizes(self, key: str, names: list[str]) -> list[int]:
        """The bytes of each of these fields of the hash (0 for one not set): how many to read at once (values)."""

    async def values(self, key: str, names: list[str]) -> list[bytes | None]:
        """These fields of the hash (None for one not set), in their order."""

    async def complete(self, key: str, fields: dict[str, str | bytes], ttl_s: int) -> bool:
        """The fields of an item still `creating` written, its `creating` dropped and its expiry set to ttl_s, in one
        step: False when it is not (gone, or abandoned as a retry took its creation over), nothing written."""
        ...

    async def abandon(self, key: str) -> bool:
        """The item deleted if it is still `creating`, in one step: True when it was. A creation that stalled and
        resumes then completes nothing (complete), and one completed first is kept."""
        ...

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        """Set a field unless it is set already; True when this call set it."""

    async def add(self, key: str, field: str, amount: int) -> int: ...

    async def activate(self, batch_id: str, active: bool) -> None: ...

    async def active(self) -> set[str]: ...

    async def is_active(self, batch_id: str) -> bool:
        """Whether the batch is among those still to run (one member read, not the set)."""

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        """Take or renew the right to run a batch for ttl_s; False while another owner holds it."""

    async def release(self, batch_id: str, owner: str) -> None:
        """Give up the lease, if this owner holds it: any edge may run the batch from now."""

    async def back_off(self, batch_id: str, first_s: float, most_s: float, counter: str = "failures") -> float | None:
        """A run of the batch failed: one more failure in a row (counted in the hash's `counter` field: `failures`, or
        `unreached` for a run that found the router out of reach), and the batch parked for first_s, doubled with each
        failure in a row, at most most_s, and never past its expires_at while that is to come: its run then expires
        it on time, not up to most_s late, `in_progress` meanwhile. Its first failure past expires_at (its last park,
        if any, ended by then) parks it until now: run again at once, it ends `expired` (sending no new line) unless
        it fails again, backed off then. When it is parked until; None when the batch is gone (nothing written)."""

    async def park(self, batch_id: str, wait_s: float) -> None:
        """The batch parked for wait_s from now by Redis's clock, as back_off parks it (never recreated when gone)."""

    async def clock(self, key: str) -> float:
        """Now (Unix seconds) by the clock of the store's node holding `key`: Redis's, which stamps a batch's creation
        (so its expires_at) as BACK_OFF and PARK read it, not the calling edge's."""

    async def window_left_s(self, batch_ids: list[str]) -> list[float]:
        """How long each batch's window has left (negative once past; inf for a batch gone), by the clock its
        expires_at was stamped in (Store.clock): an edge whose clock is ahead expired batches early, one behind late."""

    async def parked_s(self, batch_ids: list[str]) -> list[float]:
        """How long each batch is still parked (0 when it is not), by the clock its park was written in: Redis's, of
        the node holding its hash. An edge's own clock, ahead, ran a parked batch at once (a failing one with no
        back-off at all), and behind, left it parked that much longer."""

    async def advance(
        self, batch_id: str, statuses: tuple[str, ...], status: str, also: dict[str, str] | None = None
    ) -> str | None:
        """The batch in `status` from now (its `<status>_at`, by the store's clock as its created_at: an edge's own,
        off, dated its run before its creation), with the fields `also`, if it is in one of `statuses`, in one step:
        a cancel, a run starting or ending the batch and the takeover of its stalled creation meanwhile (on this edge
        or another) do not undo each other. When it moved (Unix seconds, as written); None when it did not."""

    async def expire(self, keys: list[str], ttl_s: int) -> None: ...

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        """These fields (all with None) of each hash: a file's metadata read without its content."""

    async def content(self, key: str, field: str = "content") -> bytes | None:
        """A file's content, or one part of it (`field`: output_files.part_field), None when gone; read one at a time:
        reading a reply, redis-py holds it in its stream's buffer too, so a file read takes twice its size for a
        moment."""

    async def drop(self, key: str, field: str) -> None: ...

    async def delete(self, keys: list[str]) -> None: ...

    async def index(self, tenant: str, kind: str, item_id: str, ttl_s: float | None, group: str | None = None) -> None:
        """List the item in its tenant's index (and its group's, one of GROUPS), placed at its first listing, until
        ttl_s from now (None: for as long as it has no expiry), as its hash's expiry is set."""

    async def unindex(self, tenant: str, kind: str, item_id: str) -> None:
        """The item is deleted or gone: its entry stays a TOMBSTONE_S more, if it had longer (in its group's too)."""

    async def page(
        self, tenant: str, kind: str, after: str | None, count: int, newest_first: bool, group: str | None = None
    ) -> list[str] | None:
        """Up to count ids of the tenant's index (of one of its GROUPS), past `after`, in order of creation; None when
        `after` is not in the kind's index (an id of another group is a place in this one all the same)."""

    async def count_file(self, tenant: str, file_id: str, size: int, most: int | None) -> int | None:
        """Count the file's `size` bytes against its tenant's quota for COUNTING_S (keep_counted then follows its
        hash's expiry) unless that takes the tenant's count past `most` (None: never refused); a file counted
        already is counted anew (its later lapse kept). None when counted, else the bytes the tenant has counted
        (nothing written)."""

    async def keep_counted(self, tenant: str, file_id: str, ttl_s: float) -> bool:
        """The file's count, if any, lapses ttl_s from now: as its hash's expiry is set. False when it had none (it
        lapsed, say): nothing extended, the file is not counted."""

    async def uncount_file(self, tenant: str, file_id: str) -> bool:
        """The file's bytes given back, if still counted: True for the one call that gave them back."""

    async def counted_files(self, tenant: str) -> list[str]:
        """The tenant's files counted past COUNTING_S from now (their file stored, or so it was when counted)."""

    async def claim(self, key: str, value: str, ttl_s: int, replacing: str = "") -> str | None:
        """Hold `key` with `value` for ttl_s when no value holds it, or `replacing` does (a record whose item is gone);
        None when this call holds it, else the value that does: an Idempotency-Key's record (idempotent.py)."""

    async def claimed(self, key: str) -> str | None:
        """The value holding `key`, if any."""

    async def unclaim(self, key: str, value: str) -> None:
        """Let go of `key` if `value` still holds it: a creation undone frees its Idempotency-Key."""

    async def close(self) -> None: ...


# Set when free (or held by ARGV[3], a record whose item is gone), in one step: of creations racing on one
# Idempotency-Key one alone holds it. KEYS: the record. ARGV: value, ttl_s, the value it may replace.
CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[3] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# A hash's fields and its expiry, in one step. KEYS: the hash. ARGV: ttl_s, then field, value, ...
PUT_EXPIRING = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# An item's creation ended, in one step, only while it is `creating`: one abandoned (ABANDON) stays gone. KEYS: the
# hash. ARGV: ttl_s, then field, value, ...
COMPLETE = """
if redis.call('HEXISTS', KEYS[1], 'creating') == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HDEL', KEYS[1], 'creating')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# An item deleted only while `creating`: one completed (COMPLETE) first is kept. KEYS: the hash.
ABANDON = """
if redis.call('HEXISTS', KEYS[1], 'creating') == 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# Only its holder's: a record replaced since stays the new holder's.
UNCLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# Take the lease when free, renew it when ours: one step, so two edges never both hold it.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# Only its holder's: a lease since lapsed and taken by another edge stays that edge's.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: a batch's hash. ARGV: first_s, most_s, a day (its window when it has no expires_at, as wire.expires_at), the
# field counting its failures in a row. Never recreates a hash that is gone (evicted, or expired). Store.back_off says
# when it parks. Now is Redis's (TIME; effects replication, Redis 7): an edge whose clock is ahead parked the batch
# for every edge that much longer, one behind not at all.
BACK_OFF = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local failures = redis.call('HINCRBY', KEYS[1], ARGV[4], 1)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local wait = math.min(tonumber(ARGV[1]) * 2 ^ (failures - 1), tonumber(ARGV[2]))
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '')
if not expires then
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '')
  if created then expires = created + tonumber(ARGV[3]) end
end
local parked = now + wait
if expires and now < expires and parked > expires then parked = expires end
if expires and now >= expires and tonumber(redis.call('HGET', KEYS[1], 'parked_until') or '0') <= expires then
  parked = now
end
parked = string.format('%.6f', parked)
redis.call('HSET', KEYS[1], 'parked_until', parked)
return parked
"""

# KEYS: a batch's hash. ARGV: for how long (s). Parked until then by Redis's clock, as BACK_OFF; never recreated.
PARK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('HSET', KEYS[1], 'parked_until', string.format('%.6f', now + tonumber(ARGV[1])))
return 1
"""

# KEYS: a batch's hash. How long it is still parked by this node's clock, the one its park was written in (s, as text);
# false when it is not.
PARKED_S = """
local parked = tonumber(redis.call('HGET', KEYS[1], 'parked_until') or '0')
local clock = redis.call('TIME')
local left = parked - (tonumber(clock[1]) + tonumber(clock[2]) / 1000000)
if left > 0 then return string.format('%.6f', left) end
return false
"""

# KEYS: any key, whose node's clock is read (Store.clock).
TIME = """
local clock = redis.call('TIME')
return string.format('%d.%06d', clock[1], clock[2])
"""

# KEYS: a batch's hash. ARGV: a day (its window when it has no expires_at, as wire.expires_at). How long its window
# has left by this node's clock, the one its creation was stamped in (s, as text); false when the batch is gone.
WINDOW_LEFT_S = """
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '')
if not expires then
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_at') or '')
  if not created then return false end
  expires = created + tonumber(ARGV[1])
end
local clock = redis.call('TIME')
return string.format('%.6f', expires - (tonumber(clock[1]) + tonumber(clock[2]) / 1000000))
"""

# KEYS: a batch's hash. ARGV: its new status, how many statuses it may move from, those, then the fields written with
# the move (name, value, ...). A hash that is gone has no status: never recreated. Moved at now by Redis's clock (TIME;
# effects replication, Redis 7), returned; false when it did not move. Store.advance.
ADVANCE = """
local status = redis.call('HGET', KEYS[1], 'status')
local from = tonumber(ARGV[2])
for i = 3, 2 + from do
  if status == ARGV[i] then
    local at = redis.call('TIME')[1]
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', at, unpack(ARGV, 3 + from))
    return at
  end
end
return false
"""

# KEYS: a tenant's index (ids by creation), its deadlines, then its groups' indexes. ARGV: id, how long from now
# until its deadline (s; '' for none), 'drop' to only shorten the deadline (a tombstone), and the item's group (its
# index's place among the groups' keys, 0 for none). Then the entries past their deadline leave every index (a
# thousand at a time), and the indexes expire with their last entry. Its times (the creation, in ms, where not yet
# listed; the deadlines) are Redis's (TIME; effects replication, Redis 7), not the calling edge's: an edge whose clock
# is behind would list its items past their deadline, gone at the next write, and one ahead drop others' early.
INDEX = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local deadline = '+inf'
if ARGV[2] ~= '' then deadline = string.format('%.6f', now + tonumber(ARGV[2])) end
if ARGV[3] == 'drop' then
  redis.call('ZADD', KEYS[2], 'XX', 'LT', deadline, ARGV[1])
else
  redis.call('ZADD', KEYS[1], 'NX', string.format('%d', clock[1] * 1000 + math.floor(clock[2] / 1000)), ARGV[1])
  redis.call('ZADD', KEYS[2], deadline, ARGV[1])
  local group = tonumber(ARGV[4])
  if group > 0 then
    redis.call('ZADD', KEYS[2 + group], 'NX', redis.call('ZSCORE', KEYS[1], ARGV[1]), ARGV[1])
  end
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.6f', now), 'LIMIT', 0, 1000)
if #gone > 0 then
  for _, key in ipairs(KEYS) do redis.call('ZREM', key, unpack(gone)) end
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
for _, key in ipairs(KEYS) do
  if #last == 0 then
    redis.call('DEL', key)
  elseif last[2] == 'inf' then
    redis.call('PERSIST', key)
  else
    redis.call('EXPIREAT', key, math.ceil(tonumber(last[2])))
  end
end
return 1
"""

# KEYS: a tenant's index, then one group's index. ARGV: ids of that group. Each id still in the index joins the
# group's, at its place, and one no longer in it leaves the group's; the group's index expires with the index.
GROUP = """
for _, id in ipairs(ARGV) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score then redis.call('ZADD', KEYS[2], 'NX', score, id) else redis.call('ZREM', KEYS[2], id) end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then redis.call('PERSIST', KEYS[2]) elseif ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: a tenant's index, then its groups' indexes. How many of its entries are in none of them, less the groups'
# entries no longer in it (0 when each entry is in one group, as every write of this version keeps them).
UNGROUPED = """
local ungrouped = redis.call('ZCARD', KEYS[1])
for i = 2, #KEYS do ungrouped = ungrouped - redis.call('ZCARD', KEYS[i]) end
return ungrouped
"""

# KEYS: the index paged (a tenant's, or one of its groups'), then the tenant's index. ARGV: after ('' for the start),
# count, 'desc' for newest first. False: no such `after`. An `after` outside the group stands where its score (and
# id, between equal scores, as Redis orders them: bytewise) would in it. Else the page's ids, and 1 if it holds a
# group's entry no longer in the tenant's index (one an earlier edge dropped from that index alone), 0 if not.
PAGE = """
local desc = ARGV[3] == 'desc'
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local start = 0
if ARGV[1] ~= '' then
  local rank
  if desc then rank = redis.call('ZREVRANK', KEYS[1], ARGV[1]) else rank = redis.call('ZRANK', KEYS[1], ARGV[1]) end
  if rank then
    start = rank + 1
  else
    local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
    if not score then return false end
    if desc then
      start = redis.call('ZCOUNT', KEYS[1], '(' .. score, '+inf')
    else
      start = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. score)
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], score, score)) do
      if (desc and before(ARGV[1], id)) or (not desc and before(id, ARGV[1])) then start = start + 1 end
    end
  end
end
local stop = start + tonumber(ARGV[2]) - 1
local ids
if desc then
  ids = redis.call('ZREVRANGE', KEYS[1], start, stop)
else
  ids = redis.call('ZRANGE', KEYS[1], start, stop)
end
if KEYS[1] ~= KEYS[2] then
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', KEYS[2], id) then return {ids, 1} end
  end
end
return {ids, 0}
"""


# KEYS: a tenant's quota_keys. The counts past their time leave first, a thousand at a time, and the keys expire with
# the last count. Times are Redis's own (TIME; effects replication, Redis 7), not the calling edge's: an edge whose
# clock is off by more than COUNTING_S would lapse others' counts early, or its own at once.
QUOTA_LAPSE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local function lapse(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(gone) do
    local size = redis.call('HGET', KEYS[1], id)
    if size then
      redis.call('HINCRBY', KEYS[1], '*', -tonumber(size))
      redis.call('HDEL', KEYS[1], id)
    end
  end
  if #gone > 0 then redis.call('ZREM', KEYS[2], unpack(gone)) end
end
local function settle()
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', KEYS[1], KEYS[2])
  else
    for _, key in ipairs(KEYS) do redis.call('EXPIREAT', key, math.ceil(tonumber(last[2]))) end
  end
end
lapse(now)
"""

# ARGV: file id, bytes, for how long (s; a later lapse kept), most ('' for none). False when counted, else the tenant's
# count (nothing written).
COUNT_FILE = (
    QUOTA_LAPSE
    + """
local total = tonumber(redis.call('HGET', KEYS[1], '*') or '0')
local after = total - tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') + tonumber(ARGV[2])
if ARGV[4] ~= '' and after > tonumber(ARGV[4]) then return total end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], '*', after)
redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[3]), ARGV[1])
settle()
return false
"""
)

# ARGV: file id, for how long (s). Only a count still there: 1 when there was one.
KEEP_COUNTED = (
    QUOTA_LAPSE
    + """
local kept = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[1])
settle()
return kept and 1 or 0
"""
)

# ARGV: file id. 1 when this call gave its bytes back.
UNCOUNT_FILE = (
    QUOTA_LAPSE
    + """
local size = redis.call('HGET', KEYS[1], ARGV[1])
if size then
  redis.call('HINCRBY', KEYS[1], '*', -tonumber(size))
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
settle()
return size and 1 or 0
"""
)

# KEYS: a tenant's quota_keys. ARGV: how far from now (s). The ids counted past then, by Redis's clock.
COUNTED_FILES = """
local clock = redis.call('TIME')
local since = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[2], since, '+inf')
"""


class RedisStore:
    def __init__(self, url: str | SecretStr) -> None:
        self.redis = connect(url, socket_connect_timeout=2, socket_timeout=10)
        self._reading = asyncio.Lock()

    async def put(self, key: str, fields: dict[str, str | bytes], ttl_s: int | None = None) -> None:
        if ttl_s is None:
            await self.redis.hset(key, mapping=fields)
        else:
            await self.redis.eval(PUT_EXPIRING, 1, key, ttl_s, *(part for field in fields.items() for part in field))

    async def complete(self, key: str, fields: dict[str, str | bytes], ttl_s: int) -> bool:
        written = (part for field in fields.items() for part in field)
        return bool(await self.redis.eval(COMPLETE, 1, key, ttl_s, *written))

    async def abandon(self, key: str) -> bool:
        return bool(await self.redis.eval(ABANDON, 1, key))

    async def get(self, key: str) -> dict[str, bytes]:
        raw = await self.redis.hgetall(key)
        return {_text(k): _bytes(v) for k, v in raw.items()}

    async def names(self, key: str) -> set[str]:
        return {_text(name) for name in await self.redis.hkeys(key)}

    async def sizes(self, key: str, names: list[str]) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:  # one key: one slot
            for name in names:
                pipe.hstrlen(key, name)
            return [int(size) for size in await pipe.execute()]

    async def values(self, key: str, names: list[str]) -> list[bytes | None]:
        return [None if value is None else _bytes(value) for value in await self.redis.hmget(key, names)]

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        return bool(await self.redis.hsetnx(key, field, value))

    async def add(self, key: str, field: str, amount: int) -> int:
        return int(await self.redis.hincrby(key, field, amount))

    async def activate(self, batch_id: str, active: bool) -> None:
        if active:
            await self.redis.sadd(ACTIVE, batch_id)
        else:
            await self.redis.srem(ACTIVE, batch_id)

    async def active(self) -> set[str]:
        return {_text(m) for m in await self.redis.smembers(ACTIVE)}

    async def is_active(self, batch_id: str) -> bool:
        return bool(await self.redis.sismember(ACTIVE, batch_id))

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        return bool(await self.redis.eval(LEASE, 1, f"{PREFIX}lease:{batch_id}", owner, ttl_s))

    async def release(self, batch_id: str, owner: str) -> None:
        await self.redis.eval(RELEASE, 1, f"{PREFIX}lease:{batch_id}", owner)

    async def back_off(self, batch_id: str, first_s: float, most_s: float, counter: str = "failures") -> float | None:
        args = (first_s, most_s, wire.DAY_S, counter)
        until = await self.redis.eval(BACK_OFF, 1, batch_key(batch_id), *args)
        return None if until is None else float(until)

    async def park(self, batch_id: str, wait_s: float) -> None:
        await self.redis.eval(PARK, 1, batch_key(batch_id), repr(wait_s))

    async def clock(self, key: str) -> float:
        return float(await self.redis.eval(TIME, 1, key))

    async def window_left_s(self, batch_ids: list[str]) -> list[float]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.eval(WINDOW_LEFT_S, 1, batch_key(batch_id), wire.DAY_S)
            replies = await pipe.execute()
        return [math.inf if left is None else float(left) for left in replies]

    async def parked_s(self, batch_ids: list[str]) -> list[float]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.eval(PARKED_S, 1, batch_key(batch_id))
            replies = await pipe.execute()
        return [0.0 if left is None else float(left) for left in replies]

    async def advance(
        self, batch_id: str, statuses: tuple[str, ...], status: str, also: dict[str, str] | None = None
    ) -> str | None:
        written = [part for field in (also or {}).items() for part in field]
        at = await self.redis.eval(ADVANCE, 1, batch_key(batch_id), status, len(statuses), *statuses, *written)
        return None if at is None else _text(at)

    async def expire(self, keys: list[str], ttl_s: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.expire(key, ttl_s)
            await pipe.execute()

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key) if names is None else pipe.hmget(key, names)
            replies = await pipe.execute()
        if names is None:
            return [{_text(k): _bytes(v) for k, v in reply.items()} for reply in replies]
        return [{n: _bytes(v) for n, v in zip(names, reply, strict=True) if v is not None} for reply in replies]

    async def content(self, key: str, field: str = "content") -> bytes | None:
        async with self._reading:
            value = await self.redis.hget(key, field)
        return None if value is None else _bytes(value)

    async def drop(self, key: str, field: str) -> None:
        await self.redis.hdel(key, field)

    async def delete(self, keys: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:  # one key at a time: a cluster's slots differ
            for key in keys:
                pipe.delete(key)
            await pipe.execute()

    async def index(self, tenant: str, kind: str, item_id: str, ttl_s: float | None, group: str | None = None) -> None:
        place = 0 if group is None else GROUPS[kind].index(group) + 1
        await self._index(tenant, kind, item_id, "" if ttl_s is None else repr(ttl_s), "keep", place)

    async def unindex(self, tenant: str, kind: str, item_id: str) -> None:
        await self._index(tenant, kind, item_id, repr(TOMBSTONE_S), "drop", 0)

    async def _index(self, tenant: str, kind: str, item_id: str, ttl_s: str, mode: str, group: int) -> None:
        keys = [*index_keys(tenant, kind), *group_keys(tenant, kind)]
        await self.redis.eval(INDEX, len(keys), *keys, item_id, ttl_s, mode, group)

    async def page(
        self, tenant: str, kind: str, after: str | None, count: int, newest_first: bool, group: str | None = None
    ) -> list[str] | None:
        order, whole = "desc" if newest_first else "asc", index_keys(tenant, kind)[0]
        paged = whole
        if group is not None:
            groups = group_keys(tenant, kind)
            paged = groups[GROUPS[kind].index(group)]
            if await self.redis.eval(UNGROUPED, 1 + len(groups), whole, *groups) != 0:
                await self._group(tenant, kind)
        found = await self.redis.eval(PAGE, 2, paged, whole, after or "", count, order)
        if found is not None and found[1]:
            # Entries an earlier edge dropped from the index alone, which hid as many it listed in no group from the
            # count: the groups are mended, and the page read again (a gone entry left in it is passed over).
            await self._group(tenant, kind)
            found = await self.redis.eval(PAGE, 2, paged, whole, after or "", count, order)
        return None if found is None else [_text(i) for i in found[0]]

    async def _group(self, tenant: str, kind: str) -> None:
        """Every entry of a file index in no group's index in its group's, read from its hash (one whose hash is
        gone, or of no group, in the first: a listing passes over it as over any gone): the entries an edge of an
        earlier version listed, which indexed none by group. The ids read at once, so that none is passed over as
        others leave; their hashes a thousand at a time. First, the groups' entries such an edge dropped from the
        index alone (past their deadline) leave theirs: listed nowhere, they made up the count of as many entries in
        no group. An entry already in a group stays in that one alone, its hash perhaps gone (a deleted file's)."""
        whole, groups = index_keys(tenant, kind)[0], group_keys(tenant, kind)
        grouped: set[str] = set()
        for key in groups:
            members = [_text(i) for i in await self.redis.zrange(key, 0, -1)]
            for start in range(0, len(members), HASHES_READ):
                await self.redis.eval(GROUP, 2, whole, key, *members[start : start + HASHES_READ])
            grouped.update(members)
        ids = [i for i in map(_text, await self.redis.zrange(whole, 0, -1)) if i not in grouped]
        for start in range(0, len(ids), HASHES_READ):
            chunk = ids[start : start + HASHES_READ]
            found = await self.fields([file_key(i) for i in chunk], ["purpose"])
            places = [_place(GROUPS[kind], f.get("purpose", b"").decode()) for f in found]
            for place, key in enumerate(groups):
                if members := [i for i, at in zip(chunk, places, strict=True) if at == place]:
                    await self.redis.eval(GROUP, 2, whole, key, *members)

    async def count_file(self, tenant: str, file_id: str, size: int, most: int | None) -> int | None:
        args = (file_id, size, repr(COUNTING_S), "" if most is None else most)
        total = await self.redis.eval(COUNT_FILE, 2, *quota_keys(tenant), *args)
        return None if total is None else int(total)

    async def keep_counted(self, tenant: str, file_id: str, ttl_s: float) -> bool:
        return bool(await self.redis.eval(KEEP_COUNTED, 2, *quota_keys(tenant), file_id, repr(ttl_s)))

    async def uncount_file(self, tenant: str, file_id: str) -> bool:
        return bool(await self.redis.eval(UNCOUNT_FILE, 2, *quota_keys(tenant), file_id))

    async def counted_files(self, tenant: str) -> list[str]:
        return [_text(i) for i in await self.redis.eval(COUNTED_FILES, 2, *quota_keys(tenant), repr(COUNTING_S))]

    async def claim(self, key: str, value: str, ttl_s: int, replacing: str = "") -> str | None:
        held = await self.redis.eval(CLAIM, 1, key, value, ttl_s, replacing)
        return None if held is None else _text(held)

    async def claimed(self, key: str) -> str | None:
        held = await self.redis.get(key)
        return None if held is None else _text(held)

    async def unclaim(self, key: str, value: str) -> None:
        await self.redis.eval(UNCLAIM, 1, key, value)

    async def close(self) -> None:
        await self.redis.aclose()


def _place(groups: tuple[str, ...], group: str) -> int:
    """The group's place among the kind's; the first's for one of none of them."""
    return groups.index(group) if group in groups else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class MemoryStore:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.running: set[str] = set()
        self.expiry: dict[str, float] = {}
        # (tenant, kind) -> id -> (created, deadline, group), the deadline on the monotonic clock as `expiry`
        self.indexes: dict[tuple[str, str], dict[str, tuple[float, float, str | None]]] = {}
        self.claims: dict[str, tuple[str, float]] = {}  # key -> (value, deadline on the monotonic clock)
        self.counted: dict[str, dict[str, tuple[int, float]]] = {}  # tenant -> file id -> (bytes, deadline, monotonic)

    async def put(self, key: str, fields: dict[str, str | bytes], ttl_s: int | None = None) -> None:
        entry = self.hashes.setdefault(key, {})
        entry.update({k: v.encode() if isinstance(v, str) else v for k, v in fields.items()})
        if ttl_s is not None:
            await self.expire([key], ttl_s)

    async def complete(self, key: str, fields: dict[str, str | bytes], ttl_s: int) -> bool:
        if "creating" not in await self.get(key):  # read and written with no await between them that yields: one step
            return False
        await self.put(key, fields, ttl_s)
        del self.hashes[key]["creating"]
        return True

    async def abandon(self, key: str) -> bool:
        if "creating" not in await self.get(key):
            return False
        await self.delete([key])
        return True

    async def get(self, key: str) -> dict[str, bytes]:
        if self.expiry.get(key, math.inf) <= time.monotonic():
            self.hashes.pop(key, None)
            self.expiry.pop(key, None)
        return dict(self.hashes.get(key, {}))

    async def names(self, key: str) -> set[str]:
        return set(await self.get(key))

    async def sizes(self, key: str, names: list[str]) -> list[int]:
        entry = await self.get(key)
        return [len(entry.get(name, b"")) for name in names]

    async def values(self, key: str, names: list[str]) -> list[bytes | None]:
        entry = await self.get(key)
        return [entry.get(name) for name in names]

    async def put_once(self, key: str, field: str, value: bytes) -> bool:
        entry = self.hashes.setdefault(key, {})
        if field in entry:
            return False
        entry[field] = value
        return True

    async def add(self, key: str, field: str, amount: int) -> int:
        entry = self.hashes.setdefault(key, {})
        entry[field] = str(int(entry.get(field, b"0")) + amount).encode()
        return int(entry[field])

    async def activate(self, batch_id: str, active: bool) -> None:
        (self.running.add if active else self.running.discard)(batch_id)

    async def active(self) -> set[str]:
        return set(self.running)

    async def is_active(self, batch_id: str) -> bool:
        return batch_id in self.running

    async def lease(self, batch_id: str, owner: str, ttl_s: int) -> bool:
        return True  # one process: the runner itself never runs a batch twice

    async def release(self, batch_id: str, owner: str) -> None:
        pass

    async def back_off(self, batch_id: str, first_s: float, most_s: float, counter: str = "failures") -> float | None:
        batch = await self.get(batch_key(batch_id))
        if not batch:
            return None
        failures = await self.add(batch_key(batch_id), counter, 1)
        at = time.time()
        until = at + min(first_s * 2 ** min(failures - 1, 64), most_s)
        if "expires_at" in batch or "created_at" in batch:
            expires = wire.expires_at(batch)
            if at < expires:
                until = min(until, expires)
            elif float(batch.get("parked_until", b"0")) <= expires:
                until = at
        await self.put(batch_key(batch_id), {"parked_until": repr(until)})
        return until

    async def park(self, batch_id: str, wait_s: float) -> None:
        if await self.get(batch_key(batch_id)):  # read and written with no await between them that yields: one step
            await self.put(batch_key(batch_id), {"parked_until": repr(time.time() + wait_s)})

    async def clock(self, key: str) -> float:
        return time.time()  # one process: its clock is the only one

    async def window_left_s(self, batch_ids: list[str]) -> list[float]:
        found = await self.fields([batch_key(b) for b in batch_ids], ["created_at", "expires_at"])
        return [wire.expires_at(f) - time.time() if f else math.inf for f in found]

    async def parked_s(self, batch_ids: list[str]) -> list[float]:
        parked = await self.fields([batch_key(b) for b in batch_ids], ["parked_until"])
        return [max(0.0, float(p.get("parked_until", b"0")) - time.time()) for p in parked]

    async def advance(
        self, batch_id: str, statuses: tuple[str, ...], status: str, also: dict[str, str] | None = None
    ) -> str | None:
        if (await self.get(batch_key(batch_id))).get("status", b"").decode() not in statuses:
            return None  # read and written with no await between them that yields: one step
        at = now()
        await self.put(batch_key(batch_id), {"status": status, f"{status}_at": at, **(also or {})})
        return at

    async def expire(self, keys: list[str], ttl_s: int) -> None:
        now = time.monotonic()
        for key, deadline in list(self.expiry.items()):  # what expired unread goes now
            if deadline <= now:
                self.hashes.pop(key, None)
                del self.expiry[key]
        self.expiry.update({key: now + ttl_s for key in keys})

    async def fields(self, keys: list[str], names: list[str] | None) -> list[dict[str, bytes]]:
        found = [await self.get(key) for key in keys]
        return found if names is None else [{n: f[n] for n in names if n in f} for f in found]

    async def content(self, key: str, field: str = "content") -> bytes | None:
        return (await self.get(key)).get(field)

    async def drop(self, key: str, field: str) -> None:
        self.hashes.get(key, {}).pop(field, None)

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.hashes.pop(key, None)
            self.expiry.pop(key, None)

    async def index(self, tenant: str, kind: str, item_id: str, ttl_s: float | None, group: str | None = None) -> None:
        entries = self._entries(tenant, kind)
        created, _, listed = entries.get(item_id, (time.time(), 0.0, None))
        entries[item_id] = (created, math.inf if ttl_s is None else time.monotonic() + ttl_s, group or listed)

    async def unindex(self, tenant: str, kind: str, item_id: str) -> None:
        entries = self._entries(tenant, kind)
        if item_id in entries:
            created, until, group = entries[item_id]
            entries[item_id] = (created, min(until, time.monotonic() + TOMBSTONE_S), group)

    def _entries(self, tenant: str, kind: str) -> dict[str, tuple[float, float, str | None]]:
        """The tenant's index, without the entries past their deadline."""
        entries = self.indexes.setdefault((tenant, kind), {})
        clock = time.monotonic()
        for gone in [i for i, (_, until, _) in entries.items() if until <= clock]:
            del entries[gone]
        return entries

    async def page(
        self, tenant: str, kind: str, after: str | None, count: int, newest_first: bool, group: str | None = None
    ) -> list[str] | None:
        entries = self._entries(tenant, kind)
        ordered = sorted(entries, key=lambda i: (entries[i][0], i), reverse=newest_first)
        if after is not None:
            if after not in entries:
                return None
            ordered = ordered[ordered.index(after) + 1 :]
        return [i for i in ordered if group is None or entries[i][2] == group][:count]

    async def count_file(self, tenant: str, file_id: str, size: int, most: int | None) -> int | None:
        counts = self._counts(tenant)
        total = sum(s for s, _ in counts.values())
        if most is not None and total - counts.get(file_id, (0, 0.0))[0] + size > most:
            return total
        counts[file_id] = (size, max(time.monotonic() + COUNTING_S, counts.get(file_id, (0, 0.0))[1]))
        return None

    async def keep_counted(self, tenant: str, file_id: str, ttl_s: float) -> bool:
        counts = self._counts(tenant)
        if file_id not in counts:
            return False
        counts[file_id] = (counts[file_id][0], time.monotonic() + ttl_s)
        return True

    async def uncount_file(self, tenant: str, file_id: str) -> bool:
        return self._counts(tenant).pop(file_id, None) is not None

    async def counted_files(self, tenant: str) -> list[str]:
        since = time.monotonic() + COUNTING_S
        return [i for i, (_, until) in self._counts(tenant).items() if until > since]

    def _counts(self, tenant: str) -> dict[str, tuple[int, float]]:
        """The tenant's counted files, without those past their time."""
        counts = self.counted.setdefault(tenant, {})
        clock = time.monotonic()
        for gone in [i for i, (_, until) in counts.items() if until <= clock]:
            del counts[gone]
        return counts

    async def claim(self, key: str, value: str, ttl_s: int, replacing: str = "") -> str | None:
        held = await self.claimed(key)
        if held is not None and held != replacing:
            return held
        self.claims[key] = (value, time.monotonic() + ttl_s)
        return None

    async def claimed(self, key: str) -> str | None:
        value, until = self.claims.get(key, ("", 0.0))
        if until <= time.monotonic():
            self.claims.pop(key, None)
            return None
        return value

    async def unclaim(self, key: str, value: str) -> None:
        if await self.claimed(key) == value:
            del self.claims[key]

    async def close(self) -> None:
        self.hashes.clear()


async def unread(store: Store, file_id: str) -> bool:
    """True when no running batch reads the file."""
    readers = list(await store.get(readers_key(file_id)))
    statuses = await store.fields([batch_key(b) for b in readers], ["status"])
    return all(s.get("status", ENDED[0]) in ENDED for s in statuses)  # a batch gone from the store reads nothing


async def delete_if_unread(store: Store, file_id: str) -> None:
    """Remove a file marked deleted once no running batch reads it: one deleted while its batch runs keeps its
    content (and its count against its tenant's quota) until the batch ends. Called after each change to either
    (the mark, a batch's end), so whichever comes last removes it."""
    fields = (await store.fields([file_key(file_id)], ["deleted", "tenant"]))[0]
    if "deleted" not in fields or not await unread(store, file_id):
        return
    if "tenant" in fields:
        await remove_file(store, fields["tenant"].decode(), file_id)
    else:  # a mark alone, written by a DELETE after the file went (a batch's end removed it, or it expired)
        await store.delete([file_key(file_id), readers_key(file_id)])


async def remove_file(store: Store, tenant: str, file_id: str) -> None:
    """The file removed, then its bytes given back to its tenant: in this order, an edge dying between the two leaves
    it counted, not stored (quota.FileQuota mends that), where the other would leave it stored uncounted."""
    await store.delete([file_key(file_id), readers_key(file_id)])
    await store.uncount_file(tenant, file_id)


def open_store(url: str | SecretStr | None) -> Store:
    return RedisStore(url) if url else MemoryStore()


def now() -> str:
    """Now by this process's clock, the in-process store's: a Redis's is its own (stamp)."""
    return str(int(time.time()))


async def stamp(store: Store, key: str) -> str:
    """Now by the clock of the store's node holding `key` (Store.clock), in whole seconds as a batch's times are."""
    return str(int(await store.clock(key)))
