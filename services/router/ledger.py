"""The charge ledger's retention: `python -m services.router.ledger export|trim --out FILE`.

The ledger (a Redis stream on the money store) is never trimmed by the router. `export` appends every entry
(or, with --older-than-days, those older than that) to a JSONL file; `trim` first exports the entries older
than ROUTER_LEDGER_RETENTION_DAYS to the file (fsynced), then deletes exactly those, so nothing is dropped
unexported. Each line is {"id": <stream id>, "record": {...}}; a trim interrupted between the two steps
exports the same entries again on its next run, with the same ids."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from llmrouter.settings import load_settings
from services.router.settings import RouterSettings
from services.router.store import LEDGER

BATCH = 1000


async def export(client: Any, out: Path, before_ms: int | None = None) -> str | None:
    """Append the entries (older than `before_ms` when given) to `out`; returns the last id exported."""
    last, start = None, "-"
    end = f"{before_ms - 1}" if before_ms is not None else "+"
    with out.open("a", encoding="utf-8") as file:
        while True:
            entries = await client.xrange(LEDGER, min=start, max=end, count=BATCH)
            for entry_id, fields in entries:
                last = entry_id.decode()
                file.write(json.dumps({"id": last, "record": json.loads(fields[b"record"])}) + "\n")
            if len(entries) < BATCH:
                break
            start = "(" + last if last else "-"
        file.flush()
        os.fsync(file.fileno())
    return last


async def trim(client: Any, out: Path, retention_days: int) -> int:
    """Export the entries older than the retention, then delete them; returns how many were deleted."""
    cutoff_ms = int((time.time() - retention_days * 86400) * 1000)
    if await export(client, out, cutoff_ms) is None:
        return 0
    return int(await client.xtrim(LEDGER, minid=str(cutoff_ms), approximate=False))


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
    import redis.asyncio as redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        if args.command == "trim":
            print(f"trimmed {await trim(client, args.out, settings.ledger_retention_days)} entries into {args.out}")
        else:
            before = None if args.older_than_days is None else int((time.time() - args.older_than_days * 86400) * 1000)
            print(f"exported up to {await export(client, args.out, before)} into {args.out}")
    finally:
        await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
