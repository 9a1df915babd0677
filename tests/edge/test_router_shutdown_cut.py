"""A completion the router cut as its drain's grace ended (services/router/shutdown_cut.py) reaches a REST caller as a
503 that is not retried, saying what the router said of the money: the charge still pending (a unary call's answer
generated on, charged when done), or what a cut stream was charged. As the router's bare UNAVAILABLE was before, which
the edge took for a call dropped mid-way (its charge pending): told with details, it was an answer free to retry. A call
cut before anything of it was served or charged (its id released) is a 503 to retry."""

from __future__ import annotations

from decimal import Decimal

from grpc.aio import AioRpcError, Metadata

from llmrouter.errors import ServiceError
from services.edge.app import api_error, error_response
from services.router.shutdown_cut import cut_error


def as_received(error: ServiceError) -> AioRpcError:
    return AioRpcError(error.code, Metadata(), Metadata(*error.trailing_metadata()), error.message)


def test_a_unary_call_cut_is_a_503_whose_charge_is_pending() -> None:
    answer = api_error(as_received(cut_error("r1", None)), "r1", charging=True)
    assert (answer.status, answer.retryable, answer.cost_pending, answer.charged_usd) == (503, False, True, "")
    assert answer.body()["x_router"] == {"cost_pending": True}
    assert answer.code == "server_shutting_down"  # as the edge's own shutdown names a call it cut


def test_a_stream_cut_is_a_503_saying_what_it_was_charged() -> None:
    answer = api_error(as_received(cut_error("r2", Decimal("0.000123"))), "r2", charging=True)
    assert (answer.status, answer.retryable, answer.cost_pending, answer.charged_usd) == (503, False, False, "0.000123")


def test_a_call_cut_with_nothing_served_or_charged_is_a_503_to_retry() -> None:
    answer = api_error(as_received(cut_error("r3", Decimal("0"), retryable=True)), "r3", charging=True)
    assert (answer.status, answer.retryable, answer.cost_pending, answer.charged_usd) == (503, True, False, "0")
    assert answer.code == "server_shutting_down"
    headers = error_response(answer).headers
    assert "x-should-retry" not in headers and headers["retry-after"] == "1"
    charged = api_error(as_received(cut_error("r4", Decimal("0.000123"))), "r4", charging=True)
    assert error_response(charged).headers["x-should-retry"] == "false"
