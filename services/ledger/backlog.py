"""How far behind the SQL sink is: the age of the oldest ledger entry it has not copied, as
llmrouter_router_ledger_sink_backlog_age_seconds, and how many entries wait, read and not committed or not read yet
(llmrouter_router_ledger_sink_backlog_entries). A sink that copies slower than charges arrive still succeeds
every round (its last-success stamp stays fresh) while that age grows; a stalled one lets it grow too. Read beside
the sink's copying, not by it, so a sink stuck on its database still reports it."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmrouter.redis_scripts import Script
from llmrouter.tasks import raise_if_cancelled
from services.ledger.sink_metrics import PROCESS_SINK_METRICS, SinkMetrics

if TYPE_CHECKING:
    from services.ledger.sink import Source

log = logging.getLogger("llmrouter.ledger")

READ_EVERY_S = 15.0  # its alert waits 15 minutes; each read is one script a ledger stream

# Of stream KEYS[1] and group ARGV[1], as {age, pending, unread}: the age in ms, by this server's clock (the one that
# stamped the entry ids, XADD *), of the oldest entry the group has not acknowledged: its oldest pending entry (read by
# a sink, not yet committed), else the first after its last-delivered id (not read yet); with no such group, the
# stream's first (a sink makes the group from the stream's start). 0 when none waits. Then the group's pending
# entries, and those not delivered yet (its lag; the whole stream without a group; -1 where Redis cannot tell: before
# 7.0, or after entries were deleted past the group's last-delivered id). Read-only; the group's state is read at one
# instant.
BACKLOG = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, 0} end
local oldest, after, pending_count, unread = nil, '-', 0, nil
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == ARGV[1] then
    unread = fields['lag'] or -1
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
    pending_count = pending[1]
    if pending[1] > 0 then oldest = pending[2] else after = '(' .. fields['last-delivered-id'] end
  end
end
if not unread then unread = redis.call('XLEN', KEYS[1]) end
if not oldest then
  local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)[1]
  if not first then return {0, pending_count, unread} end
  oldest = first[1]
end
local now = redis.call('TIME')
local age = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(string.match(oldest, '^(%d+)'))
return {math.max(age, 0), pending_count, unread}
"""


@dataclass(frozen=True)
class Backlog:
    """What the SQL sink has not copied: the age of its oldest entry (0: none waits), the entries read and not
    committed (pending), and those not read yet (unread; NaN when Redis cannot count them)."""

    age_s: float
    pending: float = 0.0
    unread: float = 0.0


async def read_backlog(client: Any, streams: list[str], group: str) -> Backlog:
    """The backlog of `group` over `streams`. One script a stream, each on its own slot on a Redis Cluster; not
    pipelined (sink.RedisSource.read says why)."""
    script = Script(client, BACKLOG)
    replies = [await script(keys=[stream], args=[group]) for stream in streams]
    unread = [int(reply[2]) for reply in replies]
    return Backlog(
        age_s=max((int(reply[0]) for reply in replies), default=0) / 1000,
        pending=float(sum(int(reply[1]) for reply in replies)),
        unread=math.nan if any(count < 0 for count in unread) else float(sum(unread)),
    )


async def report_backlog(
    source: Source, every_s: float = READ_EVERY_S, metrics: SinkMetrics = PROCESS_SINK_METRICS
) -> None:
    """Set the gauges (the process's, or a test's own: SinkMetrics) from the source every `every_s` until cancelled;
    NaN while it cannot be read (the money store out of reach: its own alerts say so), never an old figure."""
    failing = False
    while True:
        try:
            backlog = await source.backlog()
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("the ledger's backlog cannot be read: %s: %s", exc.__class__.__name__, exc)
            failing = True
            backlog = Backlog(math.nan, math.nan, math.nan)
        raise_if_cancelled()  # redis-py can swallow a cancellation (llmrouter/tasks.py)
        metrics.backlog_age.set(backlog.age_s)
        metrics.backlog_entries.labels("pending").set(backlog.pending)
        metrics.backlog_entries.labels("unread").set(backlog.unread)
        await asyncio.sleep(every_s)
