"""The router's charge outbox on a persistent volume (router.outbox.persistence), rendered by the real helm: off, the
router is the Deployment it always was, its outbox on the pod's /tmp emptyDir; on, a StatefulSet whose every pod has
a claim of its own, kept, and is otherwise the same pod, found by the same Services, budgets, autoscaler and network
policy. Needs helm and kubernetes-validate (deploy/install-tools.sh; without them, a failure under CI=true)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from .support import CHART, by_kind, render, tool

ON = ("--set", "router.outbox.persistence.enabled=true")
ROUTER = "llm-llm-cost-router-router"


def pod_template(workload: dict) -> dict:
    """The pod template without the checksums of what Helm generates anew at each render (certificates, passwords)."""
    template = copy.deepcopy(workload["spec"]["template"])
    annotations = template["metadata"].get("annotations", {})
    for key in [k for k in annotations if k.startswith("checksum/")]:
        del annotations[key]
    return template


def router_container(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


def test_off_the_router_is_a_deployment_with_no_claim() -> None:
    docs = render()
    assert ROUTER in by_kind(docs, "Deployment")
    assert ROUTER not in by_kind(docs, "StatefulSet")
    container = router_container(by_kind(docs, "Deployment")[ROUTER]["spec"]["template"])
    assert "ROUTER_DATA_DIR" not in {e["name"] for e in container["env"]}  # the default, on the /tmp emptyDir
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    (hpa,) = [h for h in by_kind(docs, "HorizontalPodAutoscaler").values() if h["metadata"]["name"] == ROUTER]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"


def test_on_each_router_pod_keeps_its_outbox_on_a_claim_of_its_own() -> None:
    docs = render(*ON, "--set", "router.outbox.persistence.storageClassName=fast-ssd")
    assert ROUTER not in by_kind(docs, "Deployment")
    router = by_kind(docs, "StatefulSet")[ROUTER]
    spec = router["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "outbox"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "1Gi"}},
    }
    # Kept when the StatefulSet goes or shrinks: a claim may hold charges still to land.
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert spec["podManagementPolicy"] == "Parallel"
    container = router_container(spec["template"])
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "outbox")
    data_dir = next(e["value"] for e in container["env"] if e["name"] == "ROUTER_DATA_DIR")
    # A directory inside the claim, not its root: the volume's root is group-writable (fsGroup), which the router
    # refuses for its data dir; it makes the directory itself, 0700.
    assert Path(data_dir).parent == Path(mount)
    # The non-root user writes it through the pod's fsGroup, which Kubernetes gives the volume.
    assert spec["template"]["spec"]["securityContext"]["fsGroup"] == 10001
    (hpa,) = [h for h in by_kind(docs, "HorizontalPodAutoscaler").values() if h["metadata"]["name"] == ROUTER]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": ROUTER}


def test_on_the_pod_is_the_deployments_with_the_claim_mounted() -> None:
    """The same probes, security context, resources, lifecycle, volumes and labels: only the outbox's mount and
    ROUTER_DATA_DIR differ."""
    before = pod_template(by_kind(render(), "Deployment")[ROUTER])
    after = pod_template(by_kind(render(*ON), "StatefulSet")[ROUTER])
    container = router_container(after)
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "outbox"]
    container["env"] = [e for e in container["env"] if e["name"] != "ROUTER_DATA_DIR"]
    assert after == before


def test_on_the_pods_are_found_by_the_same_services_budgets_and_policies() -> None:
    docs = render(*ON)
    router = by_kind(docs, "StatefulSet")[ROUTER]
    labels = router["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return selector.items() <= labels.items()

    assert selects(router["spec"]["selector"]["matchLabels"])
    assert selects(by_kind(docs, "PodDisruptionBudget")[ROUTER]["spec"]["selector"]["matchLabels"])
    assert selects(by_kind(docs, "NetworkPolicy")[ROUTER]["spec"]["podSelector"]["matchLabels"])
    service = by_kind(docs, "Service")[ROUTER]
    assert selects(service["spec"]["selector"])
    # The gRPC Services are headless by default (grpcHeadlessServices): the router's own governs the StatefulSet.
    assert router["spec"]["serviceName"] == ROUTER and service["spec"]["clusterIP"] == "None"
    assert "llm-llm-cost-router-router-pods" not in by_kind(docs, "Service")


def test_on_with_cluster_ip_services_a_headless_service_governs_the_pods_unscraped() -> None:
    docs = render(*ON, "--set", "grpcHeadlessServices=false")
    router = by_kind(docs, "StatefulSet")[ROUTER]
    governing = by_kind(docs, "Service")[router["spec"]["serviceName"]]
    assert governing["metadata"]["name"] == "llm-llm-cost-router-router-pods"
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= router["spec"]["template"]["metadata"]["labels"].items()
    # The ServiceMonitor scrapes Services with a job label: this one has none, so no pod is scraped twice.
    assert "llm-cost-router/job" not in governing["metadata"]["labels"]
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert {"key": "llm-cost-router/job", "operator": "Exists"} in monitor["spec"]["selector"]["matchExpressions"]
    assert by_kind(docs, "Service")[ROUTER]["spec"].get("clusterIP") != "None"  # the router's own, as it was


@pytest.mark.parametrize(("given", "rendered"), [("", None), ("-", ""), ("standard-rwo", "standard-rwo")])
def test_the_storage_class_default_none_or_named(given: str, rendered: str | None) -> None:
    docs = render(*ON, "--set-string", f"router.outbox.persistence.storageClassName={given}")
    (claim,) = by_kind(docs, "StatefulSet")[ROUTER]["spec"]["volumeClaimTemplates"]
    assert claim["spec"].get("storageClassName") == rendered


def test_the_statefulsets_name_leaves_its_pods_a_revision_label() -> None:
    """A StatefulSet's pods carry controller-revision-hash, its name and 11 characters, at most 63: its name is cut
    to 52 where a Deployment's would have been longer."""
    release = "a" * 51 + "-b"  # the longest release name Helm takes
    workloads = by_kind(render(*ON, release=release), "StatefulSet").values()
    (router,) = [s for s in workloads if s["metadata"]["name"].endswith("-router")]
    assert len(router["metadata"]["name"]) <= 52
    assert router["spec"]["serviceName"] == router["metadata"]["name"]  # the router's Service, named the same
    (deployment,) = [d for d in by_kind(render(release=release), "Deployment") if d.endswith("-router")]
    assert len(deployment) > 52  # off, the name was not cut so far


def test_router_env_may_not_move_the_outbox_off_its_claim() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*ON, "--set", "router.env.ROUTER_DATA_DIR=/tmp/elsewhere")
    assert "router.env.ROUTER_DATA_DIR: the chart sets it" in failure.value.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("router.outbox.persistence.size=0Gi", "/router/outbox/persistence/size"),
        ("router.outbox.persistence.size=1.5Gi", "/router/outbox/persistence/size"),
        ("router.outbox.persistence.size=lots", "/router/outbox/persistence/size"),
        ("router.outbox.persistence.size=1gb", "/router/outbox/persistence/size"),
        ("router.outbox.persistence.size=1024", "/router/outbox/persistence/size"),  # bytes: no unit
        ("router.outbox.persistence.enabled=yes", "/router/outbox/persistence/enabled"),
        ("router.outbox.persistence.accessModes={ReadOnlyMany}", "/router/outbox/persistence/accessModes/0"),
        ("router.outbox.persistence.accessModes=null", "missing property 'accessModes'"),
        ("router.outbox.persistence.storageClassName=Fast SSD", "/router/outbox/persistence/storageClassName"),
        ("router.outbox.persistance.enabled=true", "additional properties 'persistance' not allowed"),
    ],
)
def test_the_values_schema_refuses_a_bad_claim(setting: str, complaint: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*ON, "--set", setting)
    assert complaint in failure.value.stderr


def test_the_notes_say_where_the_outbox_is() -> None:
    def notes(*args: str) -> str:
        install = [tool("helm"), "install", "llm", str(CHART), "--dry-run", *args]
        return subprocess.run(install, check=True, capture_output=True, text=True).stdout.split("NOTES:", 1)[1]

    off = " ".join(notes().split())
    assert "outbox, /tmp/llmrouter-10001/router, on its emptyDir" in off
    assert "router.outbox.persistence.enabled keeps the outbox on a volume per pod" in off
    on = " ".join(notes(*ON).split())
    assert "outbox, /var/lib/llmrouter/outbox/router, on a PersistentVolumeClaim of its own" in on


@pytest.mark.parametrize("headless", [True, False])
def test_with_the_claims_the_manifests_pass_the_kubernetes_schemas(tmp_path: Path, headless: bool) -> None:
    """Strict schema validation of every core object, with the outbox on a claim (kubernetes-validate knows no CRD)."""
    docs = render(*ON, "--set", f"grpcHeadlessServices={str(headless).lower()}")
    docs = [d for d in docs if "monitoring.coreos.com" not in d["apiVersion"]]
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "--no-warn", "-k", "1.31.0", str(manifests)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_on_the_dashboard_does_not_call_the_outbox_lost_with_its_pod() -> None:
    """The on-call whom LLMRouterOutboxNotDraining sends to the outbox panel must not read that the charges there go
    with the pod when they are on its claim: the panel's title says when they are lost."""
    docs = render(*ON)
    (dashboard,) = [c for c in by_kind(docs, "ConfigMap").values() if c["metadata"]["labels"].get("grafana_dashboard")]
    (body,) = dashboard["data"].values()
    (title,) = [
        p["title"]
        for p in json.loads(body)["panels"]
        if any("llmrouter_router_outbox_charges" in t["expr"] for t in p.get("targets", []))
    ]
    assert "lost" not in title or "router.outbox.persistence" in title, title


@pytest.mark.parametrize(
    "single",
    [
        ("--set", "router.autoscaling.enabled=false", "--set", "router.replicas=1"),
        ("--set", "router.autoscaling.minReplicas=1"),
    ],
)
def test_on_the_notes_warn_that_one_router_pod_serves_nothing_while_it_rolls(single: tuple[str, ...]) -> None:
    """A StatefulSet rolls without surge: a single router pod is stopped (its drain, up to the grace period) before its
    successor starts, where the Deployment's surge kept one serving."""

    def notes(*args: str) -> str:
        install = [tool("helm"), "install", "llm", str(CHART), "--dry-run", *args]
        return " ".join(subprocess.run(install, check=True, capture_output=True, text=True).stdout.split())

    warning = "WARNING: router.outbox.persistence with a single router pod"
    assert warning in notes(*ON, *single)
    assert warning not in notes(*ON)  # two at least (the HPA's minReplicas)
    assert warning not in notes(*single)  # a Deployment surges
