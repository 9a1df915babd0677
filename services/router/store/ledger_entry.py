"""A ledger record as the money store's stream keeps it (the entry's one field, `record`: its JSON), and back.

The charge's record (services/router/charging.py) lists every registry model as a candidate, and the stream keeps
it for days in a Redis that is never evicted: written as built, ~2 KB a request. So it is kept compact: JSON
without spaces; each candidate a list, [model, predicted_quality, estimated_cost_usd], with a fourth item, why it
was excluded, only when it is not eligible (an exclusion that is a fixed sentence as its short code); and the
charge's flags left out while at their defaults. Nothing is lost: `expanded` gives the record back as built. A
record is compact exactly when its candidates are lists; any other (a reconciled charge's: no candidates) is kept
as it is, without spaces.

Readers take either form: the routers of the versions before write the full one, and during a rolling upgrade both
are written at once. The field names are kept, and so is `generations` (which repeats the model and tokens of a
charge with one generation): an older router's SQL sink reads the newer records by those names, and would take a
record without generations for a charge with none. It copies compact candidates into the SQL ledger as they are,
so the table's readers unpack them too (`candidates`).
"""

from __future__ import annotations

import json
from typing import Any

from services.router import exclusions

# The charge's fields left out of a compact record while at these values (of this type: a count is no flag). An older
# sink reads each one absent as this value (services/ledger/db.py, row_from_record).
DEFAULTS: dict[str, Any] = {
    "tokens_estimated": False,
    "session_id": "",
    "fallback": False,
    "error": "",
    "cache_hit": False,
    "escalated": False,
    "escalation_signal": "",
    "retries": 0,
}
CANDIDATE_FIELDS = {"model", "predicted_quality", "estimated_cost_usd", "eligible", "excluded_because"}
# Exclusions that are fixed sentences, kept as a short code; a code reads back as this version's sentence.
EXCLUSION_CODES = {
    exclusions.UNAVAILABLE: "unavailable",
    exclusions.LOCAL_UNAVAILABLE: "local_unavailable",
    exclusions.NOT_SERVED: "not_served",
    exclusions.NO_TOOLS: "no_tools",
    exclusions.NO_LOGPROBS: "no_logprobs",
    exclusions.NO_LOGIT_BIAS: "no_logit_bias",
}
EXCLUSIONS = {code: sentence for sentence, code in EXCLUSION_CODES.items()}


def compact(record: dict[str, Any]) -> str:
    """The record as the stream keeps it: compact when it lists candidates, each of the charge's shape; else as it
    is. Either way `expanded` reads it back as it was (a flag it lacked as its default, as every reader takes it)."""
    listed = record.get("candidates")
    if isinstance(listed, list) and listed and all(_packable(c) for c in listed):
        kept = {name: value for name, value in record.items() if not _is_default(name, value)}
        record = {**kept, "candidates": [_packed(c) for c in listed]}
    return json.dumps(record, separators=(",", ":"))


def expanded(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the charge built it, from either form."""
    if not _is_compact(record):
        return record
    return {**DEFAULTS, **record, "candidates": candidates(record["candidates"])}


def candidates(value: Any) -> list[dict[str, Any]]:
    """A record's candidates (or the SQL ledger's candidates column, parsed) as dicts, from either form."""
    if not isinstance(value, list):
        raise TypeError(f"candidates must be a list, not {type(value).__name__}")
    return [_unpacked(c) if isinstance(c, list) else c for c in value]


def _is_compact(record: dict[str, Any]) -> bool:
    listed = record.get("candidates")
    return isinstance(listed, list) and bool(listed) and isinstance(listed[0], list)


def _is_default(name: str, value: Any) -> bool:
    return name in DEFAULTS and type(value) is type(DEFAULTS[name]) and value == DEFAULTS[name]


def _packable(candidate: Any) -> bool:
    """Read back as it is once packed: the charge's fields, eligible exactly when nothing excludes it (as
    routing.decision makes it), and no reason that reads as a code."""
    if not isinstance(candidate, dict) or set(candidate) != CANDIDATE_FIELDS:
        return False
    eligible, reason = candidate["eligible"], candidate["excluded_because"]
    return (
        isinstance(eligible, bool)
        and isinstance(reason, str)
        and not (eligible and reason)
        and reason not in EXCLUSIONS
    )


def _packed(candidate: dict[str, Any]) -> list[Any]:
    """[model, predicted_quality, estimated_cost_usd], and why it was excluded when it is not eligible."""
    packed = [candidate["model"], candidate["predicted_quality"], candidate["estimated_cost_usd"]]
    if not candidate["eligible"]:
        reason = candidate["excluded_because"]
        packed.append(EXCLUSION_CODES.get(reason, reason))
    return packed


def _unpacked(packed: list[Any]) -> dict[str, Any]:
    model, quality, cost, *excluded = packed
    if len(excluded) > 1:
        raise ValueError(f"a packed candidate has 3 or 4 items, not {len(packed)}")
    reason = EXCLUSIONS.get(excluded[0], excluded[0]) if excluded else ""
    return {
        "model": model,
        "predicted_quality": quality,
        "estimated_cost_usd": cost,
        "eligible": not excluded,
        "excluded_because": reason,
    }
