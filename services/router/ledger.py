"""The charge ledger's retention: `python -m services.router.ledger export|trim --out FILE | trim --copied-only`.

The ledger (one Redis stream per shard of the money store) is never trimmed by the router. `export` appends
every entry (or, with --older-than-days, those older than that) to a JSONL file; `trim` first exports the
entries older than ROUTER_LEDGER_RETENTION_DAYS to the file (fsynced), then deletes exactly those, so nothing is
dropped unexported. Where the SQL sink (services/ledger/sink.py) reads a shard's stream, `trim` exports and deletes
only those its consumer group has acknowledged (below its first entry not acknowledged, read before the export, and
again by the deletion's script as the group stands then), so none is lost to the SQL ledger: the rest stay on the
stream, said on stderr, for a later trim once the sink has copied them; a stream no such group reads is trimmed to
the retention. Each line is {"shard": <n>, "id": <stream id>, "record": {...}}, shard by shard, the record
as the router's charge built it (the stream keeps it compact: services/router/store/ledger_entry.py); a trim
interrupted between the two steps finds the same entries again on its next run, which appends only those its file
does not hold whole (services/router/archived_lines.py): each is archived once (`export` appends every entry it
reads). A run holds its file alone (an exclusive lock) while it exports and deletes: another run on the same file
waits for it. A group no
sink will read again keeps everything from where it stopped: the failed run says how long ago it last read, and the
command that deletes it; `trim --out FILE --abandon-group llmrouter-sql-sink` deletes it itself where none of its
consumers has read for ABANDON_IDLE_S, never a live sink's.
`trim --out FILE --monthly` appends each entry to the file of the month (UTC) Redis added it in, beside FILE
(ledger-trimmed.jsonl: ledger-trimmed-2026-11.jsonl), so no file grows for ever; an entry found again is looked for
in the file it is already in. A month's file is written to until a run at least the retention after the month's end
keeps nothing back (none of its entries is left older than the retention); only then can it be copied away and deleted.
FILE is still the lock (a run of a version before appends to it). `--min-free-percent P` fails the run (exit 1, after
trimming) when the volume holding FILE has less than P% of its space free, so the failed Job is seen before the volume
fills.
`trim --copied-only` exports nothing: where the SQL sink keeps the ledger, it deletes
the entries older than the retention that the sink's consumer group has copied and acknowledged, never one it
has not (a shard whose stream has no such group keeps every entry); the sink acknowledges an entry that is no row
(unreadable, or refused by the database) only once it is kept whole in the SQL ledger's ledger_rejected table."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from redis.exceptions import ResponseError

from llmrouter.cli.arguments import non_negative, percent
from llmrouter.json_depth import loads_stored
from llmrouter.redis_connect import connect
from llmrouter.settings import load_settings
from services.ledger.settings import LedgerSettings
from services.ledger.sink import FORGET_IDLE_S, GROUP
from services.router.archived_lines import Archived, EntryId, entry_id, tail_start
from services.router.store import SHARDS, ledger_key, lua
from services.router.store.ledger_entry import expanded

BATCH = 1000

# Deletes the entries of KEYS[1] below ARGV[1] (a stream id) that group ARGV[2] has acknowledged: those up to its
# last-delivered id and below its oldest pending one. One script, so the group's state cannot change between
# being read and the trim. Returns the number deleted; on a stream with no such group, all below ARGV[1] when ARGV[3]
# is '1' (trim --out: no sink copies them, the file has them), else none, and -1.
TRIM_COPIED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function below(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local delivered = nil
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == ARGV[2] then delivered = fields['last-delivered-id'] end
end
if not delivered then
  if ARGV[3] == '1' then return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1]) end
  return -1
end
local bound = ARGV[1]
local ms, seq = parse(delivered)
local after = string.format('%.0f-%.0f', ms, seq + 1)
if below(after, bound) then bound = after end
local pending = redis.call('XPENDING', KEYS[1], ARGV[2])
if pending[1] > 0 and below(pending[2], bound) then bound = pending[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)
"""


# Deletes group ARGV[1] of stream KEYS[1] when none of its consumers has read for ARGV[2] ms (or it has none): trim
# --abandon-group, for a group no sink will read again. One script, so no sink's read slips between the check and the
# deletion. Returns {1 when deleted else 0, the idle ms of its consumer that read last (-1: none)}; {0, -2} without
# such a group.
ABANDON_GROUP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, -2} end
local found = false
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #info, 2 do
    if info[i] == 'name' and info[i + 1] == ARGV[1] then found = true end
  end
end
if not found then return {0, -2} end
local idle = -1
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  for i = 1, #info, 2 do
    if info[i] == 'idle' and (idle < 0 or info[i + 1] < idle) then idle = info[i + 1] end
  end
end
if idle >= 0 and idle < tonumber(ARGV[2]) then return {0, idle} end
redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
return {1, idle}
"""
# A group whose consumers have all been idle this long is one no sink reads (a live sink reads every second or so; its
# own clean-up takes a consumer idle this long for gone: sink.FORGET_IDLE_S).
ABANDON_IDLE_S = FORGET_IDLE_S


def older_than_ms(days: float) -> int:
    """The stream id bound (Unix ms) of the entries older than `days`; days past the epoch leave none older, and the
    bound stays an id (1: every id is at least 0-1)."""
    now = time.time()
    return 1 if days * 86400 >= now else int((now - days * 86400) * 1000)


async def export(client: Any, out: Path, before_ms: int | None = None) -> int:
    """Append the entries (older than `before_ms` when given) to `out`; returns how many were exported."""
    below = None if before_ms is None else f"{before_ms}-0"
    async with _appending(out) as file:
        return sum(count for count, _ in await _export(client, _Archive(out, file), [below] * SHARDS))


@asynccontextmanager
async def _appending(out: Path) -> AsyncIterator[TextIO]:
    """`out` opened to append, held alone until closed (an exclusive flock, waited for off the event loop): two runs on
    one file (the chart's scheduled trim beside a manual Job) would export the same entries twice and cut each other's
    lines; the one that waits reads the streams once the other has deleted what it exported."""
    with out.open("a", encoding="utf-8") as file:
        await asyncio.to_thread(fcntl.flock, file.fileno(), fcntl.LOCK_EX)
        _end_cut_line(file, out)
        yield file


def _end_cut_line(file: TextIO, path: Path) -> None:
    if file.tell() and _last_byte(path) != b"\n":  # a run stopped mid-line: its cut line ends here, not ours
        file.write("\n")
        file.flush()  # on the disk's side of the file before it is read


def month_file(out: Path, entry: str) -> Path:
    """The file beside `out` of the month (UTC) Redis added the entry in, by its id: <stem>-YYYY-MM<suffix>."""
    return out.with_name(f"{out.stem}-{_added(entry):%Y-%m}{out.suffix}")


def _added(entry: str) -> datetime:
    """When Redis added the entry, by its id (Redis' clock, in ms), in UTC."""
    return datetime.fromtimestamp(entry_id(entry)[0] / 1000, UTC)


class _Archive:
    """Where each exported entry's line goes: `out` (its lock held, open as `file`), or with `monthly` the file of the
    entry's month beside it, opened to append on first use. The month is the entry's, not the run's: a run interrupted
    between the export and the deletion leaves the entries in the files the next run finds them again for, and two
    runs around a month's end never split an entry between two files. Given `first` (the first entry on its stream of
    each shard the export reads from), an entry a file already holds whole is not appended again (archived_lines.py)."""

    def __init__(self, out: Path, file: TextIO, monthly: bool = False, first: dict[int, str] | None = None) -> None:
        self._out, self._monthly, self._first = out, monthly, first
        self._files: dict[Path, TextIO] = {}
        self._tails: dict[Path, tuple[int | None, int]] = {}  # each file's tail that may hold entries, and its end
        self._archived: tuple[Path, int, Archived] | None = None  # the tail being read, of a file and a shard
        self._open(out, file)

    def write(self, shard: int, entry: str, line: str) -> None:
        """Append `line`, the entry's, unless its file already holds the entry."""
        path = month_file(self._out, entry) if self._monthly else self._out
        if path not in self._files:
            self._open(path, path.open("a", encoding="utf-8"))
        if not self._holds(path, shard, entry_id(entry), line):
            self._files[path].write(line)

    def _open(self, path: Path, file: TextIO) -> None:
        _end_cut_line(file, path)
        self._files[path] = file
        if self._first is not None and (path != self._out or not self._monthly):
            end = os.fstat(file.fileno()).st_size
            self._tails[path] = (self._tail_start(path, end), end)

    def _tail_start(self, path: Path, end: int) -> int | None:
        """Where the lines that may be entries still on their streams start. With `monthly`, a shard whose stream starts
        in a later month has none in this month's file, so none is looked for."""
        assert self._first is not None
        first = {
            shard: entry_id(entry)
            for shard, entry in self._first.items()
            if not self._monthly or month_file(self._out, entry) <= path  # the months' names sort as the months do
        }
        return tail_start(path, end, first)

    def _holds(self, path: Path, shard: int, entry: EntryId, line: str) -> bool:
        start, end = self._tails.get(path, (None, 0))
        if start is None:
            return False
        if self._archived is None or self._archived[:2] != (path, shard):  # a run reads each file's shard once
            self._close_archived()
            self._archived = (path, shard, Archived(path, start, end, shard))
        return self._archived[2].has(entry, line)

    def _close_archived(self) -> None:
        if self._archived is not None:
            self._archived[2].close()
            self._archived = None

    @property
    def paths(self) -> list[Path]:
        """The files lines go to: `out`, or the months' files written."""
        return [path for path in self._files if path != self._out or not self._monthly]

    def sync(self) -> None:
        """Every line written made durable before any entry is deleted, and the files' names with them: always, since
        a file a killed run created may not have had its name synced, and a crash after the deletion would lose it."""
        for file in self._files.values():
            file.flush()
            os.fsync(file.fileno())
        directory = os.open(self._out.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        self._close_archived()
        for path, file in self._files.items():
            if path != self._out:  # the lock's own file is closed by _appending
                file.close()


def volume_free_percent(path: Path) -> float:
    """How much of the volume holding `path` is free to write for an unprivileged user, in percent."""
    stat = os.statvfs(path)
    return 100.0 * stat.f_bavail / stat.f_blocks if stat.f_blocks else 100.0


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1)


async def _export(client: Any, archive: _Archive, below: Sequence[str | None]) -> list[tuple[int, str | None]]:
    """Append each shard's entries with ids below its bound in `below` (all of them for None) to `archive`, fsynced;
    returns, shard by shard, how many were exported and the id of the last (None: none)."""
    exported: list[tuple[int, str | None]] = []
    for shard in range(SHARDS):
        start, end = "-", "+" if below[shard] is None else f"({below[shard]}"
        count, last = 0, None
        while True:
            entries = await client.xrange(ledger_key(shard), min=start, max=end, count=BATCH)
            for raw_id, fields in entries:
                line = {"shard": shard, "id": raw_id.decode(), "record": _as_built(fields)}
                archive.write(shard, line["id"], json.dumps(line) + "\n")
                count, last = count + 1, line["id"]  # one the file held already too: deleted as exported
            if len(entries) < BATCH:
                break
            start = "(" + entries[-1][0].decode()
        exported.append((count, last))
    archive.sync()
    return exported


def _as_built(fields: dict[bytes, bytes]) -> Any:
    """An entry's record as the charge built it, from either form; one that is no such record as it is (text not JSON:
    that text; no record field: the entry's fields): exported all the same, never dropped, and the trim goes on."""
    raw = fields.get(b"record")
    if raw is None:
        return {_text(name, "backslashreplace"): _text(value, "backslashreplace") for name, value in fields.items()}
    try:
        record = loads_stored(raw)
    except ValueError:  # UnicodeDecodeError and TooDeep too
        return _text(raw, "backslashreplace")
    try:
        return expanded(record) if isinstance(record, dict) else record
    except (TypeError, ValueError, KeyError):
        return record


@dataclass(frozen=True)
class Trimmed:
    """What a trim deleted, and, per shard, the oldest entry older than the retention it left on the stream: the sink's
    group had not acknowledged it when the trim read where the group stood (the SQL ledger may not have it). `idle_ms`:
    of each shard kept back, how long ago the group's consumer that read last read (None: it has no consumer).
    `abandoned`: the shards whose group was deleted (--abandon-group). `into`: the files the entries went to."""

    deleted: int
    kept_back: dict[int, str]
    idle_ms: dict[int, int | None] = field(default_factory=dict, compare=False)  # a measure, as of the trim
    abandoned: list[int] = field(default_factory=list)
    into: list[Path] = field(default_factory=list, compare=False)


async def trim(
    client: Any,
    out: Path,
    retention_days: int,
    group: str = GROUP,
    abandon_idle_s: float | None = None,
    monthly: bool = False,
) -> Trimmed:
    """Export the entries older than the retention, then delete them; but on a stream where the SQL sink's `group`
    is, only up to its first entry not acknowledged: that one and those after it are kept (and not exported), as
    `trim --copied-only` keeps them, until the sink has copied them. With `abandon_idle_s` (the operator's word that no
    sink will read the group again: --abandon-group), the group is first deleted where none of its consumers has read
    for that long: its stream is then trimmed as one no sink reads, what the group had not acknowledged going to `out`
    alone. With `monthly`, each entry goes to its month's file beside `out` (month_file), `out` staying the lock."""
    async with _appending(out) as file:
        cutoff = f"{older_than_ms(retention_days)}-0"
        abandoned = []
        if abandon_idle_s is not None:
            for shard in range(SHARDS):
                deleted, _ = await client.eval(ABANDON_GROUP, 1, ledger_key(shard), group, int(abandon_idle_s * 1000))
                if deleted:
                    abandoned.append(shard)
        below = []
        for shard in range(SHARDS):
            unacknowledged = await _unacknowledged_from(client, shard, group)
            below.append(cutoff if unacknowledged is None else min(cutoff, unacknowledged, key=entry_id))
        archive = _Archive(out, file, monthly, await _first_below(client, below))
        deleted = 0
        try:
            for shard, (_, last) in enumerate(await _export(client, archive, below)):
                if last is None:
                    continue
                # Up to the last entry exported, not the cutoff: one added since this shard was read is below the
                # cutoff too when this host's clock is ahead of Redis' (which dates the ids) by more than the
                # retention, and was deleted unexported. Bounded by the group as it stands now too: a group made since
                # (a sink started) acknowledged none.
                ms, seq = entry_id(last)
                deleted += int(await client.eval(TRIM_COPIED, 1, ledger_key(shard), f"{ms}-{seq + 1}", group, "1"))
        finally:
            archive.close()
    kept_back = await _first_below(client, [cutoff] * SHARDS)
    idle_ms = {shard: await _group_idle_ms(client, shard, group) for shard in kept_back}
    return Trimmed(deleted, kept_back, idle_ms, abandoned, archive.paths)


async def _first_below(client: Any, below: Sequence[str]) -> dict[int, str]:
    """Each shard's first entry on its stream where it is below the shard's bound in `below`: where an export starts,
    for the shards it exports from (the oldest entry a file may hold already), or the oldest entry a trim kept back."""
    first = {}
    for shard in range(SHARDS):
        oldest = await client.xrange(ledger_key(shard), min="-", max=f"({below[shard]}", count=1)
        if oldest:
            first[shard] = _text(oldest[0][0])
    return first


async def _group_idle_ms(client: Any, shard: int, group: str) -> int | None:
    """How long ago the group's consumer that read last read the shard's stream; None when it has no consumer (or the
    group was deleted since the trim)."""
    try:
        consumers = await client.xinfo_consumers(ledger_key(shard), group)
    except ResponseError:
        return None
    return min((int(consumer["idle"]) for consumer in consumers), default=None)


async def _unacknowledged_from(client: Any, shard: int, group: str) -> str | None:
    """The id of the shard's first entry `group` has not acknowledged (lua.py, LEDGER_UNACKED_FROM), as a bound on
    the ids below it; None where the stream has no such group."""
    start = _text(await client.eval(lua.LEDGER_UNACKED_FROM, 1, ledger_key(shard), group))
    if start == "-":
        return None
    if start.startswith("("):  # after the last entry delivered, none pending
        ms, seq = entry_id(start[1:])
        return f"{ms}-{seq + 1}"
    return start  # its oldest pending entry


def _kept(trimmed: Trimmed, group: str) -> str:
    """Each shard's oldest entry kept, when it was added (its id's time, by Redis' clock), and when the group last read
    its stream."""
    return "; ".join(
        f"shard {shard} from entry {entry} ({_added(entry):%Y-%m-%d %H:%M:%S} UTC)"
        f", {_last_read(trimmed.idle_ms.get(shard), group)}"
        for shard, entry in sorted(trimmed.kept_back.items())
    )


def _last_read(idle_ms: int | None, group: str) -> str:
    if idle_ms is None:
        return f"group {group} has no consumer"
    for unit, unit_s in (("days", 86400), ("h", 3600), ("min", 60)):
        if idle_ms >= 2 * unit_s * 1000:
            return f"group {group} last read {idle_ms / 1000 / unit_s:.1f} {unit} ago"
    return f"group {group} last read {idle_ms / 1000:.1f} s ago"


def _abandon_hint(trimmed: Trimmed, group: str, out: Path, monthly: bool) -> str:
    """What an operator whose sinks are off for good runs: the group deleted where it was left behind. A rotating
    run's hint rotates too: without --monthly the entries would go to `out`, the lock."""
    idle = [shard for shard, ms in trimmed.idle_ms.items() if ms is None or ms >= ABANDON_IDLE_S * 1000]
    if not idle:
        return ""
    destroy = "".join(f"\n  XGROUP DESTROY '{ledger_key(shard)}' {group}" for shard in sorted(idle))
    into = f"the months' files beside {out}" if monthly else str(out)
    return (
        "\nif no sink will read the ledger again (ROUTER_LEDGER_SQL_SINK=false everywhere), delete the group where it"
        f" was left behind (redis-cli, on ROUTER_REDIS_URL):{destroy}\nor trim again with --abandon-group {group}"
        f"{' --monthly' if monthly else ''} (the entries it has not acknowledged then go to {into} alone, never to the"
        " SQL ledger)"
    )


def _text(value: Any, errors: str = "strict") -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


async def trim_copied(client: Any, retention_days: int, group: str = GROUP) -> tuple[int, list[int]]:
    """Delete the entries older than the retention that `group` (the SQL sink's) has acknowledged; returns how
    many were deleted and the shards whose stream has no such group (nothing deleted there)."""
    cutoff = f"{older_than_ms(retention_days)}-0"
    deleted, ungrouped = 0, []
    for shard in range(SHARDS):
        found = int(await client.eval(TRIM_COPIED, 1, ledger_key(shard), cutoff, group, "0"))
        if found < 0:
            ungrouped.append(shard)
        else:
            deleted += found
    return deleted, ungrouped


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.router.ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["export", "trim"])
    parser.add_argument("--out", type=Path, help="JSONL file the entries are appended to")
    parser.add_argument("--older-than-days", type=non_negative, help="export: only entries older than this")
    parser.add_argument(
        "--abandon-group",
        metavar="NAME",
        help=f"trim --out: first delete the SQL sink's group ({GROUP}) where none of its consumers has read for "
        f"{ABANDON_IDLE_S / 3600:g} h: no sink will read the ledger again",
    )
    parser.add_argument(
        "--monthly",
        action="store_true",
        help="trim --out: append each entry to its month's file beside FILE (<stem>-YYYY-MM<suffix>); FILE is the lock",
    )
    parser.add_argument(
        "--min-free-percent",
        type=percent,
        help="trim --out: fail (exit 1, after trimming) when the volume holding FILE has less than this %% free",
    )
    parser.add_argument(
        "--copied-only",
        action="store_true",
        help="trim: export nothing, delete only entries the SQL ledger sink has copied (its table keeps them)",
    )
    args = parser.parse_args(argv)
    if args.copied_only != (args.out is None) or (args.copied_only and args.command != "trim"):
        parser.error("export and trim take --out FILE; trim --copied-only takes none")
    if args.abandon_group is not None and (args.command != "trim" or args.copied_only):
        parser.error("--abandon-group goes with trim --out FILE")
    if (args.monthly or args.min_free_percent is not None) and (args.command != "trim" or args.copied_only):
        parser.error("--monthly and --min-free-percent go with trim --out FILE")
    if args.abandon_group not in (None, GROUP):
        parser.error(f"--abandon-group names the SQL sink's group, {GROUP}: the trim waits for no other")
    settings = load_settings(LedgerSettings)  # no server settings: no certificates needed
    if not settings.redis_url:
        print("ROUTER_REDIS_URL is not set: the in-process ledger lives and dies with its router", file=sys.stderr)
        return 2
    client = connect(settings.redis_url)
    try:
        if args.copied_only:
            deleted, ungrouped = await trim_copied(client, settings.ledger_retention_days)
            print(f"trimmed {deleted} entries the ledger sink had copied")
            if ungrouped:  # a failed run, so a scheduled one is seen: the ledger there grows untrimmed
                print(f"shards {ungrouped} kept: their stream has no {GROUP} group (no sink read it)", file=sys.stderr)
                return 1
        elif args.command == "trim":
            abandon_idle_s = None if args.abandon_group is None else ABANDON_IDLE_S
            trimmed = await trim(
                client, args.out, settings.ledger_retention_days, abandon_idle_s=abandon_idle_s, monthly=args.monthly
            )
            if trimmed.abandoned:
                streams = ", ".join(ledger_key(shard) for shard in trimmed.abandoned)
                print(
                    f"group {GROUP} deleted from {streams}: none of its consumers read in the last "
                    f"{ABANDON_IDLE_S / 3600:g} h",
                    file=sys.stderr,
                )
            print(f"trimmed {trimmed.deleted} entries into {', '.join(map(str, trimmed.into)) or args.out}")
            failed = False
            if trimmed.kept_back:  # a failed run, so a scheduled one is seen: the sink is behind by the retention
                kept = _kept(trimmed, GROUP) + _abandon_hint(trimmed, GROUP, args.out, args.monthly)
                print(f"kept, not copied by the ledger sink yet: {kept}", file=sys.stderr)
                failed = True
            free = volume_free_percent(args.out.parent)
            if args.min_free_percent is not None and free < args.min_free_percent:  # failed too: seen before it fills
                print(
                    f"the volume holding {args.out} has {free:.1f}% free, under --min-free-percent "
                    f"{args.min_free_percent:g}: copy away the months' files complete (a run at least the retention "
                    "after the month's end kept nothing back) and delete them, or grow it",
                    file=sys.stderr,
                )
                failed = True
            if failed:
                return 1
        else:
            before = None if args.older_than_days is None else older_than_ms(args.older_than_days)
            print(f"exported {await export(client, args.out, before)} entries into {args.out}")
    finally:
        await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
