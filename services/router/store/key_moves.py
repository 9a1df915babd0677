"""The durable record of key moves (key_move.py): which key id moved from which tenant to which, when by the money's
clock, and by whom; never the key itself. A stream in the money store's `{llmrouter}` slot (keys.py,
KEY_MOVES_RECORD), kept with the money (noeviction, AOF) and never trimmed: moves are an operator's, rare. Listed by
the Operator service's KeyMoves (admins only) and the edge's `GET /v1/router/key-moves`."""

from __future__ import annotations

from typing import Any

from services.router.store.clock import money_now
from services.router.store.keys import KEY_MOVES_RECORD
from services.router.store.model import KeyMoveRecord


async def record(client: Any, key_id: str, before: str | None, tenant: str, by: str) -> None:
    fields = {"key_id": key_id, "from": before or "", "bound": "1" if before is not None else "", "to": tenant}
    await client.xadd(KEY_MOVES_RECORD, {**fields, "by": by, "at": repr(money_now())})


async def latest(client: Any, count: int) -> list[KeyMoveRecord]:
    entries = await client.xrevrange(KEY_MOVES_RECORD, count=count)
    return [_move({_text(k): _text(v) for k, v in fields.items()}) for _, fields in entries]


def _move(fields: dict[str, str]) -> KeyMoveRecord:
    before = fields["from"] if fields.get("bound") else None
    return KeyMoveRecord(fields["key_id"], before, fields["to"], fields["by"], float(fields["at"]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
