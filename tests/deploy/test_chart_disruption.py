"""The services' PodDisruptionBudgets never block a node drain: one that allows no eviction of a service at its
fewest pods (replicas, or the HPA's minReplicas) holds `kubectl drain`, node upgrades and the cluster autoscaler's
scale-down for ever. The chart refuses it at render, saying why; budgets that let a pod go render as given. Needs
helm (deploy/install-tools.sh; a failure without it under CI=true)."""

from __future__ import annotations

import subprocess

import pytest

from .support import SERVICES, by_kind, render

RELEASE = "llm-llm-cost-router"


def fixed(svc: str, replicas: int) -> tuple[str, ...]:
    return ("--set", f"{svc}.autoscaling.enabled=false", "--set", f"{svc}.replicas={replicas}")


@pytest.mark.parametrize("svc", SERVICES)
@pytest.mark.parametrize(
    ("settings", "budget"),
    [
        (("--set", "{svc}.pdb.maxUnavailable=0"), "maxUnavailable: 0"),
        (("--set", "{svc}.pdb.maxUnavailable=0%"), "maxUnavailable: 0%"),
        (("--set", "{svc}.pdb.maxUnavailable=null", "--set", "{svc}.pdb.minAvailable=100%"), "minAvailable: 100%"),
        (
            ("--set", "{svc}.pdb.maxUnavailable=null", "--set", "{svc}.pdb.minAvailable=2"),
            "minAvailable: 2",
        ),  # HPA's minReplicas, 2
    ],
)
def test_a_budget_that_blocks_every_drain_is_refused(svc: str, settings: tuple[str, ...], budget: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*(s.format(svc=svc) for s in settings))
    complaint = " ".join(failure.value.stderr.split())
    assert f"{svc}.pdb ({budget})" in complaint
    assert "drain" in complaint


def test_a_minimum_at_the_replicas_without_the_hpa_is_refused_and_below_them_taken() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*fixed("router", 1), "--set", "router.pdb.maxUnavailable=null", "--set", "router.pdb.minAvailable=1")
    assert "router.pdb (minAvailable: 1)" in " ".join(failure.value.stderr.split())
    docs = render(*fixed("router", 3), "--set", "router.pdb.maxUnavailable=null", "--set", "router.pdb.minAvailable=2")
    assert by_kind(docs, "PodDisruptionBudget")[f"{RELEASE}-router"]["spec"]["minAvailable"] == 2
    half = ("--set", "edge.pdb.maxUnavailable=null", "--set", "edge.pdb.minAvailable=50%")
    with pytest.raises(subprocess.CalledProcessError):  # rounded up, as Kubernetes does: half of one pod is that pod
        render(*fixed("edge", 1), *half)
    docs = render(*fixed("edge", 3), *half)
    assert by_kind(docs, "PodDisruptionBudget")[f"{RELEASE}-edge"]["spec"]["minAvailable"] == "50%"


def test_the_default_budgets_let_one_pod_go_at_a_time() -> None:
    for svc, pdb in by_kind(render(*fixed("classifier", 1)), "PodDisruptionBudget").items():
        assert pdb["spec"]["maxUnavailable"] == 1, svc
