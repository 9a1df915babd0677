"""The StatefulSets' claim templates (the money and batch Redis' data, the router's outbox with
router.outbox.persistence) on helm upgrade: Kubernetes refuses any change to them, so the chart renders them as the
installed StatefulSet has them (lookup, against a Kubernetes API on loopback), and NOTES.txt says when values ask for
other; a first install takes the values. Needs helm (deploy/install-tools.sh; a failure without it under CI=true)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .kube_api import KubeApi
from .support import CHART, by_kind, render, tool

RELEASE = "llm-llm-cost-router"
OUTBOX = ("--set", "router.outbox.persistence.enabled=true")
RESIZED = (
    *("--set", "redis.money.persistence.size=16Gi", "--set", "redis.money.persistence.storageClass=fast-ssd"),
    *("--set", "redis.batches.persistence.size=32Gi"),
    *("--set", "router.outbox.persistence.size=5Gi", "--set", "router.outbox.persistence.storageClassName=-"),
)


def claims(docs: list[dict]) -> dict[str, dict]:
    """StatefulSet name -> the spec of its one claim template."""
    return {n: s["spec"]["volumeClaimTemplates"][0]["spec"] for n, s in by_kind(docs, "StatefulSet").items()}


def notes(kubeconfig: Path, *settings: str) -> str:
    out = subprocess.run(
        [
            tool("helm"),
            "install",
            "llm",
            str(CHART),
            "--namespace",
            "llm",
            "--dry-run=server",
            "--disable-openapi-validation",
            *settings,
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    ).stdout
    return " ".join(out.split("NOTES:", 1)[1].split())


def test_an_upgrade_keeps_the_claims_as_made_and_the_notes_say_so(tmp_path: Path) -> None:
    """A new size or class in values stopped `helm upgrade` part-way through (the API server refuses the changed
    StatefulSet), though values.yaml says the claims are kept as they were made."""
    installed = render(*OUTBOX)
    assert claims(render(*OUTBOX, *RESIZED))[f"{RELEASE}-redis-money"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "16Gi"}},
        "storageClassName": "fast-ssd",
    }
    with KubeApi(tmp_path) as api:
        assert "keeps its claims" not in notes(api.kubeconfig, *OUTBOX, *RESIZED)  # a first install: as values say
        for statefulset in by_kind(installed, "StatefulSet").values():
            api.store(statefulset)
        upgraded = render(*OUTBOX, *RESIZED, monitoring_crds=False, kubeconfig=api.kubeconfig)
        said = notes(api.kubeconfig, *OUTBOX, *RESIZED)
        unchanged = notes(api.kubeconfig, *OUTBOX)
    assert claims(upgraded) == claims(installed)
    assert f"{RELEASE}-redis-money keeps its claims as they were made (4Gi, ReadWriteOnce)" in said
    assert "not redis.money.persistence's (16Gi of class fast-ssd, ReadWriteOnce)" in said
    assert f"{RELEASE}-redis-batches keeps its claims as they were made (8Gi, ReadWriteOnce)" in said
    assert f"{RELEASE}-router keeps its claims as they were made (1Gi, ReadWriteOnce)" in said
    assert "keeps its claims" not in unchanged


@pytest.mark.parametrize("settings", [(), OUTBOX])
def test_the_claims_render_as_before_without_a_cluster(settings: tuple[str, ...]) -> None:
    for spec in claims(render(*settings)).values():
        assert spec["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in spec
    assert (
        claims(render(*OUTBOX, "--set", "router.outbox.persistence.storageClassName=-"))[f"{RELEASE}-router"][
            "storageClassName"
        ]
        == ""
    )


def test_the_notes_give_the_whole_path_to_a_bigger_disk(tmp_path: Path) -> None:
    """Told only to grow each PVC, the operator did, and the note stayed on every upgrade; deploy/README.md offered
    the StatefulSet's --cascade=orphan delete as the other way, which leaves the claims made at their old size (the new
    StatefulSet takes them as they are) with the note quiet. The note names the claims, how to grow them, and then
    the delete that lets the claim templates follow."""
    with KubeApi(tmp_path) as api:
        for statefulset in by_kind(render(*OUTBOX), "StatefulSet").values():
            api.store(statefulset)
        said = notes(api.kubeconfig, *OUTBOX, *RESIZED)
    money, router = f"{RELEASE}-redis-money", f"{RELEASE}-router"
    grown = json.dumps({"spec": {"resources": {"requests": {"storage": "16Gi"}}}}, separators=(",", ":"))
    assert f"kubectl -n llm patch pvc data-{money}-0 -p '{grown}'" in said
    assert f"kubectl -n llm delete statefulset {money} --cascade=orphan" in said
    assert f"outbox-{router}-<ordinal>" in said  # one per router pod
    readme = " ".join((CHART.parents[1] / "deploy" / "README.md").read_text().split())
    assert "grow the PVCs themselves where the class allows expansion, or delete the StatefulSet" not in readme


def test_a_size_written_otherwise_than_the_api_server_keeps_it_is_no_other_size(tmp_path: Path) -> None:
    """The API server keeps a quantity in its canonical form (1024Mi as 1Gi, 1000M as 1G): values unchanged since the
    install, written so, were taken for another size, and the note told to grow the claims and delete the StatefulSet
    on every upgrade."""
    with KubeApi(tmp_path) as api:
        for statefulset in by_kind(render(*OUTBOX), "StatefulSet").values():  # 1Gi, 4Gi, 8Gi as the server keeps them
            api.store(statefulset)
        same = ("--set", "router.outbox.persistence.size=1024Mi", "--set", "redis.money.persistence.size=4096Mi")
        said = notes(api.kubeconfig, *OUTBOX, *same, "--set", "redis.batches.persistence.size=8193Mi")
    assert "keeps its claims" in said  # 8193Mi is more than 8Gi
    assert f"{RELEASE}-redis-batches keeps its claims" in said
    assert f"{RELEASE}-router keeps" not in said and f"{RELEASE}-redis-money keeps" not in said
