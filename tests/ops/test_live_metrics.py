"""The dashboard and the alerts read metrics the services really export: the stack runs as four processes (as
`make run` starts it, each with its metrics port), one chat completion goes through it, every metrics endpoint
is scraped, and each metric named by a dashboard panel or an alert rule must be among the scraped ones."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.__main__ import running_stack
from tests.ci import require_local_model
from tests.conftest import ROOT
from tests.integration.conftest import free_ports

CHART = ROOT / "helm" / "llm-cost-router"
SERVICES = ("CLASSIFIER", "PROVIDERS", "ROUTER", "EDGE")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("_sum", "_count"),
}


def exported(text: str) -> set[str]:
    """Series names an exposition offers, each family expanded to the names PromQL sees (x_total, x_bucket...)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(llmrouter_[a-z0-9_]+)", expr))


@pytest.fixture(scope="module")
def scraped() -> Iterator[set[str]]:
    require_local_model()
    picked = free_ports(2 * len(SERVICES))
    ports = dict(zip(SERVICES, picked[: len(SERVICES)], strict=True))
    metrics_ports = dict(zip(SERVICES, picked[len(SERVICES) :], strict=True))
    with pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.startswith("ROUTER_") or k.endswith("_API_KEY")]:
            env.delenv(name)
        for service in SERVICES:
            env.setenv(f"{service}_PORT", str(ports[service]))
            env.setenv(f"{service}_METRICS_PORT", str(metrics_ports[service]))
        with running_stack() as (base_url, _):
            body = {"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
            assert httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).status_code == 200
            names: set[str] = set()
            for port in metrics_ports.values():
                names |= exported(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            yield names


def test_scrape_sees_each_service(scraped: set[str]) -> None:
    for metric in (
        "llmrouter_edge_http_requests_total",
        "llmrouter_router_requests_total",
        "llmrouter_provider_requests_total",
        "llmrouter_classifier_inference_seconds_bucket",
        "llmrouter_inflight_requests",
        "llmrouter_registry_valid",
    ):
        assert metric in scraped
    assert "llmrouter_no_such_metric_total" not in scraped


def test_every_dashboard_query_names_exported_metrics(scraped: set[str]) -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    missing = {
        (panel["title"], name)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in named_metrics(target["expr"])
        if name not in scraped
    }
    assert not missing, f"dashboard panels query metrics no service exports: {sorted(missing)}"


def test_every_alert_and_recording_rule_names_exported_metrics(scraped: set[str]) -> None:
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    missing = {
        (rule.get("alert") or rule["record"], name)
        for group in rules["groups"]
        for rule in group["rules"]
        for name in named_metrics(rule["expr"])
        if name not in scraped
    }
    assert not missing, f"rules read metrics no service exports: {sorted(missing)}"
