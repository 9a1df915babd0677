"""Fast checks of the chart's files: one source of truth for the model registry, valid dashboards."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from llmrouter.registry import load_registry

from .support import CHART, ROOT

TIER = r'\btier\s*(?:=~|!~|!=|=)\s*"([^"]*)"'  # a tier matcher's value


def test_chart_registry_is_config_models_yaml() -> None:
    chart_copy = CHART / "files" / "models.yaml"
    source = ROOT / "config" / "models.yaml"
    assert chart_copy.read_bytes() == source.read_bytes(), (
        "helm/llm-cost-router/files/models.yaml differs from config/models.yaml: "
        "cp config/models.yaml helm/llm-cost-router/files/models.yaml"
    )
    assert load_registry(chart_copy).models  # and it is a registry the services accept


def test_dashboard_is_grafana_json_with_the_promised_panels() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] == "llm-cost-router"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    scope = '{namespace="$namespace",release="$release"}'
    # savings vs always-strongest, and each concern the dashboard is for
    baseline, cost = "llmrouter_router_baseline_cost_usd_total", "llmrouter_router_cost_usd_total"
    # the cost counted as the recording rules count it: a newborn series whole, else its increase
    assert f"{baseline}{scope}[$__rate_interval])) - sum ((last_over_time({cost}{scope}" in exprs
    assert f"or increase({cost}{scope}[$__rate_interval])) / ($__rate_interval_ms / 1000)) * 3600" in exprs
    for metric in (
        "llmrouter_router_requests_total",
        "llmrouter_router_escalations_total",
        "llmrouter_router_fallbacks_total",
        "llmrouter_router_cache_requests_total",
        "llmrouter_router_budget_rejections_total",
        "llmrouter_router_routed_total",
        "llmrouter_grpc_request_duration_seconds_bucket",
        "llmrouter_edge_http_request_duration_seconds_bucket",
        "llmrouter_provider_requests_total",
        "llmrouter_provider_circuit_state",
        "llmrouter_classifier_batch_size_bucket",
        "llmrouter_classifier_inference_seconds_bucket",
        "llmrouter_inflight_requests",
        "llmrouter_registry_valid",
    ):
        assert metric in exprs, f"no dashboard panel uses {metric}"
    # every query reads one release only: its series carry the chosen namespace and release
    for p in panels:
        for t in p["targets"]:
            for selector in re.findall(r"llmrouter_[a-z0-9_]+(\{[^}]*\})?", t["expr"]):
                assert selector.startswith(scope[:-1]), (p["title"], t["expr"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "release"} <= variables
    # the thresholds the burn and latency alerts compare with, as the chart records them for the release
    assert f"max(llmrouter:budget_usd_per_hour{scope})" in exprs
    assert f"max(llmrouter:edge_p99_slo_seconds{scope})" in exprs
    # the requests routed without the classifier (its fallback rule: the strongest, the cheapest, or by length)
    assert f'llmrouter_router_requests_total{scope[:-1]},reason="classifier_unavailable"}}' in exprs


def test_the_strong_share_is_of_the_tier_the_strong_tier_variable_names() -> None:
    """A registry names its own tiers: a panel hard-coding tier="premium" showed nothing under another registry. The
    tier is a variable over the tiers routed to, by default the shipped registry's strongest (the chart sets the
    deployed one's: test_chart.py)."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "strong_tier"]
    scope = 'namespace="$namespace",release="$release"'
    assert variable["query"] == f"label_values(llmrouter_router_routed_total{{{scope}}}, tier)"
    assert not variable["multi"] and not variable["includeAll"]  # one tier's share: a sum of several is no share
    strongest = yaml.safe_load((CHART / "files" / "models.yaml").read_text())["tiers"][-1]
    assert variable["current"]["value"] == variable["current"]["text"] == strongest
    (share,) = [p for p in dashboard["panels"] if "$strong_tier" in p["title"]]
    (target,) = share["targets"]
    assert 'tier="$strong_tier"' in target["expr"] and "by (tenant)" in target["expr"]
    tiers = {m for p in dashboard["panels"] for t in p.get("targets", []) for m in re.findall(TIER, t["expr"])}
    assert tiers == {"$strong_tier"}, "a query names a tier of its own"


def test_a_money_panel_per_hour_says_so_in_its_title() -> None:
    """A stat reads as a bare number: one titled "Cost" showing $4.20 read as the range's total, not the USD an hour
    it is. A USD panel whose query is per hour (a rate times 3600) says USD/h in its title."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    per_hour = [
        p
        for p in dashboard["panels"]
        if p.get("fieldConfig", {}).get("defaults", {}).get("unit") == "currencyUSD"
        and any("* 3600" in t["expr"] for t in p["targets"])
    ]
    assert len(per_hour) >= 5  # the cost and savings stats, and the cost series
    for panel in per_hour:
        assert "USD/h" in panel["title"], panel["title"]


def test_the_provider_error_ratio_alerted_on_is_on_the_dashboard() -> None:
    """LLMRouterProviderHighErrorRatio fires on a share (error, timeout and circuit_open over the calls not refused):
    a panel of errors per second alone, refusals among them, leaves the on-call to work out at 3 a.m. whether it is
    past 10%. A panel shows the share the alert reads, by provider."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    (alert,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "LLMRouterProviderHighErrorRatio"]
    failed, called = 'outcome=~"error|timeout|circuit_open"', 'outcome!="refused"'
    assert failed in alert["expr"] and called in alert["expr"]
    ratios = [
        t["expr"]
        for p in dashboard["panels"]
        if p.get("fieldConfig", {}).get("defaults", {}).get("unit") == "percentunit"
        for t in p.get("targets", [])
        if "llmrouter_provider_requests_total" in t["expr"]
    ]
    assert any(failed in e and called in e and e.count("by (provider)") == 2 for e in ratios), ratios


@pytest.mark.parametrize(
    ("alert", "counted"),
    [
        ("LLMRouterBudgetRejectionsSpike", "llmrouter_router_budget_rejections_total"),
        ("LLMRouterFallbacksSpike", "llmrouter_router_fallbacks_total"),
    ],
)
def test_the_share_of_requests_an_alert_fires_on_is_on_the_dashboard(alert: str, counted: str) -> None:
    """These alerts fire on a share of the requests served as they come (a batch collected, or the reconciler's
    charges, counted all at once, left out): a panel of that count per second alone leaves the on-call to work out
    whether it is past the threshold. A percentage panel reads the count over those requests, as the alert does."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    served = 'llmrouter_router_requests_total{namespace="$namespace",release="$release",reason!~"batch|reconciled"}'
    assert counted in rule["expr"] and 'llmrouter_router_requests_total{namespace="$NAMESPACE"' in rule["expr"]
    assert 'reason!~"batch|reconciled"' in rule["expr"]
    shares = [
        t["expr"]
        for p in dashboard["panels"]
        if p.get("fieldConfig", {}).get("defaults", {}).get("unit") == "percentunit"
        for t in p.get("targets", [])
    ]
    assert any(counted in e and served in e and " / " in e for e in shares), alert


def test_dashboard_is_generated_by_deploy_dashboard_py() -> None:
    """The JSON is built by deploy/dashboard.py with grafana-foundation-sdk; hand edits would drift."""
    check = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "dashboard.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_ci_values_files_are_yaml_mappings() -> None:
    for path in (CHART / "ci").glob("*-values.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
