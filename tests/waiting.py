"""Waiting for what a test needs to have happened, with a deadline, never for a guessed time: on a loaded CI machine
(two xdist workers on two busy cores) any fixed sleep is too short some day, and the assertion after it flakes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

from prometheus_client import REGISTRY

POLL_S = 0.01


async def eventually(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Returns once condition() (which may be a coroutine function) is true, polled until timeout_s, when the test
    fails saying `what` never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(POLL_S)


def rpcs_ended(service: str, method: str, code: str) -> float:
    """How many calls of `method` this process's `service` servers have ended with `code` (the interceptor counts a
    call once its handler is done): a test waits for it to grow to know a server has dealt with a call, e.g. seen its
    caller leave (code CANCELLED)."""
    wanted = {"service": service, "method": method, "code": code}
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "llmrouter_grpc_requests"
        for sample in family.samples
        if sample.name == "llmrouter_grpc_requests_total" and wanted.items() <= sample.labels.items()
    )  # whatever the reason


def http_requests_ended(route: str, status: str | None = None) -> float:
    """How many requests of `route` this process's edges have ended (answered, or their caller gone), with `status` or
    any: a test waits for it to grow to know the edge is done with a request, e.g. one whose caller left."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "llmrouter_edge_http_requests"
        for sample in family.samples
        if sample.name == "llmrouter_edge_http_requests_total"
        and sample.labels["route"] == route
        and status in (None, sample.labels["status"])
    )


def inflight(service: str) -> float:
    """The calls this process's `service` servers are serving now: a test waits for it to grow to know a call has
    reached a server (and waits there)."""
    return REGISTRY.get_sample_value("llmrouter_inflight_requests", {"service": service}) or 0.0
