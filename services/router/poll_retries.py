"""A provider batch's poll in the last moments of its lines' holds, tried again through passing failures.

Given up at its first failure there (deferred.py, Deferred.give_up_s), a one-off overload of the providers, a provider's
503 or one poll past its deadline had every line charged its hold, its answer unread though the provider batch had
ended. So a passing failure (PASSING) is tried again, after a wait doubling from FIRST_WAIT_S, at least the delay its
RetryInfo asks (the providers' OVERLOADED), at most MOST_WAIT_S (a longer delay asked would pass the holds' end unread),
for as long as the next try starts before the lines' holds end (the real last moment: the reconciler then charges each
its hold) and leaves LEAST_TRY_S of the caller's deadline (less REPLY_MARGIN_S, so the reply and the charges it tells
reach the caller). Past the last moment, or past the caller's time first, the lines are given up on (the caller's next
collect may come after the reconciler charged them, when no collect gives up on them any more); once the router stops,
the failure is the caller's, who collects again (from another router), nothing charged. Any other failure (the poll
refused as invalid, a model with no Batch API here, a batch the providers call unreadable for good: BATCH_UNREADABLE,
FAILED_PRECONDITION) no try will pass: given up on at once. A collect of lines all settled before (their holds over)
tries its poll so too, for deferred.py's give_up_s or the caller's time, then tells the lines as charged."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from llmrouter.errors import ServiceError
from services.router.store import money_now

log = logging.getLogger("llmrouter.router")

T = TypeVar("T")
FIRST_WAIT_S = 1.0
MOST_WAIT_S = 30.0
REPLY_MARGIN_S = 10.0
LEAST_TRY_S = 5.0
# The providers or the provider out of reach or overloaded (a provider's passing failure to read a batch is
# UNAVAILABLE, the providers' limit of calls in flight RESOURCE_EXHAUSTED OVERLOADED), or one poll past its deadline. A
# call shed by the providers' gRPC server unhandled (CANCELLED) is one too (ServiceError.shed).
PASSING = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


@dataclass(frozen=True)
class Tries:
    """What bounds a poll's tries, on the money's clock (store/clock.py)."""

    last_moment: float  # the earliest end of the lines' holds
    caller_end: float | None  # by when the reply is on its way to the caller; None: the caller set no deadline
    call_s: float  # the most one try is given

    @classmethod
    def before(cls, last_moment: float, time_remaining: float | None, call_s: float) -> Tries:
        """Tries before `last_moment`, for a caller with `time_remaining` (gRPC's context.time_remaining())."""
        caller_end = None if time_remaining is None else money_now() + time_remaining - REPLY_MARGIN_S
        return cls(last_moment, caller_end, call_s)

    def timeout_s(self) -> float:
        if self.caller_end is None:
            return self.call_s
        return max(LEAST_TRY_S, min(self.call_s, self.caller_end - money_now()))


def passing(error: ServiceError) -> bool:
    return error.code in PASSING or error.shed


def wait_s(error: ServiceError, failures: int) -> float:
    """The wait after the `failures`-th failure in a row (1 for the first)."""
    doubled = FIRST_WAIT_S * 2 ** min(failures - 1, 16)
    return min(max(doubled, float(error.retry_delay_s or 0)), MOST_WAIT_S)


async def through_passing_failures(
    poll: Callable[[float], Awaitable[T]], tries: Tries, wait: Callable[[float], Awaitable[bool]]
) -> T | None:
    """`poll(timeout_s)`'s reply, tried again through passing failures; None when no try may pass before the last
    moment or within the caller's time (the lines are given up on). Raises the last failure (grpc.RpcError) when
    `wait(seconds)` says the wait was cut short (the router stops)."""
    failures = 0
    while True:
        try:
            return await poll(tries.timeout_s())
        except grpc.RpcError as err:
            error = ServiceError.from_rpc_error(err)
            if not passing(error):
                return None
            failures += 1
            pause_s = wait_s(error, failures)
            next_try = money_now() + pause_s
            if next_try >= tries.last_moment:
                return None
            # The caller's time ends first: given up on now all the same. This collect may be the caller's last before
            # the holds end; once the reconciler has charged them no line is pending, and a poll failing for good but
            # told UNAVAILABLE (by a providers service of the version before) would fail every collect after, the batch
            # unended.
            if tries.caller_end is not None and next_try + LEAST_TRY_S > tries.caller_end:
                return None
            log.warning(
                "provider batch not read near its lines' holds' end; trying again",
                extra={"code": error.code.name, "reason": error.reason, "failures": failures, "wait_s": pause_s},
            )
            if not await wait(pause_s):
                raise
