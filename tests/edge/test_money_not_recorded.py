"""A completion whose charge (or release, or undo) neither the money store nor the outbox kept fails MONEY_NOT_RECORDED
(services/router/outbox.py, NotRecorded): the request stays admitted, and the reconciler charges its hold. Its 502 is
not retried: OpenAI's SDKs retry a 5xx twice on their own, each retry a new request charged again, while the ledger
charges the first its hold. Told nothing of the money, it was a failure free to retry."""

from __future__ import annotations

from services.edge.app import api_error, error_response
from services.router.outbox import NotRecorded
from tests.edge.test_router_shutdown_cut import as_received


def test_a_completion_whose_charge_was_kept_nowhere_is_a_502_whose_charge_is_pending() -> None:
    answer = api_error(as_received(NotRecorded()), "r1", charging=True)
    assert (answer.status, answer.retryable, answer.cost_pending, answer.charged_usd) == (502, False, True, "")
    assert answer.body()["x_router"] == {"cost_pending": True}
    assert error_response(answer).headers["x-should-retry"] == "false"
