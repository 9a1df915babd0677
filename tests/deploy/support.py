"""Shared helpers for the deployment tests: repository paths, docs/conventions.md parsed, and the chart
rendered with the real helm (found in .tools/bin, installed by deploy/install-tools.sh, or on PATH).

A missing tool skips a test on a developer's machine and fails it in CI (CI=true): tests/ci.py."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from tests.ci import missing

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llm-cost-router"
CONVENTIONS = ROOT / "docs" / "conventions.md"
SERVICES = ("classifier", "providers", "router", "edge")
GRPC_SERVICES = ("classifier", "providers", "router")
# The labels the Prometheus Operator gives every target of a ServiceMonitor (its generated relabelings, before the
# ServiceMonitor's own): a metric's label of the same name is renamed exported_<name> unless the target's is dropped.
OPERATOR_TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}


@cache
def documented_metrics() -> dict[str, set[str]]:
    """Metric name -> its labels, from the Metrics section of docs/conventions.md."""
    text = CONVENTIONS.read_text().split("## Metrics", 1)[1]
    metrics: dict[str, set[str]] = {}
    for name, labels in re.findall(r"`(llmrouter_[a-z0-9_]+)(?:\{([a-z_,]*)\})?`", text):
        metrics[name] = set(filter(None, labels.split(",")))
    return metrics


def metric_modules() -> Iterator[str]:
    """Every module of the services and the shared package that imports prometheus_client."""
    for folder in ("llmrouter", "services"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "prometheus_client" in path.read_text():
                yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


@cache
def code_metrics() -> dict[str, tuple[str, set[str]]]:
    """Family name as PromQL names it (a counter's with _total) -> (type, label names), as the code defines it."""
    for module in metric_modules():
        importlib.import_module(module)
    found: dict[str, tuple[str, set[str]]] = {}
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase) and collector._name.startswith("llmrouter_"):
            suffix = "_total" if collector._type == "counter" else ""
            found[collector._name + suffix] = (str(collector._type), set(collector._labelnames))
    return found


@cache
def documented_ports() -> dict[str, tuple[str, int, int]]:
    """Service -> (env prefix, port, metrics port), from the Ports table of docs/conventions.md."""
    rows = re.findall(r"^\| (\w+)(?: \(REST\))? \| (\w+)_ \| (\d+) \| (\d+) \|$", CONVENTIONS.read_text(), re.M)
    return {svc: (prefix, int(port), int(metrics)) for svc, prefix, port, metrics in rows}


def tool(name: str) -> str:
    """Path of a deploy tool; when it is missing: a failure under CI, a skip elsewhere."""
    local = ROOT / ".tools" / "bin" / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        missing(f"{name} is not installed: run deploy/install-tools.sh (deploy/lint.sh and .ci/run do)")
    return found


# The Prometheus Operator's kinds, as a cluster that has its CRDs announces them (helm --api-versions).
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")


def render(
    *args: str,
    namespace: str = "llm",
    release: str = "llm",
    monitoring_crds: bool = True,
    cert_manager: bool = False,
    kubeconfig: Path | None = None,
    chart: Path = CHART,
) -> list[dict]:
    """`helm template` of the chart (or a copy of it, `chart`) as a release ("llm" by default) with extra arguments, by
    default for a cluster with the Prometheus Operator's CRDs and without cert-manager's; the manifests, parsed. With a
    kubeconfig, rendered against that cluster (`--dry-run=server`: its `lookup` answers)."""
    apis = [*(MONITORING_APIS if monitoring_crds else ()), *(("cert-manager.io/v1",) if cert_manager else ())]
    cluster = ["--dry-run=server", "--disable-openapi-validation"] if kubeconfig else []
    out = subprocess.run(
        [tool("helm"), "template", release, str(chart), "--namespace", namespace, *cluster, *args]
        + [arg for api in apis for arg in ("--api-versions", api)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)} if kubeconfig else None,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
