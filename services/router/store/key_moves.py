"""The durable record of key moves (key_move.py): which key id moved from which tenant to which, when by the money
Redis' clock (the entry's id), and by whom; never the key itself. A stream in the money store's `{llmrouter}` slot
(keys.py, KEY_MOVES_RECORD), kept with the money (noeviction, AOF) and never trimmed: moves are an operator's, rare.
Listed by the Operator service's KeyMoves (admins only) and the edge's `GET /v1/router/key-moves`."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from services.router.store import replicated
from services.router.store.keys import KEY_MOVES_RECORD
from services.router.store.model import KeyMoveRecord


def _entry(key_id: str, before: str | None, tenant: str, by: str) -> dict[str, str]:
    # when: its entry id, the milliseconds of Redis' clock
    bound = "1" if before is not None else ""
    return {"key_id": key_id, "from": before or "", "bound": bound, "to": tenant, "by": by}


async def record(client: Any, key_id: str, before: str | None, tenant: str, by: str) -> None:
    await client.xadd(KEY_MOVES_RECORD, _entry(key_id, before, tenant, by))


async def record_replicated(
    url: str | SecretStr,
    client: Any,
    move: tuple[str, str | None, str, str],
    replicas: int,
    wait_s: float,
) -> replicated.Replicated:
    """record, then WAIT for `replicas` replicas of its master (a failover would lose the record silently): how many
    acknowledged it. `move`: key id, tenant before, tenant after, by whom."""
    return await replicated.add_replicated(url, client, KEY_MOVES_RECORD, _entry(*move), replicas, wait_s)


async def latest(client: Any, count: int) -> list[KeyMoveRecord]:
    entries = await client.xrevrange(KEY_MOVES_RECORD, count=count)
    return [_move(_text(entry), {_text(k): _text(v) for k, v in fields.items()}) for entry, fields in entries]


def _move(entry: str, fields: dict[str, str]) -> KeyMoveRecord:
    before = fields["from"] if fields.get("bound") else None
    at = int(entry.partition("-")[0]) / 1000
    return KeyMoveRecord(fields["key_id"], before, fields["to"], fields["by"], at)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
