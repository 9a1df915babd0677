"""ROUTER_PENDING_STALE_S must be longer than any request may run (ROUTER_REQUEST_TIMEOUT_S and the charge after it):
the reconciler settles every pending charge older than it at its hold, a live router's too. Below that, a request
still running is charged its worst case by the reconciler, and its own charge, of what it cost, is then refused as
a repeat. Refused at start, as the other settings that would break the money's safety nets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.router.settings import RouterSettings
from services.router.store import HOLD_S


@pytest.mark.parametrize("stale", [30.0, 299.0])
def test_pending_charges_that_go_stale_before_a_request_may_end_are_refused(stale: float) -> None:
    assert RouterSettings().request_timeout_s == 300.0
    with pytest.raises(ValidationError, match=r"(?i)pending_stale_s"):
        RouterSettings(pending_stale_s=stale)


def test_the_default_staleness_outlasts_any_request_and_its_hold() -> None:
    settings = RouterSettings()
    assert settings.pending_stale_s > HOLD_S > settings.request_timeout_s
