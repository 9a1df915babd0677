"""A variable of a service's prefix that is none of its settings is warned of as the service starts: misspelt, it was
ignored without a word and its default served (ROUTER_TENANT_BUDGET_UDS: no budget at all)."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings

from llmrouter.settings import load_settings, unknown_settings
from services.edge.settings import EdgeSettings
from services.ledger.settings import LedgerSettings
from services.router.settings import BudgetPeriodSettings, PendingStaleSettings, RequestIdSettings, RouterSettings


def test_a_misspelt_setting_is_warned_of_with_the_name_it_is_close_to(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_MAX_BODY_BYTE", "1000")
    monkeypatch.setenv("EDGE_SOMETHING_ELSE", "1")
    monkeypatch.setenv("EDGE_MAX_BODY_BYTES", "2000")  # a setting: no word of it
    monkeypatch.setenv("ROUTER_TENANT_BUDGET_UDS", "5")  # another service's prefix: that service's to say
    settings = load_settings(EdgeSettings)
    assert settings.max_body_bytes == 2000
    assert capsys.readouterr().err.splitlines() == [
        "warning: EDGE_MAX_BODY_BYTE is no setting of EdgeSettings and is ignored; did you mean EDGE_MAX_BODY_BYTES?",
        "warning: EDGE_SOMETHING_ELSE is no setting of EdgeSettings and is ignored",
    ]


def test_no_warning_where_names_are_not_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launcher (its services warn as they start) and a part of a service's settings (the ledger's commands, in a
    router pod whose every other ROUTER_ variable is no ledger setting) say nothing."""
    monkeypatch.setenv("EDGE_MAX_BODY_BYTE", "1000")
    monkeypatch.setenv("ROUTER_TENANT_BUDGET_UDS", "5")
    load_settings(EdgeSettings, name_check=False)
    load_settings(LedgerSettings)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "part", [LedgerSettings, BudgetPeriodSettings, PendingStaleSettings, RequestIdSettings], ids=lambda c: c.__name__
)
def test_every_router_variable_another_command_reads_is_a_router_setting(part: type[BaseSettings]) -> None:
    """The ledger's commands and sink, key_move and money_check read ROUTER_ variables set in a router pod (the chart's
    router.env: ROUTER_KEY_MOVE_REPLICAS, the ledger's): the router, which warns of its prefix's unknown names, must
    know each, or it would warn of a setting the operator set right."""
    environ = {f"ROUTER_{field}".upper(): "1" for field in part.model_fields}
    assert unknown_settings(RouterSettings, environ) == []
