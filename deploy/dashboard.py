"""The Grafana dashboard as code, built with Grafana's grafana-foundation-sdk: one release's traffic, cost,
routing, Redis, latency, providers and classifier. Every query is scoped to the `namespace` and `release` chosen in
the dashboard's variables (the ServiceMonitor labels each target with both), and names only metrics the services
export (tests/ops/test_live_metrics.py scrapes a running stack to prove it), the in-chart Redis' exporter sidecars
do (redis_*, labelled redis_role by the ServiceMonitor; tests/deploy/test_alerts.py lists them), Prometheus' own `up`
and kube-state-metrics' for the ledger-trim CronJob. Every alert's runbook names the panels that show it
(tests/deploy/test_runbooks.py).

    python deploy/dashboard.py            # writes helm/llm-cost-router/files/dashboard.json
    python deploy/dashboard.py --check    # exit 1 when the committed file differs from what this builds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

CHART_FILES = Path(__file__).resolve().parent.parent / "helm" / "llm-cost-router" / "files"
OUT = CHART_FILES / "dashboard.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SCOPE = 'namespace="$namespace",release="$release"'
RATE = "[$__rate_interval]"
HIT, SERVER_ERROR, NOT_OK = 'result="hit"', 'status=~"5.."', 'outcome!="ok"'
# The strong share is a tier's share, and a registry names its own tiers (weakest to strongest): the tier is the
# variable strong_tier, by default the shipped registry's strongest (the chart sets the one it deploys).
STRONG_TIER_DEFAULT = yaml.safe_load((CHART_FILES / "models.yaml").read_text())["tiers"][-1]
STRONG_TIER = 'tier="$strong_tier"'
NOT_OK_RPC = 'code!="OK"'
UNCLASSIFIED = 'reason="classifier_unavailable"'  # an auto request routed by ROUTER_CLASSIFIER_FALLBACK's rule
# A provider's failures over its calls, as LLMRouterProviderHighErrorRatio reads them: a call its open breaker refused
# unsent is a failure; one it refused as sent is the caller's input, neither a failure nor a call.
PROVIDER_FAILED, NOT_REFUSED = 'outcome=~"error|timeout|circuit_open"', 'outcome!="refused"'
DURABLE = 'redis_role=~"money|batches"'  # the Redis roles that persist (AOF); the cache writes nothing
# The services' scrape jobs (and the standalone ledger sink's, router.ledgerSink), not Redis'.
SERVICE_JOBS = 'job=~"llmrouter-(edge|router|classifier|providers|ledger-sink)"'
# kube-state-metrics names the release's CronJob, <fullname>-ledger-trim, and carries no `release` of ours: the
# fullname is no function of the release's name (fullnameOverride, nameOverride, the cut to 52 characters), so the
# CronJob is a variable of its own, offering the one the chart's PrometheusRule records for the release chosen
# (llmrouter:ledger_trim_cronjob_info{namespace, release, cronjob}): it follows the release variable. The chart
# opens it on its release's, the one its alerts name.
LEDGER_TRIM_CRONJOB = 'namespace="$namespace",cronjob="$ledger_trim_cronjob"'
LEDGER_TRIM_CRONJOBS = f"label_values(llmrouter:ledger_trim_cronjob_info{{{SCOPE}}}, cronjob)"
LEDGER_TRIM_CRONJOBS_SAID = (
    "The release's ledger-trim CronJob, listed from llmrouter:ledger_trim_cronjob_info, which the chart's"
    " PrometheusRule records where it renders the CronJob: none without that rule (deploy/README.md, Monitoring)."
)


def s(metric: str, matchers: str = "") -> str:
    """A selector of `metric` in the chosen release, with more matchers."""
    return f"{metric}{{{SCOPE}{',' + matchers if matchers else ''}}}"


def rate(metric: str, matchers: str = "", window: str = RATE) -> str:
    return f"rate({s(metric, matchers)}{window})"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def series(title: str, unit: str, *queries: tuple[str, str], span: int = 8) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(span).height(8)
    for ref, (expr, legend) in zip("ABCDEF", queries, strict=False):
        panel = panel.with_target(query(expr, legend, ref))
    return panel


def big(title: str, unit: str, expr: str, legend: str) -> stat.Panel:
    return (
        stat.Panel().title(title).unit(unit).datasource(DATASOURCE).span(4).height(4).with_target(query(expr, legend))
    )


def quantiles(metric: str, by: str, label: str) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by ({by}le) ({rate(metric + '_bucket')}))", f"{name} {label}".strip())
        for q, name in ((0.5, "p50"), (0.99, "p99"))
    ]


def variable(name: str, query_text: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(name)
        .query(query_text)
        .datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


COST = "llmrouter_router_cost_usd_total"
BASELINE = "llmrouter_router_baseline_cost_usd_total"
GIVEN_BACK = "llmrouter_router_cost_given_back_usd_total"
OVERLOADED = "llmrouter_grpc_overloaded_calls_total"
BUDGET_REJECTIONS = "llmrouter_router_budget_rejections_total"
# The requests served as they come, as the budget-rejection and fallback alerts count them: requests_total also counts
# a provider Batch API line (reason batch) when its batch is collected, all at once, and a charge the reconciler
# settled (reconciled).
AS_THEY_COME = 'reason!~"batch|reconciled"'
PER_SECOND = "($__rate_interval_ms / 1000)"  # the seconds of $__rate_interval, to divide what it counted by


def counted(metric: str, by: str = "", window: str = RATE) -> str:
    """What a money counter labelled by model counted within `window`, as the chart's recording rules count it: a
    router's series is born at its first charge (or give-back), already holding it, which increase() and rate() never
    see, so one born within the window (none of its samples in the day before it) counts whole: its last value in the
    window, as its router may be gone since."""
    fresh = f"(last_over_time({s(metric)}{window}) unless present_over_time({s(metric)}[1d] offset {window[1:-1]}))"
    return f"sum{f' by ({by})' if by else ''} ({fresh} or increase({s(metric)}{window}))"


def build() -> dict:
    # What reconciled charges gave back once their router's own charge landed (counters only go up) is taken off the
    # cost and the baseline alike (a reconciled charge claims no savings), per second of $__rate_interval. The baseline
    # counter has no label: its one series is born at 0 with its router, so rate() sees all it counts.
    cost_rate = f"{counted(COST)} / {PER_SECOND}"
    given_back_rate = f"({counted(GIVEN_BACK)} / {PER_SECOND} or vector(0))"
    cost = f"({cost_rate} - {given_back_rate}) * 3600"
    baseline = f"(sum({rate(BASELINE)}) - {given_back_rate}) * 3600"
    savings = f"(sum({rate(BASELINE)}) - {cost_rate}) * 3600"
    given_back_in_range = f"({counted(GIVEN_BACK, window='[$__range]')} or vector(0))"
    savings_ratio = (
        f"1 - ({counted(COST, window='[$__range]')} - {given_back_in_range})"
        f" / (sum(increase({s(BASELINE)}[$__range])) - {given_back_in_range})"
    )
    cache_ratio = (
        f"sum({rate('llmrouter_router_cache_requests_total', HIT)})"
        f" / sum({rate('llmrouter_router_cache_requests_total')})"
    )
    board = (
        dashboard.Dashboard("LLM cost router")
        .uid("llm-cost-router")  # the chart gives each release its own
        .tags(["llm", "llm-cost-router"])
        .timezone("utc")
        .editable()
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(VariableOption(selected=True, text="default", value="default"))
        )
        .with_variable(variable("namespace", "label_values(llmrouter_inflight_requests, namespace)"))
        .with_variable(
            variable("release", 'label_values(llmrouter_inflight_requests{namespace="$namespace"}, release)')
        )
        .with_variable(
            variable("ledger_trim_cronjob", LEDGER_TRIM_CRONJOBS)
            .label("ledger-trim CronJob")
            .description(LEDGER_TRIM_CRONJOBS_SAID)
        )
        .with_variable(
            variable("strong_tier", f"label_values({s('llmrouter_router_routed_total')}, tier)")
            .label("strong tier")
            .current(VariableOption(selected=True, text=STRONG_TIER_DEFAULT, value=STRONG_TIER_DEFAULT))
        )
        .with_row(dashboard.Row("Traffic and cost"))
        .with_panel(big("Requests/s", "reqps", f"sum({rate('llmrouter_edge_http_requests_total')})", "edge"))
        .with_panel(big("Cost (USD/h)", "currencyUSD", cost, "USD/h"))
        .with_panel(big("Savings (USD/h)", "currencyUSD", savings, "USD/h"))
        .with_panel(
            big(
                "Savings ratio",
                "percentunit",
                savings_ratio,
                "saved",
            )
        )
        .with_panel(
            big(
                "Edge 5xx ratio",
                "percentunit",
                f"sum({rate('llmrouter_edge_http_requests_total', SERVER_ERROR)})"
                f" / sum({rate('llmrouter_edge_http_requests_total')})",
                "5xx",
            )
        )
        .with_panel(big("Cache hit ratio", "percentunit", cache_ratio, "hits"))
        .with_panel(
            series(
                "Requests/s by model",
                "reqps",
                (f"sum by (model) ({rate('llmrouter_router_requests_total')})", "{{model}}"),
            )
        )
        .with_panel(
            series(
                "Cost by model (USD/h)",
                "currencyUSD",
                (f"{counted(COST, 'model')} / {PER_SECOND} * 3600", "{{model}}"),
                (f"{counted(GIVEN_BACK, 'model')} / {PER_SECOND} * 3600", "{{model}} given back"),
            )
        )
        .with_panel(
            series(
                "Cost vs always-strongest (USD/h)",
                "currencyUSD",
                (cost, "actual"),
                (baseline, "always strongest"),
                (savings, "savings"),
                # recorded by the chart's PrometheusRule (hourlyBudgetUsd): the burn alerts fire on the last hour's
                # cost over it, or the last 5 minutes' over 3 times it
                (
                    f"max({s('llmrouter:budget_usd_per_hour')})",
                    "hourly budget (burn alerts: 1 h over it, 5 min over 3x)",
                ),
            )
        )
        .with_row(dashboard.Row("Routing policy"))
        .with_panel(
            series(
                "Model mix",
                "percentunit",
                (
                    f"sum by (model) ({rate('llmrouter_router_requests_total')})"
                    f" / ignoring(model) group_left() sum({rate('llmrouter_router_requests_total')})",
                    "{{model}}",
                ),
            )
        )
        .with_panel(
            series(
                "Escalations/s",
                "reqps",
                (
                    f"sum by (from_model, to_model) ({rate('llmrouter_router_escalations_total')})",
                    "{{from_model}} → {{to_model}}",
                ),
            )
        )
        .with_panel(
            series(
                "Verifier verdicts/s",
                "reqps",
                (f"sum by (outcome) ({rate('llmrouter_router_verifier_total')})", "{{outcome}}"),
            )
        )
        .with_panel(
            series(
                "Fallbacks/s",
                "reqps",
                (
                    f"sum by (from_model, to_model) ({rate('llmrouter_router_fallbacks_total')})",
                    "{{from_model}} → {{to_model}}",
                ),
            )
        )
        .with_panel(
            series(
                "Cache hit ratio",
                "percentunit",
                (cache_ratio, "answers"),
                (
                    f"sum({rate('llmrouter_router_score_cache_requests_total', HIT)})"
                    f" / sum({rate('llmrouter_router_score_cache_requests_total')})",
                    "classifier scores",
                ),
            )
        )
        .with_panel(
            series(
                "Budget rejections and rate limiting",
                "reqps",
                (f"sum({rate(BUDGET_REJECTIONS)})", "budget rejections/s"),
                (f"sum({rate('llmrouter_router_rate_limited_total')})", "rate limited/s"),
            )
        )
        .with_panel(
            series(
                "Budget rejections by tenant and budget scope (top 10)",
                "reqps",
                # One tenant refused (its budget spent) or most (a default limit too low); `other`: the tenants past
                # ROUTER_METRICS_TENANTS.
                (f"topk(10, sum by (tenant, scope) ({rate(BUDGET_REJECTIONS)}))", "{{tenant}} ({{scope}} budget)"),
            )
        )
        .with_panel(
            series(
                "Shares of requests refused for budget (alerts past 5%) and falling back to another model (past 10%)",
                "percentunit",
                (
                    f"sum({rate(BUDGET_REJECTIONS)}) / (sum({rate(BUDGET_REJECTIONS)})"
                    f" + (sum({rate('llmrouter_router_requests_total', AS_THEY_COME)})"
                    f" or 0 * sum({rate(BUDGET_REJECTIONS)})))",
                    "refused for budget",
                ),
                (
                    f"sum({rate('llmrouter_router_fallbacks_total')})"
                    f" / sum({rate('llmrouter_router_requests_total', AS_THEY_COME)})",
                    "fell back",
                ),
            )
        )
        .with_panel(
            series(
                "Highest budget use per scope (spent / limit: alerts at 0.8 and 1)",
                "percentunit",
                (f"max by (scope) ({s('llmrouter_router_budget_use_ratio')})", "{{scope}}"),
            )
        )
        .with_panel(
            series(
                "Budgets over 80% and spent",
                "short",
                (
                    f"max by (scope, threshold) ({s('llmrouter_router_budgets_over_threshold')})",
                    "{{scope}} over {{threshold}}",
                ),
            )
        )
        .with_panel(
            series(
                "Router outcomes",
                "reqps",
                (f"sum by (outcome, reason) ({rate('llmrouter_router_requests_total')})", "{{outcome}} {{reason}}"),
            )
        )
        .with_panel(
            series(
                "Strong share by tenant: routed to the $strong_tier tier",
                "percentunit",
                (
                    f"sum by (tenant) ({rate('llmrouter_router_routed_total', STRONG_TIER)})"
                    f" / sum by (tenant) ({rate('llmrouter_router_routed_total')})",
                    "{{tenant}}",
                ),
            )
        )
        .with_panel(
            series(
                "Predicted quality kept by tenant (chosen over best candidate, mean)",
                "percentunit",
                (
                    f"sum by (tenant) ({rate('llmrouter_router_quality_kept_ratio_sum')})"
                    f" / sum by (tenant) ({rate('llmrouter_router_quality_kept_ratio_count')})",
                    "{{tenant}}",
                ),
            )
        )
        .with_row(dashboard.Row("Load and configuration"))
        .with_panel(
            series(
                "Edge answers/s by status, and requests refused before the app (malformed, slow, head too large)",
                "reqps",
                (f"sum by (status) ({rate('llmrouter_edge_http_requests_total')})", "{{status}}"),
                (f"sum by (status) ({rate('llmrouter_edge_refused_requests_total')})", "refused {{status}}"),
                span=12,
            )
        )
        .with_panel(
            series(
                "Targets up per service (none for 3 minutes: LLMRouter<Service>Down; "
                "the ledger sink for 10 minutes: LLMRouterLedgerSinkDown)",
                "short",
                (f"sum by (job) ({s('up', SERVICE_JOBS)})", "{{job}}"),
                span=12,
            )
        )
        .with_panel(
            series(
                "Edge access-log lines dropped/s (EDGE_ACCESS_LOG's destination too slow)",
                "short",
                (f"sum by (pod) ({rate('llmrouter_edge_access_log_dropped_total')})", "{{pod}}"),
                span=12,
            )
        )
        .with_panel(
            series(
                "Edge Idempotency-Key store passed over/s (failed, or slower than EDGE_IDEMPOTENCY_LOOKUP_TIMEOUT_S)",
                "short",
                (f"sum by (step) ({rate('llmrouter_edge_idempotency_store_passed_total')})", "{{step}}"),
                span=12,
            )
        )
        .with_panel(
            series(
                "Requests in flight per pod (the HPA signal)",
                "short",
                (f"sum by (service, pod) ({s('llmrouter_inflight_requests')})", "{{service}} {{pod}}"),
                span=12,
            )
        )
        .with_panel(
            series(
                "Calls in flight against the limit per pod (1: refusing new calls; <service>.maxInflightCalls)",
                "percentunit",
                (
                    f"max by (service, pod) ({s('llmrouter_inflight_requests')}"
                    f" / {s('llmrouter_grpc_max_inflight_calls')})",
                    "{{service}} {{pod}}",
                ),
                span=12,
            )
        )
        .with_panel(
            series(
                "Share of calls refused at the limit of calls in flight (OVERLOADED) per service: alerts past 5%",
                "percentunit",
                (
                    f"sum by (service) ({rate(OVERLOADED)})"
                    f" / sum by (service) ({rate('llmrouter_grpc_requests_total')})",
                    "{{service}}",
                ),
                span=12,
            )
        )
        .with_panel(
            series(
                "Calls refused at the limit/s per service and method, and the edge's 503 overloaded answers by refuser",
                "reqps",
                (f"sum by (service, method) ({rate(OVERLOADED)})", "{{service}} {{method}}"),
                (
                    f"sum by (service) ({rate('llmrouter_edge_overloaded_answers_total')})",
                    "edge 503, {{service}} refused",
                ),
                span=12,
            )
        )
        .with_panel(
            series(
                "Registry and key files valid (0: an invalid new file was refused)",
                "short",
                (f"min by (service) ({s('llmrouter_registry_valid')})", "{{service}}"),
                (
                    f"sum by (service, outcome) (increase({s('llmrouter_registry_reloads_total')}[1h]))",
                    "{{service}} {{outcome}}/h",
                ),
                (f"min({s('llmrouter_edge_api_keys_valid')})", "edge API keys"),
                (f"min by (provider) ({s('llmrouter_provider_key_valid')})", "{{provider}} key"),
                (
                    f"sum by (outcome) (increase({s('llmrouter_edge_api_keys_reloads_total')}[1h]))",
                    "edge API keys {{outcome}}/h",
                ),
                span=12,
            )
        )
        .with_row(dashboard.Row("Money store and ledger"))
        .with_panel(
            series(
                "Stores reachable per router (0: money refuses every request, cache bypassed)",
                "short",
                (f"min by (store, pod) ({s('llmrouter_router_store_up')})", "{{store}} {{pod}}"),
            )
        )
        .with_panel(
            series(
                "Admission by running hold totals per router (0: by a scan of every hold, while an older router lives)",
                "short",
                (f"min by (pod) ({s('llmrouter_router_hold_totals_trusted')})", "{{pod}}"),
            )
        )
        .with_panel(
            series(
                "Router clock behind the money Redis' (s; money is dated by Redis', ledger times by the pod's)",
                "s",
                (f"max by (pod) ({s('llmrouter_router_money_clock_offset_seconds')})", "{{pod}}"),
            )
        )
        .with_panel(
            series(
                "Charges waiting in the outbox (lost with the pod unless router.outbox.persistence)",
                "short",
                (f"sum by (pod) ({s('llmrouter_router_outbox_charges')})", "{{pod}}"),
                (f"sum by (pod) ({s('llmrouter_router_outbox_dead_letters')})", "{{pod}} dead letters"),
                (f"sum by (pod) ({s('llmrouter_router_outbox_replay_remaining_charges')})", "{{pod}} left to replay"),
            )
        )
        .with_panel(
            series(
                "Upkeep round under way per router, and 4 heartbeat TTLs (s; past them for 5 minutes: "
                "LLMRouterUpkeepRoundHung)",
                "s",
                (
                    f"max by (pod) (time() - ({s('llmrouter_router_upkeep_round_started_timestamp_seconds')} > 0))",
                    "{{pod}}",
                ),
                (f"4 * max({s('llmrouter_router_heartbeat_ttl_seconds')})", "4 heartbeat TTLs"),
            )
        )
        .with_panel(
            series(
                "Ledger entries rejected and charges reconciled (per hour)",
                "short",
                (f"sum(increase({s('llmrouter_router_ledger_rejected_total')}[1h]))", "kept in ledger_rejected"),
                (f"sum(increase({s('llmrouter_router_reconciled_charges_total')}[1h]))", "settled at their hold"),
                (f"sum(increase({s('llmrouter_router_reconcile_failures_total')}[1h]))", "failed to settle"),
                (
                    f"sum(increase({s('llmrouter_router_reconcile_rounds_unleased_total')}[1h]))",
                    "rounds without the lease (its master away)",
                ),
                (
                    f"sum by (why) (increase({s('llmrouter_router_uncounted_entries_dropped_total')}[1h]))",
                    "uncounted entries dropped: {{why}}",
                ),
            )
        )
        .with_panel(
            series(
                "Charges capped at their hold per hour, by model, and the USD the operator absorbed",
                "short",
                (f"sum by (model) (increase({s('llmrouter_router_charges_capped_total')}[1h]))", "{{model}} charges"),
                (f"sum by (model) (increase({s('llmrouter_router_capped_usd_total')}[1h]))", "{{model}} USD absorbed"),
            )
        )
        .with_panel(
            series(
                "SQL ledger behind: the oldest entry not copied yet (Stats and exports miss it), and since each "
                "sink last copied",
                "s",
                (f"max({s('llmrouter_router_ledger_sink_backlog_age_seconds')})", "oldest entry not copied"),
                (
                    f"time() - max by (pod) ({s('llmrouter_router_ledger_sink_last_success_timestamp_seconds')} > 0)",
                    "{{pod}} last copied",
                ),
            )
        )
        .with_panel(
            series(
                "SQL ledger sinks: rows written/s, and failed rounds/s by stage (read, write, ack; each retried)",
                "short",
                (f"sum({rate('llmrouter_router_ledger_sink_rows_written_total')})", "rows written"),
                (f"sum by (stage) ({rate('llmrouter_router_ledger_sink_failures_total')})", "{{stage}} failures"),
            )
        )
        .with_panel(
            series(
                "SQL ledger entries not copied yet: read and not committed (pending), not read yet (unread)",
                "short",
                (f"max by (state) ({s('llmrouter_router_ledger_sink_backlog_entries')})", "{{state}}"),
            )
        )
        .with_panel(
            series(
                "Requests ended by a router bug per hour, by how they were charged (alerts on any)",
                "short",
                (f"sum by (charge) (increase({s('llmrouter_router_faults_total')}[1h]))", "{{charge}}"),
            )
        )
        .with_panel(
            series(
                "Pending charges no live router will charge, left by the reconciler's last sweep (holds still counted)",
                "short",
                (f"max({s('llmrouter_router_reconcile_backlog_charges')})", "router gone, or due and not settled"),
            )
        )
        .with_panel(
            series(
                "Cluster masters out of reach per store (money: their tenants refused, the others served)",
                "short",
                (f"max by (store) ({s('llmrouter_router_store_masters_unreachable')})", "{{store}}"),
            )
        )
        .with_panel(
            series(
                "Store memory against maxmemory (money refuses every request at 100%; a warm cache sits near it)",
                "percentunit",
                (f"max by (store) ({s('llmrouter_router_store_memory_ratio')})", "{{store}}"),
            )
        )
        .with_panel(
            series(
                "Since the ledger-trim CronJob last succeeded (daily: over a day is a run missed)",
                "s",
                (
                    f"time() - max by (cronjob) (kube_cronjob_status_last_successful_time{{{LEDGER_TRIM_CRONJOB}}})",
                    "{{cronjob}}",
                ),
            )
        )
        .with_row(dashboard.Row("Batches"))
        .with_panel(
            series(
                "Batch lines/s by outcome",
                "reqps",
                (f"sum by (outcome) ({rate('llmrouter_edge_batch_lines_total')})", "{{outcome}}"),
            )
        )
        .with_panel(
            series(
                "Batches running per edge",
                "short",
                (f"sum by (pod) ({s('llmrouter_edge_batches_running')})", "{{pod}}"),
            )
        )
        .with_panel(
            series(
                "Batch lines cost (USD/h)",
                "currencyUSD",
                (f"sum({rate('llmrouter_edge_batch_cost_usd_total')}) * 3600", "batch lines"),
            )
        )
        .with_panel(
            series(
                "Batch lines whose cost is pending per hour (charged, at most their hold; not in the cost above)",
                "short",
                (f"sum(increase({s('llmrouter_edge_batch_cost_pending_lines_total')}[1h]))", "pending lines"),
            )
        )
        .with_panel(
            series(
                "File quota counts mended per hour (left for files gone: an edge killed mid-removal, or a bug)",
                "short",
                (f"sum by (pod) (increase({s('llmrouter_edge_file_counts_mended_total')}[1h]))", "{{pod}}"),
            )
        )
        .with_panel(
            series(
                "Batch output files stored past their tenant's file quota per hour (never refused; its uploads are)",
                "short",
                (f"sum(increase({s('llmrouter_edge_batch_outputs_past_quota_total')}[1h]))", "outputs"),
            )
        )
        .with_row(dashboard.Row("Redis (the in-chart ones, from their exporter sidecars: redis.exporter)"))
        .with_panel(
            series(
                "Redis up (0: not answering its exporter; no line: its pod or exporter is gone)",
                "short",
                (f"min by (redis_role) ({s('redis_up')})", "{{redis_role}}"),
            )
        )
        .with_panel(
            series(
                "Redis memory against maxmemory (money and batches refuse writes at 100%, the cache evicts)",
                "percentunit",
                (
                    f"max by (redis_role) ({s('redis_memory_used_bytes')})"
                    f" / max by (redis_role) ({s('redis_memory_max_bytes')})",
                    "{{redis_role}}",
                ),
            )
        )
        .with_panel(
            series(
                "Redis evictions/s (on money or batches: state lost) and refused connections/s",
                "short",
                (f"sum by (redis_role) ({rate('redis_evicted_keys_total')})", "{{redis_role}} evicted"),
                (f"sum by (redis_role) ({rate('redis_rejected_connections_total')})", "{{redis_role}} refused"),
            )
        )
        .with_panel(
            series(
                "Redis persistence (1 ok, 0 failed: the last AOF write, AOF rewrite, RDB save)",
                "short",
                (f"min by (redis_role) ({s('redis_aof_last_write_status', DURABLE)})", "{{redis_role}} AOF write"),
                (
                    f"min by (redis_role) ({s('redis_aof_last_bgrewrite_status', DURABLE)})",
                    "{{redis_role}} AOF rewrite",
                ),
                (f"min by (redis_role) ({s('redis_rdb_last_bgsave_status', DURABLE)})", "{{redis_role}} RDB save"),
            )
        )
        .with_panel(
            series(
                "Redis clients and replicas connected",
                "short",
                (f"sum by (redis_role) ({s('redis_connected_clients')})", "{{redis_role}} clients"),
                (f"sum by (redis_role) ({s('redis_connected_slaves')})", "{{redis_role}} replicas"),
            )
        )
        .with_panel(
            series(
                "Redis commands/s",
                "ops",
                (f"sum by (redis_role) ({rate('redis_commands_processed_total')})", "{{redis_role}}"),
            )
        )
        .with_row(dashboard.Row("Latency"))
        .with_panel(
            series(
                "Edge latency p50 / p99",
                "s",
                *quantiles("llmrouter_edge_http_request_duration_seconds", "route, ", "{{route}}"),
                # recorded by the chart's PrometheusRule (edgeP99SloSeconds): LLMRouterEdgeLatencyOverSLO's line
                (f"max({s('llmrouter:edge_p99_slo_seconds')})", "p99 SLO (a route's p99 over it 10 min: alert)"),
                span=12,
            )
        )
        .with_panel(
            series(
                "gRPC latency p50 / p99 per service",
                "s",
                *quantiles("llmrouter_grpc_request_duration_seconds", "service, ", "{{service}}"),
                span=12,
            )
        )
        .with_panel(
            series(
                "gRPC calls/s not OK per service, code and reason (KEY_MOVING, STORE_UNAVAILABLE...: conventions.md)",
                "reqps",
                (
                    f"sum by (service, code, reason) ({rate('llmrouter_grpc_requests_total', NOT_OK_RPC)})",
                    "{{service}} {{code}} {{reason}}",
                ),
                span=12,
            )
        )
        .with_row(dashboard.Row("Providers"))
        .with_panel(
            series(
                "Provider calls/s not ok, by outcome (refused: the callers' input; circuit_open: never sent)",
                "reqps",
                (
                    f"sum by (provider, outcome) ({rate('llmrouter_provider_requests_total', NOT_OK)})",
                    "{{provider}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Provider error ratio: error, timeout and circuit_open over calls not refused (alerts past 10%)",
                "percentunit",
                (
                    f"sum by (provider) ({rate('llmrouter_provider_requests_total', PROVIDER_FAILED)})"
                    f" / sum by (provider) ({rate('llmrouter_provider_requests_total', NOT_REFUSED)})",
                    "{{provider}}",
                ),
            )
        )
        .with_panel(
            statetimeline.Panel()
            .title("Circuit state (0 closed, 1 half-open, 2 open)")
            .unit("short")
            .datasource(DATASOURCE)
            .span(8)
            .height(8)
            .with_target(
                query(f"max by (provider, model) ({s('llmrouter_provider_circuit_state')})", "{{provider}}/{{model}}")
            )
        )
        .with_panel(
            series(
                "Provider latency p99 / time to first token p99",
                "s",
                (
                    "histogram_quantile(0.99, sum by (provider, le)"
                    f" ({rate('llmrouter_provider_request_duration_seconds_bucket')}))",
                    "total {{provider}}",
                ),
                (
                    "histogram_quantile(0.99, sum by (provider, le)"
                    f" ({rate('llmrouter_provider_time_to_first_token_seconds_bucket')}))",
                    "ttft {{provider}}",
                ),
            )
        )
        .with_panel(
            series(
                "Tokens/s by model",
                "short",
                (f"sum by (model, direction) ({rate('llmrouter_provider_tokens_total')})", "{{model}} {{direction}}"),
                (
                    f"sum by (model, direction) ({rate('llmrouter_router_tokens_total')})",
                    "charged {{model}} {{direction}}",
                ),
                span=12,
            )
        )
        .with_panel(
            series(
                "Provider retries/s, and answers/s whose usage the answer belies or that passes max_tokens",
                "short",
                (f"sum by (provider, model) ({rate('llmrouter_provider_retries_total')})", "{{provider}}/{{model}}"),
                (
                    f"sum by (provider, model, direction) ({rate('llmrouter_provider_usage_implausible_total')})",
                    "implausible {{provider}}/{{model}} {{direction}}",
                ),
                (
                    f"sum by (model) ({rate('llmrouter_router_batch_output_past_max_tokens_total')})",
                    "batch output past max_tokens {{model}}",
                ),
                span=12,
            )
        )
        .with_row(dashboard.Row("Classifier"))
        .with_panel(
            series(
                "Batch size p50 / p99",
                "short",
                *quantiles("llmrouter_classifier_batch_size", "", ""),
                (
                    f"sum({rate('llmrouter_classifier_batch_size_sum')})"
                    f" / sum({rate('llmrouter_classifier_batch_size_count')})",
                    "mean",
                ),
            )
        )
        .with_panel(
            series("Inference latency p50 / p99", "s", *quantiles("llmrouter_classifier_inference_seconds", "", ""))
        )
        .with_panel(
            series("Queue depth", "short", (f"sum by (pod) ({s('llmrouter_classifier_queue_depth')})", "{{pod}}"))
        )
        .with_panel(
            series(
                "Requests routed without the classifier/s, by model (down, refusing or too slow: "
                "ROUTER_CLASSIFIER_FALLBACK's rule)",
                "reqps",
                (f"sum by (model) ({rate('llmrouter_router_requests_total', UNCLASSIFIED)})", "{{model}}"),
                span=12,
            )
        )
    )
    built = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(built["panels"], 1):  # stable ids, for links and the tests
        panel["id"] = number
    return built


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed file differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python deploy/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
