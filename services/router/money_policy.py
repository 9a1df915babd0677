"""The money Redis's eviction policy checked again by the upkeep loop, when masters of a Redis Cluster were out of reach
at start-up (money_check.check_money_redis passed over them): a master back with an evicting maxmemory-policy would
otherwise drop spend counters, holds and request ids, unseen, for as long as the router ran. One found so makes the
router fail closed (not serving, llmrouter_router_store_up 0), as it would have refused to start, until its policy is
noeviction; once every master has answered noeviction, nothing is asked again."""

from __future__ import annotations

import asyncio
import logging

from pydantic import SecretStr
from redis.exceptions import RedisClusterException, RedisError

from llmrouter.redis_connect import connect, each_answering_primary
from llmrouter.tasks import raise_if_cancelled
from services.router.money_check import evicting

log = logging.getLogger("llmrouter.router")

# The longest a round waits for the masters' answers: past it (a master's address that never answers), the check
# waits for the next round, and the round's heartbeat for none of it.
ANSWERS_S = 2.0


class EvictionRecheck:
    def __init__(self, url: str | SecretStr, allow_eviction: bool, answers_s: float = ANSWERS_S) -> None:
        self.url = url
        self.allow_eviction = allow_eviction
        self.answers_s = answers_s
        self.due = True  # until every master has answered noeviction
        self.holds = True  # no master found evicting, as last asked
        self._said: set[str] = set()  # each message logged once

    async def never_evicts(self) -> bool:
        """Whether the router may serve: False while a master evicts (unless ROUTER_ALLOW_EVICTING_MONEY_STORE).
        Unasked (the store out of reach), the last answer stands: whether the store answers is the ping's to say."""
        if not self.due:
            return True
        client = connect(self.url, socket_connect_timeout=self.answers_s, socket_timeout=self.answers_s)
        try:
            async with asyncio.timeout(self.answers_s):
                memory, unreachable = await each_answering_primary(client, "INFO", "memory")
        except (TimeoutError, RedisError, RedisClusterException, OSError):
            return self.holds
        finally:
            await client.aclose()
            raise_if_cancelled()
        found = evicting(memory)
        for message in found:
            if message not in self._said:
                self._said.add(message)
                (log.warning if self.allow_eviction else log.error)(message)
        self.holds = self.allow_eviction or not found
        self.due = bool(unreachable) or not self.holds
        return self.holds
