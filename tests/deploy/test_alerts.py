"""The alert rules against docs/conventions.md and their promtool tests (fast: plain YAML and regexes; the
promtool run itself is in deploy/lint.sh and test_tools.py)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .support import CHART, ROOT, documented_metrics

RULES = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
RULE_TESTS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules_test.yaml").read_text())
RUNBOOKS = (ROOT / "deploy" / "runbooks.md").read_text()
README_LINES = (ROOT / "deploy" / "README.md").read_text().splitlines()
ALERT_TABLE = [line for line in README_LINES if line.startswith("| LLMRouter")]
ALERTS = [r for g in RULES["groups"] for r in g["rules"] if "alert" in r]
RECORDED = {r["record"] for g in RULES["groups"] for r in g["rules"] if "record" in r}
# Recorded by the chart's PrometheusRule template from values.yaml.
CHART_RECORDED = set(re.findall(r"record: (\S+)", (CHART / "templates" / "prometheusrule.yaml").read_text()))
# Prometheus' own series that the rules may use.
BUILTIN = {"up", "ALERTS"}
# kube-state-metrics' series (the ledger-trim CronJob's) that the rules may use, with their labels: they are the
# CronJob's, scoped by its namespace and name, never by `release` (theirs is the scraping Prometheus', if any).
KUBE_STATE_METRICS = {
    "kube_cronjob_status_last_schedule_time": {"namespace", "cronjob"},
    "kube_cronjob_status_last_successful_time": {"namespace", "cronjob"},
}
KUBE_SCOPE = 'namespace="$NAMESPACE",cronjob="$LEDGER_TRIM_CRONJOB"'
# redis_exporter's series (the in-chart Redis' sidecars, redis.exporter) that the rules and the dashboard may use, with
# their own labels (none of these has any: INFO fields, exporter/exporter.go's mapping), as the pinned version names
# them. Their targets carry redis_role too (the ServiceMonitor's relabeling) and are scoped like the services'.
REDIS_EXPORTER: dict[str, set[str]] = {
    name: set()
    for name in (
        "redis_up",
        "redis_evicted_keys_total",
        "redis_rejected_connections_total",
        "redis_aof_last_write_status",
        "redis_aof_last_bgrewrite_status",
        "redis_rdb_last_bgsave_status",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
        "redis_connected_clients",
        "redis_connected_slaves",
        "redis_commands_processed_total",
    )
}
REDIS_TARGET_LABELS = {"redis_role"}
# Labels every scraped series carries besides its own: the ServiceMonitor's target labels.
TARGET_LABELS = {"namespace", "release", "job", "instance"}
SCOPE = 'namespace="$NAMESPACE",release="$RELEASE"'
PROMQL_WORDS = {
    "sum", "rate", "increase", "histogram_quantile", "by", "and", "or", "unless", "on", "ignoring", "group_left",
    "group_right", "absent", "max", "min", "avg", "count", "vector", "scalar", "offset", "bool", "le",
    "round", "without", "topk", "max_over_time", "min_over_time", "present_over_time", "last_over_time", "time",
    "deriv",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads (label matchers, strings and keywords removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\boffset\s+\d+[smhdwy]", "offset", expr)  # its duration (1h) is no name
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?", n)}


def conventions_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in documented_metrics():
            return name.removesuffix(suffix)
    return name


def check_names(expr: str, where: str) -> None:
    for name in series_names(expr):
        if ":" in name:
            assert name in RECORDED | CHART_RECORDED, f"{where}: recording rule {name} is recorded nowhere"
        elif name not in BUILTIN | KUBE_STATE_METRICS.keys() | REDIS_EXPORTER.keys():
            assert conventions_name(name) in documented_metrics(), f"{where}: {name} is not in docs/conventions.md"


def check_labels(expr: str, where: str) -> None:
    """Label matchers name labels the metric has, per docs/conventions.md."""
    for name, matchers in re.findall(r"(llmrouter_[a-z0-9_]+)\{([^}]*)\}", expr):
        metric = conventions_name(name)
        allowed = documented_metrics()[metric] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in allowed, f"{where}: {metric} has no label {label!r} (conventions: {sorted(allowed)})"
    for name, matchers in re.findall(r"(kube_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in KUBE_STATE_METRICS[name], f"{where}: {name} has no label {label!r}"
    for name, matchers in re.findall(r"\b(redis_[a-z0-9_]+)\{([^}]*)\}", expr):
        allowed = REDIS_EXPORTER[name] | TARGET_LABELS | REDIS_TARGET_LABELS
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in allowed, f"{where}: {name} has no label {label!r}"


def test_conventions_parse() -> None:
    metrics = documented_metrics()
    assert metrics["llmrouter_provider_requests_total"] == {"provider", "model", "outcome"}
    assert "llmrouter_router_baseline_cost_usd_total" in metrics


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_reads_documented_metrics_only(rule: dict) -> None:
    check_names(rule["expr"], rule["alert"])
    check_labels(rule["expr"], rule["alert"])


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_is_actionable(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    if "service" in rule["labels"]:
        assert rule["labels"]["service"] in {"edge", "router", "classifier", "providers", "redis"}
    else:  # the service is the series' own (a gRPC service's `service`): every aggregation keeps it
        aggregations = re.findall(r"\b(?:sum|max|min|count|avg) by \(([^)]*)\)", rule["expr"])
        assert aggregations, f"{rule['alert']}: no service stated, none kept"
        assert all("service" in labels.split(", ") for labels in aggregations), rule["alert"]
    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
    assert rule["annotations"]["runbook_url"] == f"$RUNBOOK_BASE#{rule['alert'].lower()}"
    assert f"## {rule['alert']}\n" in RUNBOOKS, f"deploy/runbooks.md has no section for {rule['alert']}"
    assert re.fullmatch(r"\d+m", rule["for"]), "every alert waits before firing"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_is_in_the_deploy_readme_table(rule: dict) -> None:
    assert [row for row in ALERT_TABLE if re.search(rf"\b{rule['alert']}\b", row.split("|")[1])], rule["alert"]


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_has_promtool_cases_that_fire_and_do_not(rule: dict) -> None:
    name = rule["alert"]
    quiet = [
        case
        for test in RULE_TESTS["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name and case["exp_alerts"] == []
    ]
    firing = [
        sample
        for test in RULE_TESTS["tests"]
        for case in test.get("promql_expr_test", [])
        for sample in case["exp_samples"]
        if f'alertname="{name}"' in sample["labels"] and 'alertstate="firing"' in sample["labels"]
    ]
    assert quiet, f"no promtool case where {name} stays quiet"
    assert firing, f"no promtool case where {name} fires"


def test_recording_rules_read_documented_metrics() -> None:
    for group in RULES["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                check_names(rule["expr"], rule["record"])


def test_dashboard_reads_documented_metrics_only() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval_ms", "300000").replace("$__rate_interval", "5m")
            expr = expr.replace("$__range", "1h")
            check_names(expr, panel["title"])
            check_labels(expr, panel["title"])


RULE_IDS = [r.get("alert", r.get("record")) for g in RULES["groups"] for r in g["rules"]]


@pytest.mark.parametrize("rule", [r for g in RULES["groups"] for r in g["rules"]], ids=RULE_IDS)
def test_every_selector_is_scoped_to_one_release(rule: dict) -> None:
    """Two releases (or staging and production) never mix: every series a rule reads is matched on both."""
    selectors = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", rule["expr"])
    blanked = re.sub(r"\{[^}]*\}", "{}", rule["expr"])
    bare = re.findall(r"\b(llmrouter[_:][a-z0-9_:]+|up)\b(?!\{)(?![a-z0-9_:])", blanked)
    assert selectors
    assert not [n for n in bare if n not in {s for s, _ in selectors}], f"unscoped series in {rule['expr']}"
    for name, matchers in selectors:
        scope = KUBE_SCOPE if name in KUBE_STATE_METRICS else SCOPE
        assert matchers.startswith(scope) or scope in matchers, f"{name}{{{matchers}}} is not scoped"


@pytest.mark.parametrize("rule", [r for r in ALERTS if "kube_" in r["expr"]], ids=lambda r: r["alert"])
def test_kube_state_metrics_alerts_state_the_release(rule: dict) -> None:
    """kube-state-metrics' series carry no `release` of this release: the alert states it, as every alert
    carries `namespace` and `release`."""
    assert rule["labels"]["release"] == "$RELEASE"
    assert re.match(r"max by \(namespace, cronjob\)", rule["expr"])


def test_ledger_trim_alerts_in_their_own_group() -> None:
    """The chart renders the group llmrouter.ledger only with the ledger-trim CronJob: no other group names it."""
    groups = {g["name"]: g for g in RULES["groups"]}
    assert [r["alert"] for r in groups["llmrouter.ledger"]["rules"]] == ["LLMRouterLedgerTrimFailing"]
    others = [g for name, g in groups.items() if name != "llmrouter.ledger"]
    assert "$LEDGER_TRIM_CRONJOB" not in json.dumps(others)


def test_redis_alerts_in_the_groups_rendered_with_the_exporters() -> None:
    """The chart renders llmrouter.redis only with an exporter sidecar, and llmrouter.redis.money only where the
    money Redis has one: no other rule reads redis_exporter's series, and the money Redis' absence alerts nowhere
    else (a release with an external money Redis would be told it is down)."""
    groups = {g["name"]: g for g in RULES["groups"]}
    assert [r["alert"] for r in groups["llmrouter.redis.money"]["rules"]] == ["LLMRouterMoneyRedisDown"]
    for name, group in groups.items():
        reads_redis = any(re.search(r"\bredis_[a-z]", r["expr"]) for r in group["rules"])
        assert reads_redis == name.startswith("llmrouter.redis"), name
    absent = [r["alert"] for g in groups.values() for r in g["rules"] if "absent(redis_" in r.get("expr", "")]
    assert absent == ["LLMRouterMoneyRedisDown"]


def test_money_redis_down_states_its_scope() -> None:
    (down,) = [r for r in ALERTS if r["alert"] == "LLMRouterMoneyRedisDown"]
    assert down["expr"] == f'absent(redis_up{{{SCOPE},job="llmrouter-redis",redis_role="money"}} == 1)'
    assert down["labels"] == {
        "severity": "critical",
        "service": "redis",
        "redis_role": "money",
        "job": "llmrouter-redis",
        "namespace": "$NAMESPACE",
        "release": "$RELEASE",
    }


@pytest.mark.parametrize("svc", ["edge", "router", "classifier", "providers"])
def test_a_down_alert_per_service(svc: str) -> None:
    (down,) = [r for r in ALERTS if f'up{{job="llmrouter-{svc}",{SCOPE}}} == 1' in r["expr"]]
    assert down["expr"].startswith("absent(")
    assert down["labels"] == {
        "severity": "critical",
        "service": svc,
        "job": f"llmrouter-{svc}",
        "namespace": "$NAMESPACE",
        "release": "$RELEASE",
    }


def test_name_extraction() -> None:
    expr = 'sum by (provider) (rate(llmrouter_provider_requests_total{outcome=~"error|timeout"}[5m])) > on() x:y'
    assert series_names(expr) == {"llmrouter_provider_requests_total", "x:y"}
