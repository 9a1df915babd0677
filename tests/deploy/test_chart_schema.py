"""The values schema refuses misconfiguration by name: a misspelt key anywhere in the chart's own settings (else
ignored, its default served in silence), autoscaling on requests in flight without a target, a Redis image by
digest (the templates pull by tag), a topology spread constraint with its own labelSelector (the chart sets it).
And every probe the chart renders says how long it waits. Needs helm (deploy/install-tools.sh)."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import CHART, SERVICES, by_kind, render, tool

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())

# Handed to Kubernetes as they are, or maps of names (env variables, labels, annotations, a whole registry): any key
# is someone's to choose, so the schema takes any there.
PASS_THROUGH = frozenset(
    {
        "resources",
        "affinity",
        "tolerations",
        "podAnnotations",
        "podSecurityContext",
        "securityContext",
        "nodeSelector",
        "behavior",
        "env",
        "labels",
        "annotations",
        "matchLabels",
        "models",
    }
)

ValuesPath = tuple[str | int, ...]


def own_sections(node: Any, path: ValuesPath = ()) -> Iterator[ValuesPath]:
    """Where values.yaml holds a mapping of the chart's own settings (list items included), outside PASS_THROUGH."""
    if isinstance(node, dict):
        if node:
            yield path
        for key, child in node.items():
            if key not in PASS_THROUGH:
                yield from own_sections(child, (*path, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from own_sections(child, (*path, i))


SECTIONS = list(own_sections(VALUES))


def misspelt(key: str) -> str:
    """The key with its last two differing neighbours swapped: enabled -> enablde, port -> potr."""
    i = max(i for i in range(len(key) - 1) if key[i] != key[i + 1])
    return key[:i] + key[i + 1] + key[i] + key[i + 2 :]


def at(values: Any, path: ValuesPath) -> Any:
    for step in path:
        values = values[step]
    return values


def pointer(path: ValuesPath) -> str:
    """The JSON pointer helm names a place with: '' for the top, '/edge/autoscaling', '/topologySpread/0'."""
    return "".join(f"/{step}" for step in path)


def test_the_sections_cover_the_chart() -> None:
    """The walk finds what it must (else the test below would pass on nothing) and stops at what is handed on."""
    assert {
        (),
        ("image",),
        ("autoscaling", "inflight"),
        ("edge", "autoscaling"),
        ("router", "ledgerTrim"),
        ("redis", "image"),
        ("redis", "money", "persistence"),
        ("redis", "exporter", "image"),
        ("tls", "certManager"),
        ("networkPolicy", "egress"),
        ("monitoring", "serviceMonitor"),
        ("monitoring", "prometheusRule"),
        ("monitoring", "dashboard"),
        ("ingress", "hosts", 0, "paths", 0),
        ("topologySpread", 1),
    } <= set(SECTIONS)
    assert not [path for path in SECTIONS if PASS_THROUGH & {str(step) for step in path}]


@pytest.mark.parametrize("path", SECTIONS, ids=lambda path: pointer(path) or "(top)")
def test_a_misspelt_key_is_refused_by_name(path: ValuesPath, tmp_path: Path) -> None:
    """Without additionalProperties: false a misspelt key (edge.autoscaling.enabeld) was taken and ignored, and the
    default it meant to change served in silence; helm now refuses the values, naming the key and where it is."""
    values = copy.deepcopy(VALUES)
    section = at(values, path)
    key = next(iter(section))
    wrong = misspelt(key)
    section[wrong] = section.pop(key)
    given = tmp_path / "values.yaml"
    given.write_text(yaml.safe_dump(values))
    complaint = f"at '{pointer(path)}': additional properties '{wrong}' not allowed"
    with pytest.raises(subprocess.CalledProcessError) as template:
        render("-f", str(given))
    assert complaint in template.value.stderr
    lint = subprocess.run(
        [tool("helm"), "lint", "--strict", str(CHART), "-f", str(given)], capture_output=True, text=True
    )
    assert lint.returncode != 0
    assert complaint in lint.stdout + lint.stderr


INFLIGHT = ("--set", "autoscaling.inflight.enabled=true")


@pytest.mark.parametrize("svc", SERVICES)
def test_scaling_on_requests_in_flight_needs_each_enabled_hpas_target(svc: str) -> None:
    """Left out, the HPA's Pods metric rendered an empty averageValue, which the API server refuses only at apply;
    the schema refuses it at render, naming the service. Not needed with the HPA off, nor with inflight off."""
    drop = ("--set", f"{svc}.autoscaling.targetInflightPerPod=null")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render(*INFLIGHT, *drop)
    assert f"at '/{svc}/autoscaling': missing property 'targetInflightPerPod'" in refused.value.stderr
    hpa_off = render(*INFLIGHT, *drop, "--set", f"{svc}.autoscaling.enabled=false")
    assert not [n for n in by_kind(hpa_off, "HorizontalPodAutoscaler") if n.endswith(f"-{svc}")]
    (hpa,) = [h for n, h in by_kind(render(*drop), "HorizontalPodAutoscaler").items() if n.endswith(f"-{svc}")]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        # The templates pull repository:tag: a digest was taken and ignored.
        ("redis.image.digest=sha256:" + "ab" * 32, "at '/redis/image': additional properties 'digest' not allowed"),
        ("redis.image.tag=null", "at '/redis/image': missing property 'tag'"),
        ("redis.image.tag=", "at '/redis/image/tag'"),
        ("redis.probeTimeoutSeconds=0", "at '/redis/probeTimeoutSeconds'"),
        ("redis.probeTimeoutSeconds=null", "at '/redis': missing property 'probeTimeoutSeconds'"),
    ],
)
def test_the_redis_image_is_pulled_by_tag_and_its_probes_wait(setting: str, complaint: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("--set", setting)
    assert complaint in refused.value.stderr


def spread(docs: list[dict]) -> dict[str, list[dict]]:
    return {
        n: d["spec"]["template"]["spec"]["topologySpreadConstraints"]
        for n, d in by_kind(docs, "Deployment").items()
        if not n.endswith("-redis-cache")
    }


def test_topology_spread_refuses_a_label_selector_the_chart_sets_itself(tmp_path: Path) -> None:
    """The template adds each service's own labelSelector after the entry: one given too made a duplicate key, and
    which of the two a YAML reader keeps is its own choice. The other fields of the API are taken and passed on."""
    entry = {"topologyKey": "kubernetes.io/hostname", "maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}
    given = tmp_path / "values.yaml"
    given.write_text(yaml.safe_dump({"topologySpread": [{**entry, "labelSelector": {"matchLabels": {"a": "b"}}}]}))
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("-f", str(given))
    assert "at '/topologySpread/0': additional properties 'labelSelector' not allowed" in refused.value.stderr
    more = {"minDomains": 2, "nodeAffinityPolicy": "Honor", "nodeTaintsPolicy": "Ignore", "matchLabelKeys": ["a"]}
    given.write_text(yaml.safe_dump({"topologySpread": [{**entry, **more}]}))
    for workload, (constraint,) in spread(render("-f", str(given))).items():
        assert constraint == {**entry, **more, "labelSelector": constraint["labelSelector"]}, workload
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == workload.rsplit("-", 1)[1]
    # minDomains means something only to DoNotSchedule; Kubernetes refuses it with ScheduleAnyway.
    given.write_text(yaml.safe_dump({"topologySpread": [{**entry, **more, "whenUnsatisfiable": "ScheduleAnyway"}]}))
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render("-f", str(given))
    assert "at '/topologySpread/0/whenUnsatisfiable'" in refused.value.stderr


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
POSTGRES_LEDGER = ("--set", "router.ledgerDsnSecret.name=llm-ledger", "--set", "router.ledgerDsnSecret.key=dsn")


@pytest.mark.parametrize(
    ("case", "probed"),
    [
        ((), {*SERVICES, "redis", "exporter"}),
        (("-f", str(CHART / "ci" / "production-values.yaml")), set(SERVICES)),  # external Redis
        ((*POSTGRES_LEDGER, "--set", "router.ledgerSink.enabled=true"), {*SERVICES, "redis", "ledger-sink"}),
    ],
    ids=["default", "production", "ledger-sink"],
)
def test_every_probe_says_how_long_it_waits(case: tuple[str, ...], probed: set[str]) -> None:
    """The kubelet's default, 1 s, fails a late answer: no probe is left to it."""
    docs = render(*case)
    workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    probes = {
        (workload, c["name"], p): c[p]
        for workload, obj in workloads.items()
        for c in obj["spec"]["template"]["spec"]["containers"]
        for p in PROBES
        if p in c
    }
    assert {c for _, c, _ in probes} >= probed
    assert [where for where, probe in probes.items() if "timeoutSeconds" not in probe] == []


def test_the_redis_probes_wait_redis_probe_timeout_seconds() -> None:
    def redis_timeouts(docs: list[dict]) -> set[int]:
        workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
        return {
            c[p]["timeoutSeconds"]
            for name, obj in workloads.items()
            if "-redis-" in name
            for c in obj["spec"]["template"]["spec"]["containers"]
            if c["name"] == "redis"
            for p in ("readinessProbe", "livenessProbe")
        }

    assert redis_timeouts(render()) == {VALUES["redis"]["probeTimeoutSeconds"]} == {5}
    assert redis_timeouts(render("--set", "redis.probeTimeoutSeconds=9")) == {9}


def test_only_the_services_image_is_said_to_take_a_digest() -> None:
    """checkov's skip of its digest check says how to pin by digest where a digest can be set: values' image."""
    docs = render()
    workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    skips = {
        name: [v for v in (obj["metadata"].get("annotations") or {}).values() if v.startswith("CKV_K8S_43=")]
        for name, obj in workloads.items()
    }
    hint = "set image.digest to pin by digest"
    assert {name for name, (skip,) in skips.items() if hint in skip} == {f"llm-llm-cost-router-{s}" for s in SERVICES}
    assert len([name for name in skips if "-redis-" in name]) == 3
