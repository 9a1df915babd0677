"""Shared helpers for the deployment tests: repository paths, docs/conventions.md parsed, and the chart
rendered with the real helm (found in .tools/bin, installed by deploy/install-tools.sh, or on PATH).

A missing tool skips a test on a developer's machine and fails it in CI (CI=true): tests/ci.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml

from tests.ci import missing

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llm-cost-router"
CONVENTIONS = ROOT / "docs" / "conventions.md"
SERVICES = ("classifier", "providers", "router", "edge")
GRPC_SERVICES = ("classifier", "providers", "router")


@cache
def documented_metrics() -> dict[str, set[str]]:
    """Metric name -> its labels, from the Metrics section of docs/conventions.md."""
    text = CONVENTIONS.read_text().split("## Metrics", 1)[1]
    metrics: dict[str, set[str]] = {}
    for name, labels in re.findall(r"`(llmrouter_[a-z0-9_]+)(?:\{([a-z_,]*)\})?`", text):
        metrics[name] = set(filter(None, labels.split(",")))
    return metrics


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


def render(*args: str, namespace: str = "llm", monitoring_crds: bool = True) -> list[dict]:
    """`helm template` of the chart as release "llm" with extra arguments, by default for a cluster with the
    Prometheus Operator's CRDs; the manifests, parsed."""
    apis = [arg for api in MONITORING_APIS for arg in ("--api-versions", api)] if monitoring_crds else []
    out = subprocess.run(
        [tool("helm"), "template", "llm", str(CHART), "--namespace", namespace, *apis, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
