"""A charge capped at its hold, counted: a provider reported usage past the request's worst case, the tenant was
charged the hold and the operator absorbs the rest (alert LLMRouterChargesCappedAtHold). A request's charge
(charging.py) and a Batch API line's (deferred.py) alike, the latter by whichever router takes its count
(count_charge). So is a Batch API line's answer charged max_tokens for an output reported past it."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from services.router import metrics
from services.router.store.model import PICO, SPEND_MAX_PICO

log = logging.getLogger("llmrouter.router")

# The most one capped charge adds to the USD absorbed: the most a spend counter holds. Past it a report is absurd (an
# int64 token count priced reaches $1e15, a cost written as a Decimal's exponent inf as a float); counted whole, one
# such report would leave the counter inf, or every honest overage after it lost in its rounding.
MAX_ABSORBED_USD = Decimal(SPEND_MAX_PICO) / PICO
# A Batch API line's ledger record charged its hold for a report past it: the cost that report came to at its batch
# price, its output at most the line's max_tokens (deferred.py).
REPORTED = "reported_cost_usd"
# A Batch API line's ledger record whose provider reported more output than the line's max_tokens, true: charged
# max_tokens, or its hold when even that passed the hold (deferred.py).
PAST_MAX_TOKENS = "output_past_max_tokens"


def count_capped(model: str, reported_usd: Decimal, hold_usd: Decimal) -> None:
    """One charge of `model` capped at `hold_usd` where `reported_usd` was reported: counted once per charge made."""
    absorbed = reported_usd - hold_usd
    if absorbed > MAX_ABSORBED_USD:
        log.warning(
            "capped charge's reported usage is absurd; the USD absorbed is counted at its bound",
            extra={"model": model, "reported_cost_usd": str(reported_usd)[:100], "counted_usd": str(MAX_ABSORBED_USD)},
        )
        absorbed = MAX_ABSORBED_USD
    metrics.CHARGES_CAPPED.labels(model).inc()
    metrics.CAPPED_USD.labels(model).inc(float(absorbed))


def countable(record: dict[str, Any]) -> bool:
    """Whether count_charge counts `record` whole: the charge counters' fields (metrics.countable), and a report past
    the hold, when on record, an amount no less than the hold charged (an absurd one is counted at its bound)."""
    if not metrics.countable(record):
        return False
    if REPORTED not in record:
        return True
    try:
        reported = Decimal(record[REPORTED])
        return not reported.is_nan() and reported >= Decimal(record["cost_usd"])
    except (TypeError, ValueError, ArithmeticError):
        return False


def count_charge(record: dict[str, Any]) -> None:
    """A charge whose count a router took (Store.count_once), from its ledger record: in the charge counters, and
    capped at its hold too when a report past the hold is on record (REPORTED), and past max_tokens when it says so
    (PAST_MAX_TOKENS), under the model the charge is counted under. Its collect, a collect of the line again
    and the reconciler's sweep of the charges left uncounted count it alike."""
    metrics.count_charge(record)
    if REPORTED in record:
        count_capped(str(record.get("model", "")), Decimal(record[REPORTED]), Decimal(record["cost_usd"]))
    if record.get(PAST_MAX_TOKENS) is True:
        metrics.BATCH_OUTPUT_PAST_MAX_TOKENS.labels(str(record.get("model", ""))).inc()
