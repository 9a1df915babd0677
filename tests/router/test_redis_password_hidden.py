"""The password in the router's Redis URLs (ROUTER_REDIS_URL, ROUTER_CACHE_REDIS_URL) shows nowhere: not in the
settings' repr, not in a start-up refusal of another setting, not in the output of a router whose Redis is out of
reach; and a URL its password breaks is refused at start without quoting it."""

from __future__ import annotations

import pytest

from services.router.settings import RouterSettings
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
        monkeypatch.setenv("ROUTER_REDIS_URL", url)
        monkeypatch.setenv("ROUTER_CACHE_REDIS_URL", url)
        assert_settings_hide_it(
            RouterSettings,
            "redis_url",
            url,
            refusals=[
                ({"ROUTER_REQUEST_TIMEOUT_S": "soon"}, "ROUTER_REQUEST_TIMEOUT_S", "request_timeout_s"),
                # a rule across settings, whose input is all of them
                (
                    {"ROUTER_REQUEST_TIMEOUT_S": "300", "ROUTER_HEARTBEAT_TTL_S": "1"},
                    "ROUTER_*: ROUTER_HEARTBEAT_TTL_S must be at least",
                    "ROUTER_HEARTBEAT_TTL_S must be at least",
                ),
            ],
            monkeypatch=monkeypatch,
            capsys=capsys,
        )
        monkeypatch.undo()  # the routers below see their own settings only

        status, output = run("services.router", env={"ROUTER_REDIS_URL": url, "ROUTER_PORT": "0"})
        assert status != 0 and "the money store (ROUTER_REDIS_URL) cannot be reached" in output
        assert_no_password(output)
        # The cache out of reach is bypassed: the router serves, and logs what failed, tracebacks and all.
        status, output = run(
            "services.router", env={"ROUTER_CACHE_REDIS_URL": url, "ROUTER_PORT": "0"}, until="READY router"
        )
        assert status == 0 and "the cache store's memory use cannot be read" in output
        assert "Connection refused" in output
        assert_no_password(output)


@pytest.mark.parametrize("variable", ["ROUTER_REDIS_URL", "ROUTER_CACHE_REDIS_URL"])
def test_a_url_its_password_breaks_is_refused_at_start_without_quoting_it(variable: str) -> None:
    with closed_port() as port:
        status, output = run("services.router", env={variable: url_cut_by_its_password(port), "ROUTER_PORT": "0"})
    assert_no_password(output)
    assert status == 2, output
    assert f"{variable}: the port is not a number" in output and "percent-encoded" in output
