"""grpcHeadlessServices on an installed release: a Service's spec.clusterIP cannot change once made, so switching it
is refused at render (against a Kubernetes API on loopback holding the installed Services), naming what to delete
first, rather than stopped by the API server part-way through the upgrade. Needs helm (deploy/install-tools.sh; a
failure without it under CI=true)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .kube_api import KubeApi
from .support import GRPC_SERVICES, by_kind, render

RELEASE = "llm-llm-cost-router"


def headless(on: bool, *settings: str) -> tuple[str, ...]:
    return ("--set", f"grpcHeadlessServices={str(on).lower()}", *settings)


@pytest.mark.parametrize("installed", [True, False])
def test_switching_headless_grpc_services_on_an_installed_release_is_refused_naming_what_to_delete(
    tmp_path: Path, installed: bool
) -> None:
    with KubeApi(tmp_path) as api:
        assert by_kind(render(*headless(not installed), monitoring_crds=False, kubeconfig=api.kubeconfig), "Service")
        for service in by_kind(render(*headless(installed)), "Service").values():
            api.store(service)
        upgraded = by_kind(render(*headless(installed), monitoring_crds=False, kubeconfig=api.kubeconfig), "Service")
        for svc in GRPC_SERVICES:
            assert (upgraded[f"{RELEASE}-{svc}"]["spec"].get("clusterIP") == "None") is installed
        with pytest.raises(subprocess.CalledProcessError) as failure:
            render(*headless(not installed), monitoring_crds=False, kubeconfig=api.kubeconfig)
    complaint = " ".join(failure.value.stderr.split())
    assert "cannot change a Service's spec.clusterIP" in complaint
    deleted = " ".join(f"{RELEASE}-{svc}" for svc in GRPC_SERVICES)
    assert f"kubectl -n llm delete service {deleted};" in complaint
    assert "delete statefulset" not in complaint


def test_with_the_router_a_statefulset_its_governing_service_is_named_too(tmp_path: Path) -> None:
    outbox = ("--set", "router.outbox.persistence.enabled=true")
    with KubeApi(tmp_path) as api:
        for service in by_kind(render(*headless(False, *outbox)), "Service").values():
            api.store(service)
        with pytest.raises(subprocess.CalledProcessError) as failure:
            render(*headless(True, *outbox), monitoring_crds=False, kubeconfig=api.kubeconfig)
    complaint = " ".join(failure.value.stderr.split())
    assert f"kubectl -n llm delete statefulset {RELEASE}-router --cascade=orphan" in complaint


@pytest.mark.parametrize("installed", [True, False])
def test_the_routers_statefulset_left_governed_by_the_other_service_is_refused_too(
    tmp_path: Path, installed: bool
) -> None:
    """The gRPC Services deleted as told but not the router's StatefulSet: its spec.serviceName cannot change either,
    and the upgrade stopped part-way through at it, the Services already made anew."""
    outbox = ("--set", "router.outbox.persistence.enabled=true")
    with KubeApi(tmp_path) as api:
        for statefulset in by_kind(render(*headless(installed, *outbox)), "StatefulSet").values():
            api.store(statefulset)
        unchanged = render(*headless(installed, *outbox), monitoring_crds=False, kubeconfig=api.kubeconfig)
        assert by_kind(unchanged, "StatefulSet")
        with pytest.raises(subprocess.CalledProcessError) as failure:
            render(*headless(not installed, *outbox), monitoring_crds=False, kubeconfig=api.kubeconfig)
    complaint = " ".join(failure.value.stderr.split())
    assert "spec.serviceName" in complaint
    assert f"kubectl -n llm delete statefulset {RELEASE}-router --cascade=orphan" in complaint
