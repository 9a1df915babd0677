"""The edge's deadline on a completion (EDGE_REQUEST_TIMEOUT_S) outlasts the router's own limit on it
(ROUTER_REQUEST_TIMEOUT_S), with room for the router's answer and its charge to come back. The router serves an
admitted completion for up to its limit, fallbacks and escalation included, and its provider calls get only the time
the caller's deadline leaves: under the edge's 120 s against the router's 300 s, an attempt the providers let run
their total_timeout_s (120 s) was cut at the edge, the fallback the router's limit leaves room for never made, and
the caller got a 504 (its charge the attempt's worst case, or pending) for a completion the router would have served."""

from __future__ import annotations

from pydantic import BaseModel

from llmrouter.registry import ProviderSpec
from services.edge.settings import EdgeSettings
from services.router.settings import RouterSettings

ANSWER_BACK_S = 5  # the router's answer (and its charge) reaching the edge once the router's own limit has passed


def default(settings: type[BaseModel], name: str) -> float:
    return float(settings.model_fields[name].default)


def test_the_edges_deadline_outlasts_the_routers_limit() -> None:
    edge, router = default(EdgeSettings, "request_timeout_s"), default(RouterSettings, "request_timeout_s")
    assert edge >= router + ANSWER_BACK_S


def test_one_provider_attempt_fits_well_within_the_edges_deadline() -> None:
    attempt = default(ProviderSpec, "total_timeout_s")
    assert default(EdgeSettings, "request_timeout_s") >= 2 * attempt  # an attempt timed out, then its fallback
