"""The password in the ledger commands' Redis URL (ROUTER_REDIS_URL: the sink, the stream's export and trim, which
the chart's CronJob runs) shows nowhere: not in the settings' repr, not in a start-up refusal of another setting, not
in the output of a command whose Redis is out of reach; and a URL its password breaks is refused without quoting it."""

from __future__ import annotations

import pytest

from services.ledger.settings import LedgerSettings
from tests.redis_password import (
    assert_no_password,
    assert_settings_hide_it,
    closed_port,
    run,
    url_cut_by_its_password,
    url_with_password,
)

SINK = ("services.ledger", "sink")
TRIM = ("services.router.ledger", "trim", "--copied-only")


def test_the_redis_password_shows_nowhere(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with closed_port() as port:
        url = url_with_password(port)
        monkeypatch.setenv("ROUTER_REDIS_URL", url)
        assert_settings_hide_it(
            LedgerSettings,
            "redis_url",
            url,
            refusals=[({"ROUTER_LEDGER_SQL_MAX_MIB": "-1"}, "ROUTER_LEDGER_SQL_MAX_MIB", "ledger_sql_max_mib")],
            monkeypatch=monkeypatch,
            capsys=capsys,
        )
        monkeypatch.undo()  # the commands below see their own settings only

        # The sink retries for as long as the store is out of reach, saying why each time.
        status, output = run(*SINK, env={"ROUTER_REDIS_URL": url}, until="ledger sink retrying")
        assert f"ConnectionError: Error 111 connecting to 127.0.0.1:{port}" in output
        assert_no_password(output)
        status, output = run(*TRIM, env={"ROUTER_REDIS_URL": url})
        assert status != 0 and f"127.0.0.1:{port}" in output
        assert_no_password(output)


@pytest.mark.parametrize("command", [SINK, TRIM])
def test_a_url_its_password_breaks_is_refused_at_start_without_quoting_it(command: tuple[str, ...]) -> None:
    with closed_port() as port:
        status, output = run(*command, env={"ROUTER_REDIS_URL": url_cut_by_its_password(port)})
    assert_no_password(output)
    assert status == 2, output
    assert "ROUTER_REDIS_URL: the port is not a number" in output
