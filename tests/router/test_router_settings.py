"""Router settings that would break the money's safety nets are refused at start, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmrouter.settings import load_settings
from services.router.settings import MAX_HEARTBEAT_TTL_S, RouterSettings


@pytest.mark.parametrize(("ttl", "interval"), [(1.0, 2.0), (5.0, 2.0), (0.0005, 0.0001)])
def test_a_heartbeat_that_could_expire_between_beats_is_refused(ttl: float, interval: float) -> None:
    with pytest.raises(ValidationError, match=r"(?i)heartbeat_ttl_s"):
        RouterSettings(heartbeat_ttl_s=ttl, upkeep_interval_s=interval)


def test_a_heartbeat_outlasting_three_beats_is_accepted() -> None:
    settings = RouterSettings(heartbeat_ttl_s=6.0, upkeep_interval_s=2.0)
    assert settings.heartbeat_ttl_s == 6.0


@pytest.mark.parametrize("ttl", ["3600000", "1e9", "inf", str(MAX_HEARTBEAT_TTL_S + 1)])
def test_a_heartbeat_ttl_past_a_few_minutes_is_refused_at_start(
    ttl: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TTL is the reconciler's lease and the time between its sweeps: an hour typed in milliseconds would leave a
    dead router's pending charges unsettled for weeks."""
    monkeypatch.setenv("ROUTER_HEARTBEAT_TTL_S", ttl)
    monkeypatch.setenv("ROUTER_UPKEEP_INTERVAL_S", "2")
    with pytest.raises(SystemExit):
        load_settings(RouterSettings)
    refusal = capsys.readouterr().err
    assert f"ROUTER_HEARTBEAT_TTL_S: must be at most {MAX_HEARTBEAT_TTL_S} s" in refusal, refusal


def test_the_longest_heartbeat_ttl_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_HEARTBEAT_TTL_S", str(MAX_HEARTBEAT_TTL_S))
    assert RouterSettings().heartbeat_ttl_s == MAX_HEARTBEAT_TTL_S


@pytest.mark.parametrize("window", ["0", "-5", "nan", str(8 * 86400)])
def test_a_provider_batch_window_of_no_time_or_past_a_week_is_refused(
    window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_PROVIDER_BATCH_HOLD_S", window)
    with pytest.raises(ValidationError, match="provider_batch_hold_s"):
        RouterSettings()


def test_the_provider_batch_window_is_the_providers_day_and_a_margin_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert RouterSettings().provider_batch_hold_s == 26 * 3600
    monkeypatch.setenv("ROUTER_PROVIDER_BATCH_HOLD_S", "90")
    assert RouterSettings().provider_batch_hold_s == 90


def test_a_json_setting_that_is_no_json_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydantic-settings parses a JSON setting before validation: its SettingsError was a traceback naming the field
    in lower case, not the variable."""
    monkeypatch.setenv("ROUTER_TENANT_STRONG_SHARE", "{acme: 0.2}")
    with pytest.raises(SystemExit) as exited:
        load_settings(RouterSettings)
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "invalid configuration for RouterSettings:\n"
        "  ROUTER_TENANT_STRONG_SHARE: not valid JSON (Expecting property name enclosed in double quotes: line 1 column"
        " 2 (char 1))\n"
    )
