"""How far behind the SQL sink is: the age of the oldest ledger entry it has not copied, as
llmrouter_router_ledger_sink_backlog_age_seconds. A sink that copies slower than charges arrive still succeeds
every round (its last-success stamp stays fresh) while that age grows; a stalled one lets it grow too. Read beside
the sink's copying, not by it, so a sink stuck on its database still reports it."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from llmrouter.tasks import raise_if_cancelled
from services.router.metrics import LEDGER_SINK_BACKLOG_AGE

if TYPE_CHECKING:
    from services.ledger.sink import Source

log = logging.getLogger("llmrouter.ledger")

READ_EVERY_S = 15.0  # its alert waits 15 minutes; each read is one script a ledger stream

# The age in ms, by this server's clock (the one that stamped the entry ids, XADD *), of the oldest entry of stream
# KEYS[1] that group ARGV[1] has not acknowledged: its oldest pending entry (read by a sink, not yet committed), else
# the first after its last-delivered id (not read yet); with no such group, the stream's first (a sink makes the
# group from the stream's start). 0 when none waits. Read-only; the group's state is read at one instant.
OLDEST_UNCOPIED_AGE_MS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local oldest, after = nil, '-'
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == ARGV[1] then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
    if pending[1] > 0 then oldest = pending[2] else after = '(' .. fields['last-delivered-id'] end
  end
end
if not oldest then
  local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)[1]
  if not first then return 0 end
  oldest = first[1]
end
local now = redis.call('TIME')
local age = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(string.match(oldest, '^(%d+)'))
return math.max(age, 0)
"""


async def oldest_uncopied_age_s(client: Any, streams: list[str], group: str) -> float:
    """The age of the oldest entry of `streams` that `group` has not acknowledged (0: none waits). One script a
    stream, each on its own slot on a Redis Cluster; not pipelined (sink.RedisSource.read says why)."""
    script = client.register_script(OLDEST_UNCOPIED_AGE_MS)
    ages = [await script(keys=[stream], args=[group]) for stream in streams]
    return max(ages, default=0) / 1000


async def report_backlog(source: Source, every_s: float = READ_EVERY_S) -> None:
    """Set the gauge from the source every `every_s` until cancelled; NaN while it cannot be read (the money store
    out of reach: its own alerts say so), never an old figure."""
    failing = False
    while True:
        try:
            age = await source.backlog_age_s()
            failing = False
        except Exception as exc:
            if not failing:
                log.warning("the ledger's backlog cannot be read: %s: %s", exc.__class__.__name__, exc)
            failing = True
            age = math.nan
        raise_if_cancelled()  # redis-py can swallow a cancellation (llmrouter/tasks.py)
        LEDGER_SINK_BACKLOG_AGE.set(age)
        await asyncio.sleep(every_s)
