"""The router's money: request ids, rate limits, budgets, holds, pending charges and the charge ledger.

Redis in production (admission and charge are one Lua call each on one hash slot, atomic across replicas, on
one server or a Redis Cluster); an in-process store with the same behaviour when no Redis URL is set, so the
stack runs with nothing else installed. The response cache lives elsewhere (services/router/cache.py):
nothing here may be evicted."""

from pydantic import SecretStr

from services.router.store.clock import money_now
from services.router.store.keys import KEYLESS, SHARDS, AccountKeys, ledger_key, pending_key
from services.router.store.memory import MemoryStore
from services.router.store.model import (
    ANSWER_KEPT_BYTES,
    ANSWER_KEPT_S,
    DEFERRED_HOLD_S,
    HOLD_S,
    HOLDS_LINGER_S,
    PICO,
    REQUEST_ID_TTL_S,
    SPEND_MAX_PICO,
    UNRECORDED_BATCH,
    Account,
    Allowance,
    Hold,
    HoldsTotal,
    HoldTotals,
    KeyBinding,
    KeyMoveRecord,
    PartlyTaken,
    Pending,
    Prices,
    Store,
    StoreRefusing,
    StoreUnavailable,
    UncountedCharge,
    Verdict,
    key_id,
    marked_until,
    next_period,
    pending_field,
    period_id,
    reconciled_record,
    spend_ttl_s,
    to_pico,
)
from services.router.store.redis_store import (
    MASTER_ANSWERS_S,
    CounterRead,
    KeyMoved,
    KeyMoveUnrecorded,
    MoneyClockUnread,
    Raised,
    RedisStore,
    StreamPosition,
)

__all__ = [
    "ANSWER_KEPT_BYTES",
    "ANSWER_KEPT_S",
    "DEFERRED_HOLD_S",
    "HOLDS_LINGER_S",
    "HOLD_S",
    "KEYLESS",
    "MASTER_ANSWERS_S",
    "PICO",
    "REQUEST_ID_TTL_S",
    "SHARDS",
    "SPEND_MAX_PICO",
    "UNRECORDED_BATCH",
    "Account",
    "AccountKeys",
    "Allowance",
    "CounterRead",
    "Hold",
    "HoldTotals",
    "HoldsTotal",
    "KeyBinding",
    "KeyMoveRecord",
    "KeyMoveUnrecorded",
    "KeyMoved",
    "MemoryStore",
    "MoneyClockUnread",
    "PartlyTaken",
    "Pending",
    "Prices",
    "Raised",
    "RedisStore",
    "Store",
    "StoreRefusing",
    "StoreUnavailable",
    "StreamPosition",
    "UncountedCharge",
    "Verdict",
    "key_id",
    "ledger_key",
    "marked_until",
    "money_now",
    "next_period",
    "open_store",
    "pending_field",
    "pending_key",
    "period_id",
    "reconciled_record",
    "spend_ttl_s",
    "to_pico",
]


def open_store(
    redis_url: str | SecretStr | None,
    request_id_ttl_s: int = REQUEST_ID_TTL_S,
    hold_totals: HoldTotals = "auto",
    master_answers_s: float = MASTER_ANSWERS_S,
) -> Store:
    """The in-process store keeps its totals itself (holds.py): no other process writes its holds, so it always
    trusts them."""
    if redis_url:
        return RedisStore(redis_url, request_id_ttl_s, hold_totals, master_answers_s)
    return MemoryStore(request_id_ttl_s)
