"""The metrics the alert rules, recording rules and dashboard read are the ones the code defines, with those labels
and used as their type allows: a query over a metric renamed or a label dropped returns nothing, and an alert on
it never fires. Fast: the code's metrics are read from prometheus_client's registry after importing every module
that defines some (no service runs; tests/ops/test_live_metrics.py scrapes a running stack for the names)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from .support import OPERATOR_TARGET_LABELS, ROOT, code_metrics, documented_metrics
from .test_alerts import RULES, series_names

# The PromQL names of a metric family of each type (code_metrics() names a counter with its _total already).
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Labels every scraped series carries besides its own: the Prometheus Operator's target labels but `service`
# (dropped by the chart's ServiceMonitor, so the metrics' own is kept), and `release` (the chart's relabeling).
TARGET_LABELS = (OPERATOR_TARGET_LABELS - {"service"}) | {"release"}
RANGE_FUNCTIONS = ("rate", "irate", "increase")
KUBE_STATE_METRICS = {"kube_cronjob_status_last_schedule_time", "kube_cronjob_status_last_successful_time"}


def family_of(series: str) -> tuple[str, str]:
    """(family, suffix) of a series name; KeyError when no family the code defines has it."""
    for family, (kind, _) in code_metrics().items():
        for suffix in SUFFIXES[kind]:
            if series == family + suffix:
                return family, suffix
    raise KeyError(series)


def walk_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def queries() -> Iterator[tuple[str, str, str]]:
    """(where, expression, legend) of every rule and every dashboard query, variables included."""
    for group in RULES["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert", rule.get("record")), rule["expr"], ""
    yield from dashboard_queries()


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    dashboard = json.loads((ROOT / "helm" / "llm-cost-router" / "files" / "dashboard.json").read_text())
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expr = re.sub(r"^label_values\((.*), \w+\)$", r"\1", variable["query"])
            yield f"variable {variable['name']}", expr, ""


QUERIES = list(queries())


def read_metrics(expr: str) -> set[str]:
    return {n for n in series_names(expr) if n.startswith("llmrouter_")}


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_left/group_right clauses."""
    clauses = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    return {label.strip() for clause in clauses for label in clause.split(",") if label.strip()}


def labels_of(series: str) -> set[str]:
    family, suffix = family_of(series)
    return code_metrics()[family][1] | ({"le"} if suffix == "_bucket" else set())


def test_the_code_defines_what_conventions_documents() -> None:
    """docs/conventions.md, which test_alerts.py checks the rules against, lists the code's metrics and labels."""
    code = {name: labels for name, (_, labels) in code_metrics().items()}
    assert code == documented_metrics()


@pytest.mark.parametrize(("where", "expr", "legend"), QUERIES, ids=[q[0] for q in QUERIES])
def test_query_reads_metrics_the_code_defines_as_typed(where: str, expr: str, legend: str) -> None:
    for series in read_metrics(expr):
        assert family_of(series), f"{where}: no metric {series} in the code"
    ranged = re.findall(rf"\b(?:{'|'.join(RANGE_FUNCTIONS)})\s*\(\s*(llmrouter_[a-z0-9_]+)", expr)
    for series in ranged:
        family, _ = family_of(series)
        assert code_metrics()[family][0] != "gauge", f"{where}: rate or increase of the gauge {series}"
    quantiles = re.findall(r"histogram_quantile\([^,]+,(.*)", expr)
    for inner in quantiles:
        names = read_metrics(inner)
        assert names and all(n.endswith("_bucket") for n in names), f"{where}: histogram_quantile over {names}"


@pytest.mark.parametrize(("where", "expr", "legend"), QUERIES, ids=[q[0] for q in QUERIES])
def test_query_names_labels_its_metrics_have(where: str, expr: str, legend: str) -> None:
    """Matchers name labels of their metric; grouping clauses and the legend, labels of a metric the query reads
    (or the target's)."""
    for series, matchers in re.findall(r"\b(llmrouter_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in labels_of(series) | TARGET_LABELS, f"{where}: {series} has no label {label!r}"
    if any(name in expr for name in KUBE_STATE_METRICS) or re.search(r"\bredis_[a-z]", expr):
        return  # kube-state-metrics' and redis_exporter's labels: test_alerts.py
    available = set().union(*(labels_of(s) for s in read_metrics(expr))) | TARGET_LABELS
    for label in grouping_labels(expr) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)):
        assert label in available, f"{where}: no metric of {sorted(read_metrics(expr))} has the label {label!r}"


def test_the_checks_catch_what_they_are_for() -> None:
    with pytest.raises(KeyError):
        family_of("llmrouter_router_requests")  # a counter without _total
    with pytest.raises(AssertionError, match="gauge"):
        test_query_reads_metrics_the_code_defines_as_typed("x", "rate(llmrouter_router_outbox_charges[5m])", "")
    with pytest.raises(AssertionError, match="histogram_quantile"):
        test_query_reads_metrics_the_code_defines_as_typed(
            "x", "histogram_quantile(0.9, sum by (le) (rate(llmrouter_classifier_batch_size_sum[5m])))", ""
        )
    with pytest.raises(AssertionError, match="'tenant'"):
        test_query_names_labels_its_metrics_have("x", "sum by (tenant) (rate(llmrouter_router_cost_usd_total[5m]))", "")
    with pytest.raises(AssertionError, match="'store'"):
        test_query_names_labels_its_metrics_have("x", "rate(llmrouter_router_requests_total[5m])", "{{store}}")


def test_every_metric_the_code_defines_is_on_the_dashboard_or_in_a_rule() -> None:
    """A metric added for operators that no panel shows and no alert reads is seen by nobody at night."""
    read = {family_of(series)[0] for _, expr, _ in QUERIES for series in read_metrics(expr)}
    assert not set(code_metrics()) - read


# What the on-call reads for the two promises: money (refusals, charges, the reconciler and what it has left, the
# outbox, the SQL ledger's copy and how far behind it is) and routing (the strong share per tenant, the classifier's
# latency). An alert tells that something is wrong; the dashboard, how much and since when: each is on a panel, not
# only in a rule.
PROMISE_METRICS = {
    "llmrouter_router_budget_rejections_total",
    "llmrouter_router_budgets_over_threshold",
    "llmrouter_router_cost_usd_total",
    "llmrouter_router_reconciled_charges_total",
    "llmrouter_router_reconcile_failures_total",
    "llmrouter_router_reconcile_backlog_charges",
    "llmrouter_router_outbox_charges",
    "llmrouter_router_outbox_dead_letters",
    "llmrouter_router_ledger_rejected_total",
    "llmrouter_router_ledger_sink_last_success_timestamp_seconds",
    "llmrouter_router_ledger_sink_backlog_age_seconds",
    "llmrouter_router_store_up",
    "llmrouter_router_routed_total",
    "llmrouter_classifier_inference_seconds",
}


def test_the_promises_metrics_are_on_the_dashboard() -> None:
    panels = [expr for _, expr, _ in dashboard_queries()]
    shown = {family_of(series)[0] for expr in panels for series in read_metrics(expr)}
    assert not PROMISE_METRICS - set(code_metrics())
    assert not PROMISE_METRICS - shown
    # The strong share is per tenant: a panel groups the routed requests by tenant.
    assert any("llmrouter_router_routed_total" in expr and "by (tenant)" in expr for expr in panels)


def test_the_grpc_latency_histogram_reaches_the_longest_call() -> None:
    """histogram_quantile answers at most a histogram's highest finite bucket: the dashboard's gRPC p99 per service
    must be able to show a router call (an edge's Route, to its last message) as long as the router lets one run."""
    from llmrouter.interceptors import RPC_SECONDS
    from services.router.settings import RouterSettings

    top = max(b for b in RPC_SECONDS._upper_bounds if b != float("inf"))
    assert top >= RouterSettings.model_fields["request_timeout_s"].default


def test_the_edge_latency_histogram_reaches_the_longest_completion() -> None:
    """The dashboard's edge p99 and LLMRouterEdgeLatencyOverSLO read llmrouter_edge_http_request_duration_seconds: a
    completion the router lets run its whole limit must stay under the highest finite bucket, which histogram_quantile
    never passes (the SLO the chart takes is under it: test_chart.py)."""
    from services.edge.app import HTTP_SECONDS
    from services.router.settings import RouterSettings

    top = max(b for b in HTTP_SECONDS._upper_bounds if b != float("inf"))
    assert top >= RouterSettings.model_fields["request_timeout_s"].default
