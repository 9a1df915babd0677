"""Router settings that would break the money's safety nets are refused at start, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.router.settings import RouterSettings


@pytest.mark.parametrize(("ttl", "interval"), [(1.0, 2.0), (5.0, 2.0), (0.0005, 0.0001)])
def test_a_heartbeat_that_could_expire_between_beats_is_refused(ttl: float, interval: float) -> None:
    with pytest.raises(ValidationError, match="heartbeat_ttl_s"):
        RouterSettings(heartbeat_ttl_s=ttl, upkeep_interval_s=interval)


def test_a_heartbeat_outlasting_three_beats_is_accepted() -> None:
    settings = RouterSettings(heartbeat_ttl_s=6.0, upkeep_interval_s=2.0)
    assert settings.heartbeat_ttl_s == 6.0
