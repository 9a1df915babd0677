"""EDGE_BATCH_WINDOW_S: a batch's completion window, 24 h as OpenAI's unless a test shortens it; never longer,
never none."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.batches.wire import DAY_S
from services.edge.settings import EdgeSettings


def test_the_window_is_a_day_unless_shortened() -> None:
    assert EdgeSettings().batch_window_s == DAY_S == 86_400
    assert EdgeSettings(batch_window_s=3).batch_window_s == 3


@pytest.mark.parametrize("bad", [0, -1, DAY_S + 1])
def test_a_window_of_none_or_past_a_day_is_refused(bad: int) -> None:
    with pytest.raises(ValidationError, match="batch_window_s"):
        EdgeSettings(batch_window_s=bad)
