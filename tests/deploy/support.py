"""Shared helpers for the deployment tests: repository paths, docs/conventions.md parsed, and the chart
rendered with the real helm (found on PATH or in .tools/bin, installed by deploy/install-tools.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

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


def helm_binary() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    return str(local) if local.is_file() else shutil.which("helm")


def render(*args: str) -> list[dict]:
    """`helm template` of the chart with extra arguments; the manifests, parsed."""
    helm = helm_binary()
    if helm is None:
        pytest.skip("helm is not installed: run deploy/install-tools.sh (deploy/lint.sh does)")
    out = subprocess.run(
        [helm, "template", "llm", str(CHART), "--namespace", "llm", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
