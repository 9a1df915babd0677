"""Move an API key to another tenant: `python -m services.router.key_move <key id> <tenant>` binds the key id (16 hex
digits, as budgets and the ledger show it) to the tenant, in the money Redis of ROUTER_REDIS_URL, whatever it was bound
to (services/router/key_tenants.py). For a key file line whose tenant changed. Once it returns, every router admits the
key for the new tenant alone (the move's key-moves token: store/keys.py, key_moves_key); a request admitted before may
still finish, charged to the old one. The key's spend so far stays in its old tenant's shard, and what it spent and
holds in every other shard is carried into the new tenant's for the rest of the period, counted against its key budget
alone (RedisStore.move_key; README, *A key serves one tenant*). A hold at the move (its charge may yet be lost, or
wait in an outbox) is carried into each period the reconciler may charge it in: within the routers'
ROUTER_PENDING_STALE_S of the move, the longest any router runs with. Routers publish theirs at each heartbeat
(store/pending_stale.py); the move takes the longest of those of routers seen lately and of `--pending-stale-s` (by
default ROUTER_PENDING_STALE_S as the routers read it), saying so when a router's is longer than the one given; with
neither, the longest it may be, a week: the move cannot tell the routers' default from a longer value it does not see.

With `--replicas N` (by default ROUTER_KEY_MOVE_REPLICAS, else 0) it then waits (`--wait-s`) until N replicas of every
master it wrote to have the move (Redis WAIT, store/replicated.py): one that failed over to a replica without it would
lose the move silently, the key serving its old tenant again. Fewer in time exits 1, the move made on the masters but
not yet replicated: run it again. Its record (below) is then waited for too, as long again at most: fewer in time exits
1 too, saying what the move was (made and replicated: note it rather than run it again).

Each move is recorded in the money Redis (store/key_moves.py): the key id, the tenant before and after, when, and by
whom (`--by`, by default the operating system user running it); admins list them with the Operator service's KeyMoves
or the edge's `GET /v1/router/key-moves`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys

from llmrouter.settings import load_settings
from services.ledger.settings import MAX_KEY_MOVE_REPLICAS
from services.router.admission import MAX_ID_CHARS
from services.router.money_check import money_store
from services.router.settings import CHARGE_LANDS_S, PendingStaleSettings
from services.router.store import (
    HOLDS_LINGER_S,
    KeyMoved,
    KeyMoveUnrecorded,
    MoneyClockUnread,
    StoreRefusing,
    StoreUnavailable,
)

KEY_ID = re.compile(r"[0-9a-f]{16}")
WAIT_S = 10.0  # how long a move waits for its replicas by default (--wait-s)
MAX_WAIT_S = 300.0


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.router.key_move", description=__doc__.split("\n\n")[0])
    parser.add_argument("key_id", help="the key's id: 16 hex digits, the first of its SHA-256")
    parser.add_argument("tenant", help="the tenant it serves from now on")
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help=f"replicas of each master that must have the move before it returns (0: none waited for; at most"
        f" {MAX_KEY_MOVE_REPLICAS}; default: ROUTER_KEY_MOVE_REPLICAS, else 0)",
    )
    parser.add_argument("--by", default=None, help="who moves it, for its record (default: the user running this)")
    parser.add_argument("--wait-s", type=float, default=WAIT_S, help=f"how long to wait for them (default {WAIT_S:g})")
    parser.add_argument(
        "--pending-stale-s",
        type=float,
        default=None,
        help="the routers' ROUTER_PENDING_STALE_S (the longest, if they differ): a hold at the move, whose charge may"
        " yet be lost, is carried into each period that starts within it, or within the longer value a router"
        f" published (above {CHARGE_LANDS_S}, at most {HOLDS_LINGER_S}; default: ROUTER_PENDING_STALE_S, else the"
        f" routers' published values, else {HOLDS_LINGER_S}, the longest it may be)",
    )
    args = parser.parse_args(argv)
    if args.pending_stale_s is not None and not CHARGE_LANDS_S < args.pending_stale_s <= HOLDS_LINGER_S:
        parser.error(
            f"--pending-stale-s must be above {CHARGE_LANDS_S} and at most {HOLDS_LINGER_S}, as ROUTER_PENDING_STALE_S"
        )
    if not 0 <= (args.replicas or 0) <= MAX_KEY_MOVE_REPLICAS or not 0 < args.wait_s <= MAX_WAIT_S:
        parser.error(f"--replicas must be 0 to {MAX_KEY_MOVE_REPLICAS}, --wait-s above 0 and at most {MAX_WAIT_S:g}")
    if not KEY_ID.fullmatch(args.key_id):
        parser.error("key_id must be 16 lowercase hex digits (a key's id, as budgets and the ledger show it)")
    if args.by is not None and not 0 < len(args.by) <= MAX_ID_CHARS:
        parser.error(f"--by must be 1 to {MAX_ID_CHARS} characters")
    if not args.tenant or len(args.tenant) > MAX_ID_CHARS or "\x00" in args.tenant:
        parser.error(f"tenant must be 1 to {MAX_ID_CHARS} characters, no NUL, as a request's")
    if args.pending_stale_s is None:  # a bad ROUTER_PENDING_STALE_S exits 2 here, saying so
        args.pending_stale_s = load_settings(PendingStaleSettings).pending_stale_s
    found = money_store()  # a bad ROUTER_KEY_MOVE_REPLICAS exits 2 here, saying so
    if found is None:
        return 2
    settings, store = found
    replicas = settings.key_move_replicas if args.replicas is None else args.replicas
    recorded = True
    try:
        moved = await store.move_key(
            args.key_id, args.tenant, replicas, args.wait_s, args.by or _user(), args.pending_stale_s
        )
    except KeyMoveUnrecorded as unrecorded:
        moved, recorded = unrecorded.moved, False
    except MoneyClockUnread:
        print(
            f"key {args.key_id}: not moved: the money Redis' clock (TIME), which dates what the move carries, could not"
            " be read (the server, or on a Redis Cluster the master of its {llmrouter} slot, out of reach; or TIME"
            " refused to this user): run it again once it answers",
            file=sys.stderr,
        )
        return 1
    except (StoreUnavailable, StoreRefusing):
        # The key may be rebound with no token written: routers would meet the move only within key_tenants.BOUND_S.
        print(
            f"key {args.key_id}: the money Redis failed the move, which may be made in part: run it again",
            file=sys.stderr,
        )
        return 1
    finally:
        await store.close()
    was = "bound to no tenant before" if moved.before is None else f"moved from {moved.before!r}"
    _say_pending_stale(args.key_id, args.pending_stale_s, moved)
    if not recorded:
        # Run again, it would be recorded as a move from the tenant it now has: the terminal keeps where it was from.
        print(
            f"key {args.key_id}: {was} to {args.tenant!r}, but the money Redis failed the move's record (the master of"
            " its {llmrouter} slot): the move is made, and no admin's listing of key moves shows it; note it",
            file=sys.stderr,
        )
    short = [told for told in moved.replicated if told.replicas < replicas]
    if short:
        masters = ", ".join(f"{told.replicas} of {replicas} replicas of {told.master}" for told in short)
        print(
            f"key {args.key_id}: {was} on the money Redis's masters, but not yet replicated ({masters} had it within"
            f" {args.wait_s:g} s): a failover now would lose the move; run it again",
            file=sys.stderr,
        )
        return 1
    if not recorded:
        return 1
    record = moved.record_replicated
    if record is not None and record.replicas < replicas:
        # The move itself is replicated: run again, it would be recorded as a move from the tenant it now has.
        print(
            f"key {args.key_id}: {was} to {args.tenant!r}, replicated, but its record not yet ({record.replicas} of"
            f" {replicas} replicas of {record.master} had it within {args.wait_s:g} s): a failover now would lose"
            " the record, and no admin's listing of key moves would show the move; note it",
            file=sys.stderr,
        )
        return 1
    print(
        f"key {args.key_id}: {was}; it serves {args.tenant!r} alone from now on, on every router"
        " (a request admitted before may still finish, charged to the tenant that admitted it)"
    )
    return 0


def _say_pending_stale(key_id: str, given: float | None, moved: KeyMoved) -> None:
    """A router's published ROUTER_PENDING_STALE_S longer than the one given is the one the move carried by: said, so
    that the operator's shell (or flag) is set right for the next."""
    if given is not None and moved.published_s is not None and moved.published_s > given:
        print(
            f"key {key_id}: a router runs with ROUTER_PENDING_STALE_S={moved.published_s:g}, longer than the"
            f" {given:g} s given: holds in flight were carried as far as {moved.published_s:g} s",
            file=sys.stderr,
        )


def _user() -> str:
    """The operating system user running the move (a container's uid may have no name: then its number)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
