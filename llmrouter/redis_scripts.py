"""A Lua script run by its SHA1 (EVALSHA), sent whole (EVAL) to a server that does not know it yet (NOSCRIPT), which
runs it and keeps it for the next EVALSHA: on a Redis Cluster, only the master that serves the script's keys is asked.
redis-py's register_script loads it on every master instead (SCRIPT LOAD), which fails while any one of them is down:
a router started then ran no script on any master (no admission, no charge, no reconciler's lease), nor one whose
master came back with its script cache empty, for as long as another master stayed down."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError


class Script:
    def __init__(self, client: Any, text: str) -> None:
        self.client = client  # redis.asyncio Redis or RedisCluster
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # nothing ran: the server had never seen it, or lost it (restarted, SCRIPT FLUSH)
            return await self.client.eval(self.text, len(keys), *keys, *args)
