"""`python -m services.ledger export|trim|sink`: the SQL ledger's commands, with the router's ROUTER_LEDGER_SQL_*
settings (ROUTER_REDIS_URL for the sink).

export  writes the rows (optionally --since/--until, Unix seconds or YYYY-MM-DD) as CSV or JSONL
trim    deletes the rows older than --days (default ROUTER_LEDGER_SQL_RETENTION_DAYS) but each account's newest
sink    copies the Redis ledger stream into the table until SIGTERM or SIGINT (then exits 0 once the round in flight
        is committed and acknowledged; during its start-up, once the step in flight is over, having read nothing),
        beside or instead of the routers' sinks; its metrics on
        ROUTER_LEDGER_SINK_METRICS_PORT (9105; 0: none) at ROUTER_LEDGER_SINK_METRICS_HOST (127.0.0.1)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry

from llmrouter.cli.arguments import moment, retention_days
from llmrouter.ports import serve_metrics, setting_name
from llmrouter.redis_connect import connect
from llmrouter.settings import load_settings
from llmrouter.tasks import stop as stop_task
from services.ledger import export
from services.ledger.backlog import report_backlog
from services.ledger.db import LedgerDB, LedgerUnavailable
from services.ledger.service import ledger_for
from services.ledger.settings import LedgerSettings
from services.ledger.sink import LedgerSink, RedisSource, RunningSink, consumer_name
from services.ledger.stop_signals import StopSignals
from services.router.metrics import SINK_METRICS

# How long a stopped sink waits for its round in flight: within Kubernetes' 30 s before it kills the pod, and far more
# than a round takes (a batch of 500 entries a stream).
STOP_GRACE_S = 20.0


def serve_sink_metrics(settings: LedgerSettings) -> None:
    """The sink's metrics alone (and the process'), not the router's that its modules define too: a scrape of the
    sink shows no router counters at 0 beside the routers' own."""
    registry = CollectorRegistry()
    for collector in (*SINK_METRICS, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    port, host = settings.ledger_sink_metrics_port, settings.ledger_sink_metrics_host
    serve_metrics("ledger sink", host, port, setting_name(settings, "ledger_sink_metrics_port"), registry)


async def run_sink(settings: LedgerSettings, db: LedgerDB, stopping: asyncio.Event) -> int:
    """Copy the Redis ledger streams into the table until SIGTERM (a pod stopped) or SIGINT: then the sink reads no
    more, the round in flight ends as every round does (rows committed, then entries acknowledged: none left pending,
    none written twice) and the process exits 0. A round still unfinished after STOP_GRACE_S (a database that stopped
    answering) is cancelled: its entries stay pending and the next sink copies them (rows are keyed by their entry)."""
    if not settings.redis_url:
        print("ROUTER_REDIS_URL is not set: the in-process ledger is copied by its router", file=sys.stderr)
        return 2
    if stopping.is_set():  # during the start-up: nothing was read, so nothing is left to finish
        print("ledger sink: stopped during its start-up", file=sys.stderr)
        return 0
    if settings.ledger_sink_metrics_port:
        serve_sink_metrics(settings)
    client = connect(settings.redis_url)
    source = RedisSource(client, consumer_name(), settings.ledger_sql_claim_idle_s)
    sink = RunningSink(LedgerSink(source, db), stopping)
    others = [asyncio.create_task(report_backlog(source)), asyncio.create_task(stopping.wait())]
    try:
        done, _ = await asyncio.wait([sink.task, *others], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # the sink and the reporter end only by an error: raised
        print("ledger sink: stopping once the round in flight is committed and acknowledged", file=sys.stderr)
    finally:
        await sink.stop(STOP_GRACE_S)
        for task in others:
            await stop_task(task)
        await client.aclose()
    return 0


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(prog="python -m services.ledger", description=__doc__.split("\n\n")[0])
    sub = commands.add_subparsers(dest="command", required=True)
    out = sub.add_parser("export", help="write the rows as CSV or JSONL")
    out.add_argument("--format", choices=export.FORMATS, default="jsonl")
    out.add_argument("--out", type=Path, help="file to write (default: standard output)")
    out.add_argument("--since", type=moment)
    out.add_argument("--until", type=moment)
    out.add_argument("--tenant")
    trim = sub.add_parser("trim", help="delete rows (and rejected entries) older than the retention")
    trim.add_argument("--days", type=retention_days, help="above 0 (default ROUTER_LEDGER_SQL_RETENTION_DAYS)")
    sub.add_parser("sink", help="copy the Redis ledger stream into the table until stopped")
    return commands


def export_rows(db: LedgerDB, args: argparse.Namespace) -> int:
    rows = db.iter_rows(args.since, args.until, args.tenant)
    try:
        if args.out is None:
            count = export.write(rows, sys.stdout, args.format)
        else:
            count = export.write_file(rows, args.out, args.format)
    except OSError as exc:  # where it writes: a directory missing or not its own, a full disk
        print(f"ledger export: cannot write {args.out or 'standard output'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"exported {count} rows", file=sys.stderr)
    return 0


def no_ledger_file(settings: LedgerSettings) -> bool:
    """A SQLite ledger whose file is not there: an export or a trim opening it would make it, empty, and a shell whose
    settings name another file than the router's (a typo, another TMPDIR) exported 0 rows as if the ledger had none. A
    link is there: opening it is refused as ever (services/ledger/service.py)."""
    path = settings.ledger_sql_path
    return not settings.ledger_sql_dsn.get_secret_value() and not (path.exists() or path.is_symlink())


async def main(argv: list[str], signals: StopSignals | None = None) -> int:
    """`signals`: the sink's stop signals, caught since the process began (__main__.py); else from now."""
    args = parser().parse_args(argv)
    # The sink's, before its start-up: a stop meanwhile ends it once PostgreSQL answered or timed out, reading nothing.
    stopping = (signals or StopSignals()).event() if args.command == "sink" else None
    settings = load_settings(LedgerSettings)
    if args.command != "sink" and no_ledger_file(settings):
        path = settings.ledger_sql_path
        said = f"no ledger at {path}: set ROUTER_LEDGER_SQL_PATH (or ROUTER_LEDGER_SQL_DSN) as the router has it"
        print(f"ledger {args.command}: {said}", file=sys.stderr)
        return 1
    db = await asyncio.to_thread(ledger_for, settings)  # the loop meanwhile takes the stop signals
    try:
        if args.command == "export":
            return export_rows(db, args)
        elif args.command == "trim":
            days = args.days if args.days is not None else settings.ledger_sql_retention_days
            if not days:
                print("no retention: ROUTER_LEDGER_SQL_RETENTION_DAYS is 0 and no --days was given", file=sys.stderr)
                return 2
            deleted = await db.trim(time.time() - days * 86400)
            print(f"deleted {deleted} rows and rejected entries older than {days:g} days (each account's newest kept)")
        else:
            assert stopping is not None
            return await run_sink(settings, db, stopping)
    except (
        LedgerUnavailable,
        export.UnreadableRow,
    ) as exc:  # said plainly, no traceback; a file to write kept as it was
        print(f"ledger {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0
