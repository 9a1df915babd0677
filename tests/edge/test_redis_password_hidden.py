"""The password in the edge's batch store URL (EDGE_BATCH_REDIS_URL) shows nowhere: not in the settings' repr, not in
a start-up refusal of another setting, not in the output of an edge whose store is out of reach; and a URL its
password breaks is refused at start without quoting it."""

from __future__ import annotations

import pytest

from services.edge.settings import EdgeSettings
from tests.redis_password import (
    assert_no_password,
    assert_settings_hide_it,
    closed_port,
    run,
    url_cut_by_its_password,
    url_with_password,
)


def test_the_redis_password_shows_nowhere(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with closed_port() as port:
        url = url_with_password(port)
        monkeypatch.setenv("EDGE_BATCH_REDIS_URL", url)
        assert_settings_hide_it(
            EdgeSettings,
            "batch_redis_url",
            url,
            refusals=[({"EDGE_BATCH_CONCURRENCY": "0"}, "EDGE_BATCH_CONCURRENCY", "batch_concurrency")],
            monkeypatch=monkeypatch,
            capsys=capsys,
        )
        monkeypatch.undo()  # the edge below sees its own settings only

        # The batch store out of reach as the edge starts (it resumes the batches left running): it stops.
        status, output = run("services.edge", env={"EDGE_BATCH_REDIS_URL": url, "EDGE_PORT": "0"})
        assert status != 0 and "Application startup failed" in output and f"127.0.0.1:{port}" in output
        assert_no_password(output)


def test_a_url_its_password_breaks_is_refused_at_start_without_quoting_it() -> None:
    with closed_port() as port:
        status, output = run("services.edge", env={"EDGE_BATCH_REDIS_URL": url_cut_by_its_password(port)})
    assert_no_password(output)
    assert status == 2, output
    assert "EDGE_BATCH_REDIS_URL: the port is not a number" in output
