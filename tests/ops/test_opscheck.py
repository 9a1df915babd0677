"""`python -m llmrouter.opscheck`: the judgement of a release's API objects, on objects built with the
kubernetes client's own models (as the API returns them). A live release is checked by the command itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes.client import (
    V1ConfigMap,
    V1Container,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1GRPCAction,
    V1LabelSelector,
    V1NetworkPolicy,
    V1ObjectMeta,
    V1PodDisruptionBudget,
    V1PodSpec,
    V1PodTemplateSpec,
    V1Probe,
    V1StatefulSet,
    V1StatefulSetSpec,
    V1StatefulSetStatus,
    V2CrossVersionObjectReference,
    V2HorizontalPodAutoscaler,
    V2HorizontalPodAutoscalerCondition,
    V2HorizontalPodAutoscalerSpec,
    V2HorizontalPodAutoscalerStatus,
    V2MetricSpec,
    V2MetricStatus,
)

from llmrouter import opscheck
from llmrouter.registry import DEFAULT_REGISTRY

ROOT = Path(__file__).resolve().parents[2]

SERVICES = opscheck.SERVICES


def meta(svc: str, generation: int = 1) -> V1ObjectMeta:
    return V1ObjectMeta(
        name=f"llm-{svc}",
        generation=generation,
        labels={"app.kubernetes.io/instance": "llm", "app.kubernetes.io/component": svc},
    )


def deployment(svc: str, replicas: int = 2, available: int = 2, updated: int = 2, observed: int = 1) -> V1Deployment:
    probe = V1Probe(grpc=V1GRPCAction(port=50060)) if svc != "edge" else None
    pod = V1PodSpec(containers=[V1Container(name=svc, readiness_probe=probe)])
    return V1Deployment(
        metadata=meta(svc),
        spec=V1DeploymentSpec(replicas=replicas, selector=V1LabelSelector(), template=V1PodTemplateSpec(spec=pod)),
        status=V1DeploymentStatus(
            replicas=replicas, updated_replicas=updated, available_replicas=available, observed_generation=observed
        ),
    )


def statefulset(svc: str, replicas: int = 2, available: int = 2, updated: int = 2) -> V1StatefulSet:
    """A service's StatefulSet (the router's, its outbox on a claim per pod: router.outbox.persistence)."""
    pod = deployment(svc).spec.template
    return V1StatefulSet(
        metadata=meta(svc),
        spec=V1StatefulSetSpec(replicas=replicas, selector=V1LabelSelector(), service_name=f"llm-{svc}", template=pod),
        status=V1StatefulSetStatus(
            replicas=replicas, updated_replicas=updated, available_replicas=available, observed_generation=1
        ),
    )


def hpa(svc: str, active: str = "True", reading: int = 2) -> V2HorizontalPodAutoscaler:
    metrics = [V2MetricSpec(type="Resource"), V2MetricSpec(type="Pods")]
    return V2HorizontalPodAutoscaler(
        metadata=meta(svc),
        spec=V2HorizontalPodAutoscalerSpec(
            max_replicas=4,
            scale_target_ref=V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name=f"llm-{svc}"),
            metrics=metrics,
        ),
        status=V2HorizontalPodAutoscalerStatus(
            desired_replicas=2,
            current_metrics=[V2MetricStatus(type="Resource")] * reading,
            conditions=[
                V2HorizontalPodAutoscalerCondition(
                    type="ScalingActive", status=active, reason="FailedGetPodsMetric", message="no metrics returned"
                )
            ],
        ),
    )


def healthy() -> opscheck.Objects:
    return opscheck.Objects(
        deployments=[deployment(s) for s in SERVICES],
        hpas=[hpa(s) for s in SERVICES],
        pdbs=[V1PodDisruptionBudget(metadata=meta(s)) for s in SERVICES],
        policies=[V1NetworkPolicy(metadata=meta(s)) for s in SERVICES],
        configmaps=[V1ConfigMap(metadata=meta("registry"), data={"models.yaml": DEFAULT_REGISTRY.read_text()})],
    )


def failing(findings: list[opscheck.Finding]) -> list[str]:
    return [f.line() for f in findings if not f.ok]


def test_a_healthy_release_passes() -> None:
    findings = opscheck.evaluate(healthy())
    assert not failing(findings)
    assert len(findings) == 1 + 4 + 4 + 3


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        (deployment("router", available=1), "1/2 replicas available"),
        (deployment("router", updated=1), "1/2 replicas on the latest spec"),
        (deployment("router", observed=0), "has not acted on the latest spec"),
    ],
)
def test_a_deployment_not_rolled_out_fails(broken: V1Deployment, complaint: str) -> None:
    objects = healthy()
    objects.deployments[2] = broken
    (problem,) = failing(opscheck.evaluate(objects))
    assert "Deployment llm-router rolled out" in problem and complaint in problem


def test_a_router_statefulset_is_its_workload_and_checked_rolled_out() -> None:
    """With its outbox on a claim per pod the router is a StatefulSet: it counts as the router's workload (before,
    the release failed "a Deployment per service: none for router"), and is checked as a Deployment is."""
    objects = healthy()
    objects.deployments.pop(2)
    objects.statefulsets = [statefulset("router")]
    findings = opscheck.evaluate(objects)
    assert not failing(findings)
    assert "ok   StatefulSet llm-router rolled out" in [f.line() for f in findings]
    objects.statefulsets = [statefulset("router", available=1)]
    (problem,) = failing(opscheck.evaluate(objects))
    assert "StatefulSet llm-router rolled out" in problem and "1/2 replicas available" in problem
    objects.statefulsets = []
    (problem,) = failing(opscheck.evaluate(objects))
    assert "per service: none for router" in problem
    assert opscheck.health_port(statefulset("router")) == 50060


def test_an_hpa_without_its_metrics_fails() -> None:
    objects = healthy()
    objects.hpas[0] = hpa("classifier", active="False", reading=1)
    (problem,) = failing(opscheck.evaluate(objects))
    assert "HPA llm-classifier" in problem
    assert "not scaling (FailedGetPodsMetric: no metrics returned)" in problem
    assert "reads 1 of its 2 metrics" in problem


def test_missing_disruption_budgets_and_policies_are_named() -> None:
    objects = healthy()
    objects.pdbs.pop(3)
    objects.policies = []
    problems = failing(opscheck.evaluate(objects))
    assert "FAIL a PodDisruptionBudget per service: none for edge" in problems
    assert "FAIL a NetworkPolicy per service: none for classifier, edge, providers, router" in problems


def test_an_invalid_registry_configmap_fails() -> None:
    objects = healthy()
    registry = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    registry["models"][0]["tier"] = "no-such-tier"
    objects.configmaps = [V1ConfigMap(metadata=meta("registry"), data={"models.yaml": yaml.safe_dump(registry)})]
    (problem,) = failing(opscheck.evaluate(objects))
    assert "registry ConfigMap llm-registry valid" in problem and "no-such-tier" in problem


def test_health_port_is_the_probe_port() -> None:
    assert opscheck.health_port(deployment("router")) == 50060
    assert opscheck.health_port(deployment("edge")) is None


def run_opscheck(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llmrouter.opscheck", "--namespace", "llm", "--release", "llm"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_no_kubeconfig_is_one_line_and_status_1(tmp_path: Path) -> None:
    """Run where no cluster is configured, it printed kubernetes' ConfigException traceback."""
    done = run_opscheck(tmp_path / "absent")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("opscheck: cannot read the release from the Kubernetes API: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_a_cluster_out_of_reach_is_one_line_and_status_1(tmp_path: Path) -> None:
    with socket.socket() as held:  # bound, never listening: connections to it are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        kubeconfig = tmp_path / "config"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        done = run_opscheck(kubeconfig)
    assert done.returncode == 1
    assert done.stderr.startswith("opscheck: cannot read the release from the Kubernetes API: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
