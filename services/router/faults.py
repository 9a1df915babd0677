"""An unexpected failure (a bug) in the router after a request was admitted. Left to gRPC it was a bare INTERNAL, which
the edge made a retryable 502 saying no cost, while the request was settled at what its failed attempts owed: a bug
after the providers answered left their generation (a stream's delivered words too) charged nothing, its id released for
the SDK's retry, served again. The router cannot tell how far such a request got once its serving began (a providers
call may have run), so it is settled then as an attempt of unknown outcome is, at its worst case: its hold, as the
reconciler charges a request whose router died; before that (a bug in the cache's lookup) nothing was generated, and it
is settled at nothing, its id released. A bug in the admission itself leaves nothing admitted (Admission._hold_under
undoes what the store may have taken, by its nonce): told charged nothing, retryable; unless that undo failed too
(HoldLeft), or the undo of an admission whose reply was lost failed by a bug: the hold may remain, charged by the
reconciler, and it is told pending (a SubmitBatch line so: deferred.py, answered never sent, its charge pending). A
charge that landed before the failure stands. Its caller is told that charge (`charged_usd`), or `cost_pending` when
the charge itself failed (the reconciler then charges the hold), `retryable` only when it was charged nothing and its id
released.
So is a charge failing by a bug as the drain's cut reads it (servicer._charged_when_cut): pending, rather than
SHUTTING_DOWN. The error is logged with the request id and its traceback; the interceptor counts it
(llmrouter_grpc_requests_total, code INTERNAL, reason INTERNAL_ERROR), and
llmrouter_router_faults_total by how it was charged, which the alert LLMRouterRouterFaults watches."""

from __future__ import annotations

from decimal import Decimal

import grpc

from llmrouter.errors import ServiceError

INTERNAL_ERROR = "INTERNAL_ERROR"
# Why its ledger line charges what it does (reason_detail): its hold once a providers call may have run, else what its
# failed attempts owed (nothing: none was made).
AT_HOLD = "an unexpected failure in the router after admission: its outcome unknown, charged its hold"
UNSERVED = "an unexpected failure in the router before any providers call: nothing generated"


class HoldLeft(Exception):
    """An admission the store may have run (a bug reading its reply, or its reply lost) whose undo failed by a bug: the
    store may keep its hold, which the reconciler charges."""


def admission_fault_charge(bug: Exception) -> str:
    """How a request whose admission a bug failed is charged (llmrouter_router_faults_total's label)."""
    return "pending" if isinstance(bug, HoldLeft) else "nothing"


def fault_error(request_id: str, charged: Decimal | None, released: bool) -> ServiceError:
    """`charged`: what the request was charged; None when its charge is not known here (it failed, or met one made
    before that could not be read): the ledger will say. `released`: charged nothing, its id freed for a retry."""
    retryable = charged == 0 and released
    if charged is None:
        told, cost = {"cost_pending": "true"}, "its charge is still to come (at most its hold)"
    else:
        told, cost = {"charged_usd": format(charged, "f")}, f"it was charged {charged:f} USD"
    message = f"the router failed unexpectedly serving this request (request id {request_id}): {cost}"
    retry = "true" if retryable else "false"
    return ServiceError(grpc.StatusCode.INTERNAL, INTERNAL_ERROR, message, {**told, "retryable": retry})
