"""A charge capped at its hold, counted: a provider reported usage past the request's worst case, the tenant was
charged the hold and the operator absorbs the rest (alert LLMRouterChargesCappedAtHold). A request's charge
(charging.py) and a Batch API line's (deferred.py) alike."""

from __future__ import annotations

import logging
from decimal import Decimal

from services.router import metrics
from services.router.store import PICO, SPEND_MAX_PICO

log = logging.getLogger("llmrouter.router")

# The most one capped charge adds to the USD absorbed: the most a spend counter holds. Past it a report is absurd (an
# int64 token count priced reaches $1e15, a cost written as a Decimal's exponent inf as a float); counted whole, one
# such report would leave the counter inf, or every honest overage after it lost in its rounding.
MAX_ABSORBED_USD = Decimal(SPEND_MAX_PICO) / PICO


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
