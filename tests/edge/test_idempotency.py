"""The request id an Idempotency-Key derives: the same for one tenant, API key and value, another for any other of
the three, bounded, and never of the form of the edge's own ids (uuid4 hex)."""

from __future__ import annotations

import re
import uuid

import pytest

from services.edge.idempotency import request_id, reused
from services.edge.openai_api import ApiError


def test_one_caller_and_value_make_one_id_and_any_other_part_another() -> None:
    base = request_id("acme", "sk-a", "order-1")
    assert request_id("acme", "sk-a", "order-1") == base  # a retry is the same request
    others = {
        request_id("acme", "sk-b", "order-1"),  # another key of the tenant
        request_id("globex", "sk-a", "order-1"),  # the key's words under another tenant
        request_id("acme", "sk-a", "order-2"),
        request_id("acme", "", "order-1"),  # the keyless caller
        # The parts are kept apart: no moving of text between them gives the same id.
        request_id("acme", "sk-", "aorder-1"),
        request_id("acmesk-a", "", "order-1"),
    }
    assert base not in others and len(others) == 6


def test_the_id_is_bounded_and_never_one_of_the_edges_own() -> None:
    derived = request_id("t" * 128, "k" * 4096, "~" * 255)
    assert re.fullmatch(r"idem-[0-9a-f]{48}", derived)
    assert not re.fullmatch(r"[0-9a-f]{32}", derived)  # the edge's own: uuid4().hex
    assert len(uuid.uuid4().hex) == 32 and "-" not in uuid.uuid4().hex


@pytest.mark.parametrize(
    ("charged", "told"),
    [("0", ""), ("0.000", ""), ("0.25", "charged 0.25 USD before"), ("10", "charged 10 USD before")],
)
def test_a_retry_in_flight_after_a_release_is_told_in_flight_and_a_charge_before_only_when_some(
    charged: str, told: str
) -> None:
    """A duplicate with a request of its id in flight and a charge on record (a retry after a release, charged 0 before;
    or one a store that lost an admission let in again) is told the request in flight: the charge before only when it
    was something, never 'charged 0 USD', which reads as no request under way."""
    refused = ApiError(409, "duplicate", code="duplicate_request", charged_usd=charged, held_usd="0.001")
    error = reused(refused)
    assert error.code == "idempotency_key_reused" and error.retryable
    assert "still in flight, holding 0.001 USD" in error.message
    assert (told in error.message) if told else ("was charged" not in error.message)
