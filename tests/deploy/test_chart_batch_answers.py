"""router.batchAnswers gives the routers ROUTER_BATCH_ANSWER_KEPT_S and ROUTER_BATCH_ANSWER_KEPT_BYTES: how long and up
to what size a settled provider batch line is kept in the money Redis, the router's defaults unless set, within the
router's bounds (refused at render rather than at the router's start), and set there alone, not in router.env.
Needs helm (deploy/install-tools.sh)."""

from __future__ import annotations

import subprocess

import pytest

from services.router.settings import RouterSettings

from .support import render
from .test_chart_hold_totals import router_env


def test_the_routers_defaults_unless_set() -> None:
    env = router_env(render())
    fields = RouterSettings.model_fields
    assert float(str(env["ROUTER_BATCH_ANSWER_KEPT_S"])) == fields["batch_answer_kept_s"].default
    assert int(str(env["ROUTER_BATCH_ANSWER_KEPT_BYTES"])) == fields["batch_answer_kept_bytes"].default
    env = router_env(
        render("--set", "router.batchAnswers.keptSeconds=172800", "--set", "router.batchAnswers.keptBytes=4096")
    )
    assert (env["ROUTER_BATCH_ANSWER_KEPT_S"], env["ROUTER_BATCH_ANSWER_KEPT_BYTES"]) == ("172800", "4096")


@pytest.mark.parametrize(
    "setting",
    [
        "router.batchAnswers.keptSeconds=3600",
        "router.batchAnswers.keptSeconds=700000",
        "router.batchAnswers.keptBytes=1024",
    ],
)
def test_out_of_the_routers_bounds_is_refused(setting: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("--set", setting)
    assert setting.split(".")[-1].split("=")[0] in refused.value.stderr


def test_router_env_may_not_set_them() -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("--set", "router.env.ROUTER_BATCH_ANSWER_KEPT_S=172800")
    assert "router.env.ROUTER_BATCH_ANSWER_KEPT_S" in refused.value.stderr
