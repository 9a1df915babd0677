"""What a replay holds in memory stays about the file's size when its entries are kept, not landed: on a Redis
Cluster wholly out of reach (Store.shards_away: every shard away) a replay walks the whole file, keeping each entry in
its place. Kept as entries (some 3 KB each, against 0.5-1 KB a line), the outbox an outage left long took some 6 times
its size: the router's replay at shutdown (Upkeep.close, unbounded but for its 5 s), or any on one master down, took
more memory than the chart's limit for the router, and the kubelet killed it. A real cluster client, facing a cluster
none of whose nodes answers."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from services.router.outbox import Outbox
from services.router.store import RedisStore
from tests.redis_servers import free_port
from tests.router.test_outbox_replay_memory import LINES, charge_line


async def test_a_replay_keeping_every_entry_holds_about_the_files_size_in_memory(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    lines = [charge_line(i) for i in range(LINES)]
    outbox.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    size = outbox.path.stat().st_size
    store = RedisStore(f"redis+cluster://127.0.0.1:{free_port()}")  # no node answers
    try:
        tracemalloc.start()
        try:
            landed = await outbox.replay(store)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await store.close()
    assert landed == 0
    assert outbox.path.read_text(encoding="utf-8").splitlines() == lines  # every entry kept, in order
    assert peak < 2 * size, f"a replay of a {size} byte outbox held {peak} bytes"
