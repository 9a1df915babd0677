"""The charge ledger's retention: `python -m services.router.ledger export|trim --out FILE`.

The ledger (one Redis stream per shard of the money store) is never trimmed by the router. `export` appends
every entry (or, with --older-than-days, those older than that) to a JSONL file; `trim` first exports the
entries older than ROUTER_LEDGER_RETENTION_DAYS to the file (fsynced), then deletes exactly those, so nothing is
dropped unexported. Each line is {"shard": <n>, "id": <stream id>, "record": {...}}, shard by shard; a trim
interrupted between the two steps exports the same entries again on its next run, with the same ids."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from llmrouter.redis_connect import connect
from llmrouter.settings import load_settings
from services.router.settings import RouterSettings
from services.router.store import SHARDS, ledger_key

BATCH = 1000


async def export(client: Any, out: Path, before_ms: int | None = None) -> int:
    """Append the entries (older than `before_ms` when given) to `out`; returns how many were exported."""
    exported = 0
    end = f"{before_ms - 1}" if before_ms is not None else "+"
    with out.open("a", encoding="utf-8") as file:
        for shard in range(SHARDS):
            start = "-"
            while True:
                entries = await client.xrange(ledger_key(shard), min=start, max=end, count=BATCH)
                for entry_id, fields in entries:
                    line = {"shard": shard, "id": entry_id.decode(), "record": json.loads(fields[b"record"])}
                    file.write(json.dumps(line) + "\n")
                exported += len(entries)
                if len(entries) < BATCH:
                    break
                start = "(" + entries[-1][0].decode()
        file.flush()
        os.fsync(file.fileno())
    return exported


async def trim(client: Any, out: Path, retention_days: int) -> int:
    """Export the entries older than the retention, then delete them; returns how many were deleted."""
    cutoff_ms = int((time.time() - retention_days * 86400) * 1000)
    if not await export(client, out, cutoff_ms):
        return 0
    deleted = 0
    for shard in range(SHARDS):
        deleted += int(await client.xtrim(ledger_key(shard), minid=str(cutoff_ms), approximate=False))
    return deleted


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.router.ledger", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["export", "trim"])
    parser.add_argument("--out", type=Path, required=True, help="JSONL file the entries are appended to")
    parser.add_argument("--older-than-days", type=float, help="export: only entries older than this")
    args = parser.parse_args(argv)
    settings = load_settings(RouterSettings)
    if not settings.redis_url:
        print("ROUTER_REDIS_URL is not set: the in-process ledger lives and dies with its router", file=sys.stderr)
        return 2
    client = connect(settings.redis_url)
    try:
        if args.command == "trim":
            print(f"trimmed {await trim(client, args.out, settings.ledger_retention_days)} entries into {args.out}")
        else:
            before = None if args.older_than_days is None else int((time.time() - args.older_than_days * 86400) * 1000)
            print(f"exported {await export(client, args.out, before)} entries into {args.out}")
    finally:
        await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
