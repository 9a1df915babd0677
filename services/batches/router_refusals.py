"""What a failed call to the router says it set off, for the batch machinery: one reading for an offer of lines
(SubmitBatch, deferral.py) and a line's completion (Complete, runner.py).

Nothing for sure when gRPC never reached the router (never_connected), when its gRPC server dropped the call before any
handler ran (ServiceError.shed: CANCELLED without our ErrorInfo, past its queue of calls waiting for a handler or as it
began to stop; a call it cut mid-way is UNAVAILABLE instead, and one this edge gives up raises CancelledError, no
status), or when the router refused it at its own limit of calls in flight, before reading it (OVERLOADED naming the
router, llmrouter/overload.py). Not the providers' OVERLOADED: the router passes that on once it has admitted the
request (the ErrorInfo's `service` names who refused)."""

from __future__ import annotations

import math

from llmrouter.errors import ServiceError
from llmrouter.overload import RETRY_DELAY_S

ROUTER = "router"  # the service name the router's admission by load gives its refusals (metadata["service"])


def admitted_nothing(error: ServiceError) -> bool:
    """The router admitted nothing of the call: no line of it is held, sent or charged."""
    if error.overloaded:
        return error.metadata.get("service") == ROUTER
    return error.shed or error.never_connected


def overloaded_retry_s(error: ServiceError) -> float | None:
    """When the router, refusing the call at its limit of calls in flight, asked to be called again: its RetryInfo,
    else its retry_after_s, else the delay its admission gives; None for any other failure."""
    if not (error.overloaded and error.metadata.get("service") == ROUTER):
        return None
    if error.retry_delay_s is not None:
        return float(error.retry_delay_s)
    said = seconds(error.metadata.get("retry_after_s", ""))
    return float(RETRY_DELAY_S) if said is None else said


def seconds(text: str) -> float | None:
    """A retry_after_s the router gave, when usable (finite, not negative)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
