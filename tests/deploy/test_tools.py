"""The promtool unit tests bite: they pass on the real rules and fail when an alert is broken. Needs promtool
(deploy/install-tools.sh; a failure without it under CI=true)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from .support import CHART, ROOT, by_kind, render, tool

TESTS = ROOT / "deploy" / "prometheus" / "rules_test.yaml"
PARAMETER_TESTS = ROOT / "deploy" / "prometheus" / "parameters_test.yaml"
PARAMETERS = "llmrouter.parameters"  # the group of series the chart records per release


# The SQL ledger in PostgreSQL, with the standalone sink: the ledger-trim CronJob and the sink, and so their alerts,
# are rendered.
LEDGER_DSN = (
    "--set",
    "router.ledgerDsnSecret.name=llm-ledger",
    "--set",
    "router.ledgerDsnSecret.key=dsn",
    "--set",
    "router.ledgerSink.enabled=true",
)


def rendered_rules() -> dict:
    """The rules as the chart renders them for release "llm" in namespace "prod" with the ledger in PostgreSQL and its
    standalone sink (what rules_test.yaml and parameters_test.yaml are written for)."""
    (rule,) = by_kind(render(*LEDGER_DSN, namespace="prod"), "PrometheusRule").values()
    return dict(rule["spec"])


def scoped_rules() -> dict:
    """What rules_test.yaml tests: the rules rendered, minus the recorded thresholds, which it gives as input."""
    spec = rendered_rules()
    spec["groups"] = [g for g in spec["groups"] if g["name"] != PARAMETERS]
    return spec


def parameter_rules() -> dict:
    """The series recorded per release alone, which parameters_test.yaml tests."""
    spec = rendered_rules()
    spec["groups"] = [g for g in spec["groups"] if g["name"] == PARAMETERS]
    return spec


def write_rules(rules: dict, tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def run_tests(rules: Path, tmp_path: Path, tests: Path = TESTS, naming: str = "") -> subprocess.CompletedProcess[str]:
    """promtool's verdict on the suite, or on its cases naming `naming` alone: a broken rule must fail a case that
    names it (the mutation tests assert its name in the output), and the whole suite, run once per mutation, took
    most of lint-deploy."""
    suite = yaml.safe_load(tests.read_text())
    suite["rule_files"] = [str(rules)]
    if naming:
        suite["tests"] = [case for case in suite["tests"] if naming in yaml.safe_dump(case)]
        assert suite["tests"], f"no case of {tests.name} names {naming}"
    test_file = tmp_path / "suite_test.yaml"
    test_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    return subprocess.run([tool("promtool"), "test", "rules", str(test_file)], capture_output=True, text=True)


def test_rules_pass_their_tests(tmp_path: Path) -> None:
    result = run_tests(write_rules(scoped_rules(), tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_recorded_parameters_pass_their_tests(tmp_path: Path) -> None:
    """The thresholds and llmrouter:ledger_trim_cronjob_info, which the dashboard lists the release's CronJob by."""
    result = run_tests(write_rules(parameter_rules(), tmp_path), tmp_path, PARAMETER_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("cronjob", "llm-ledger-trim"),  # a name of the release's own, not the one the chart gives its CronJob
        ("release", "other"),  # the dashboard choosing this release would list no CronJob
    ],
)
def test_a_broken_ledger_trim_cronjob_record_fails_its_tests(tmp_path: Path, label: str, value: str) -> None:
    rules = parameter_rules()
    (group,) = rules["groups"]
    (rule,) = [r for r in group["rules"] if r["record"] == "llmrouter:ledger_trim_cronjob_info"]
    rule["labels"][label] = value
    result = run_tests(write_rules(rules, tmp_path), tmp_path, PARAMETER_TESTS, "llmrouter:ledger_trim_cronjob_info")
    assert result.returncode != 0
    assert "llmrouter:ledger_trim_cronjob_info" in result.stdout + result.stderr


# The scope of every selector in the rules as rendered, and the Redis roles that persist.
PROD, DURABLE = 'namespace="prod",release="llm"', 'redis_role=~"money|batches"'
BACKLOG_AGE = f"llmrouter_router_ledger_sink_backlog_age_seconds{{{PROD}}}"
ROUND_STARTED = f"llmrouter_router_upkeep_round_started_timestamp_seconds{{{PROD}}}"
ROUTER_UP = f'job="llmrouter-router",{PROD}}}'
REJECTED = "rate(llmrouter_router_budget_rejections_total"


@pytest.mark.parametrize(
    ("alert", "field", "before", "after"),
    [
        ("LLMRouterEdgeHigh5xxRatio", "expr", "> 0.05\n", "> 0.5\n"),  # too lax: the firing case fails
        ("LLMRouterCircuitBreakerOpen", "expr", "== 2", ">= 1"),  # half-open taken for open: a quiet case fails
        ("LLMRouterClassifierDown", "for", "3m", "0m"),  # no wait: the pending case fails
        ("LLMRouterEdgeDown", "expr", "llmrouter-edge", "llmrouter-edg"),  # a dead edge must fire
        ("LLMRouterClassifierDown", "expr", 'namespace="prod",', ""),  # unscoped: staging's classifier masks it
        ("LLMRouterEdgeLatencyOverSLO", "expr", "> 0.05", "> 0"),  # no traffic floor: a trickle fires
        ("LLMRouterServiceOverloaded", "for", "10m", "5m"),  # a burst refused, the limit doing its job, fires
        ("LLMRouterServiceOverloaded", "expr", "\nand ", "\nor "),  # no floor: a few calls refused fire
        ("LLMRouterServiceOverloaded", "expr", "> 0.05\n", "> 0.2\n"),  # too lax: 10% refused for good is missed
        ("LLMRouterCircuitBreakerOpen", "expr", "[5m]", "[1m]"),  # a slow failing probe hides a flapping outage
        # calls the open breaker refused unsent taken for successes: they dilute the probes' errors, an outage is quiet
        ("LLMRouterProviderHighErrorRatio", "expr", "error|timeout|circuit_open", "error|timeout"),
        # the callers' refusals counted as calls: a provider rate-limiting most of our valid calls is quiet
        # a provider batch's lines, counted all at once when collected, dilute the share: the firing case fails
        ("LLMRouterRoutingWithoutClassifier", "expr", ',reason!~"batch|reconciled"}', "}"),
        ("LLMRouterRoutingWithoutClassifier", "expr", "\nand ", "\nor "),  # no floor: a trickle warns
        ("LLMRouterProviderRateLimited", "expr", 'outcome!="refused"}[15m])) > 0.05\n', "}[15m])) > 0.05\n"),
        ("LLMRouterBudgetRejectionsSpike", "expr", "or 0 *", "and 0 *"),  # nothing served: 100% refused is missed
        # one tenant's refusals taken for all: refusals spread over tenants, none past 5% alone, are missed
        (
            "LLMRouterBudgetRejectionsSpike",
            "expr",
            f"sum by (namespace, release) ({REJECTED}",
            f"max by (namespace, release) ({REJECTED}",
        ),
        ("LLMRouterMoneyStoreUnreachable", "expr", ',store="money"', ""),  # the cache store taken for the money's
        ("LLMRouterMoneyStoreMemoryHigh", "expr", ',store="money"', ""),  # a warm cache taken for the money store
        ("LLMRouterMoneyStoreMemoryCritical", "for", "5m", "0m"),  # no wait: the pending case fails
        ("LLMRouterLedgerEntriesRejected", "expr", 'namespace="prod",', ""),  # staging's rejections taken for ours
        ("LLMRouterLedgerEntriesRejected", "expr", "increase(", "changes("),  # a router's restart taken for one
        ("LLMRouterLedgerEntriesRejected", "expr", "[1h]", "[10m]"),  # a single one resolved before it is seen
        ("LLMRouterLedgerTrimFailing", "for", "70m", "30m"),  # a run still in progress taken for a failure
        ("LLMRouterLedgerSinkDown", "expr", "llmrouter-ledger-sink", "llmrouter-ledger-sin"),  # a gone sink must fire
        # a crash-looping sink's series vanish between its runs: read at the instant, the `for` never completes
        ("LLMRouterLedgerSinkStalled", "expr", f"max_over_time({BACKLOG_AGE}[15m])", BACKLOG_AGE),
        ("LLMRouterLedgerSinkStalled", "expr", "[15m])) > 0.9", "[15m])) > 0.2"),  # copying slowly taken for stalled
        ("LLMRouterLedgerSinkDown", "expr", 'release="llm"', 'release=~".+"'),  # another release's sink masks ours
        ("LLMRouterLedgerTrimFailing", "expr", "or (", "and ("),  # a first run that fails is missed
        ("LLMRouterMoneyRedisDown", "expr", 'redis_role="money"', 'redis_role=~".+"'),  # the cache's up masks it
        ("LLMRouterMoneyRedisDown", "for", "3m", "1m"),  # a restart reloading its AOF taken for an outage
        ("LLMRouterRedisEvictions", "expr", f",{DURABLE}", ""),  # the cache's LRU taken for a loss
        ("LLMRouterRedisEvictions", "expr", "[1h]", "[10m]"),  # a single eviction resolved before it is seen
        ("LLMRouterRedisRejectedConnections", "expr", 'namespace="prod",', ""),  # staging's refusals taken for ours
        ("LLMRouterRedisPersistenceFailing", "expr", "or min", "and min"),  # one failure of the three is missed
        # the cache's failed save (it persists nothing) taken for a persisting store's
        ("LLMRouterRedisPersistenceFailing", "expr", f"bgsave_status{{{PROD},{DURABLE}}}", f"bgsave_status{{{PROD}}}"),
        ("LLMRouterUpkeepRoundHung", "expr", "[5m]) > 0)", "[5m]))"),  # a router with no round yet taken for hung
        ("LLMRouterUpkeepRoundHung", "for", "5m", "0m"),  # a long outbox replay that ends fires
        # each router's own TTL unread (the default's 4, a minute): a router whose TTL is the longest allowed fires
        (
            "LLMRouterUpkeepRoundHung",
            "expr",
            f"4 * last_over_time(llmrouter_router_heartbeat_ttl_seconds{{{PROD}}}[5m])",
            "60",
        ),
        # read at the instant, a failed scrape (the series stale) restarts the wait: the hung round fires late
        ("LLMRouterUpkeepRoundHung", "expr", f"last_over_time({ROUND_STARTED}[5m])", ROUND_STARTED),
        # a pod replaced mid-round, its last start kept 5 minutes by last_over_time, taken for a router still hung
        (
            "LLMRouterUpkeepRoundHung",
            "expr",
            f"and on (namespace, release, instance) up{{{ROUTER_UP}",
            'unless on () up{job="none"}',
        ),
    ],
)
def test_a_broken_alert_fails_its_tests(tmp_path: Path, alert: str, field: str, before: str, after: str) -> None:
    rules = scoped_rules()
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert before in rule[field]
    rule[field] = rule[field].replace(before, after, 1)
    result = run_tests(write_rules(rules, tmp_path), tmp_path, naming=alert)
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr


COST = f"llmrouter_router_cost_usd_total{{{PROD}}}"
GIVEN_BACK = f"llmrouter_router_cost_given_back_usd_total{{{PROD}}}"


def seen_before(counter: str) -> str:
    """The start of a record's test for a series born within its window: any of its samples in the day before it."""
    return f"present_over_time({counter}[1d] offset "


@pytest.mark.parametrize(
    ("record", "before", "after"),
    [
        # reconciled holds counted as spent: an outbox landing after a money store outage fires the burn alert
        ("llmrouter:cost_usd_per_hour:rate1h", "\n  - (", "\n  + 0 * ("),
        # a router's first give-back, on a series born holding it, unseen by increase(): the same
        (
            "llmrouter:cost_usd_per_hour:rate1h",
            f"(last_over_time({GIVEN_BACK}[1h]) unless {seen_before(GIVEN_BACK)}1h))",
            f"({GIVEN_BACK} unless {GIVEN_BACK})",
        ),
        (
            "llmrouter:cost_usd_per_hour:rate5m",
            f"(last_over_time({GIVEN_BACK}[5m]) unless {seen_before(GIVEN_BACK)}5m))",
            f"({GIVEN_BACK} unless {GIVEN_BACK})",
        ),
        # a router's first charge of a model, a reconciled hold, unseen by increase(): its give-back is negative spend
        (
            "llmrouter:cost_usd_per_hour:rate1h",
            f"(last_over_time({COST}[1h]) unless {seen_before(COST)}1h))",
            f"({COST} unless {COST})",
        ),
        (
            "llmrouter:cost_usd_per_hour:rate5m",
            f"(last_over_time({COST}[5m]) unless {seen_before(COST)}5m))",
            f"({COST} unless {COST})",
        ),
        # a series unscraped a while at the window's start taken for newborn: its whole history given back in it
        ("llmrouter:cost_usd_per_hour:rate1h", f"{seen_before(GIVEN_BACK)}1h)", f"{GIVEN_BACK} offset 1h"),
        ("llmrouter:cost_usd_per_hour:rate5m", f"{seen_before(GIVEN_BACK)}5m)", f"{GIVEN_BACK} offset 5m"),
    ],
)
def test_a_broken_cost_record_fails_its_tests(tmp_path: Path, record: str, before: str, after: str) -> None:
    """The spend the burn alerts compare with the hourly budget is the cost counter less what was given back."""
    rules = scoped_rules()
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("record") == record]
    assert before in rule["expr"]
    rule["expr"] = rule["expr"].replace(before, after, 1)
    result = run_tests(write_rules(rules, tmp_path), tmp_path, naming=record)
    assert result.returncode != 0
    assert record in result.stdout + result.stderr


def grafana_expanded(expr: str, namespace: str = "$namespace", release: str = "$release") -> str:
    """A dashboard query as Grafana sends it over a 5 minute rate interval and a range of an hour."""
    for macro, value in [
        ("$__rate_interval_ms", "300000"),
        ("$__rate_interval", "5m"),
        ("$__range", "1h"),
        ("$namespace", namespace),
        ("$release", release),
    ]:
        expr = expr.replace(macro, value)
    return expr


def dashboard_targets() -> dict[str, str]:
    """Each panel's queries by "<title>:<refId>"."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    return {
        f"{panel['title']}:{target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables replaced), as the rules of a scratch file."""
    rules = [
        {"record": f"dashboard:panel{number}", "expr": grafana_expanded(expr)}
        for number, expr in enumerate(dashboard_targets().values())
    ]
    assert len(rules) > 20
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The rules_test.yaml case "reconciled holds given back when an outbox lands are no spend": 3 USD/h served, reconciled
# holds of 30 USD charged at 10m, all but 0.2 USD of them given back at 12m on a router's series born then.
GIVEN_BACK_INPUT = [
    {
        "series": f'llmrouter_router_cost_usd_total{{{PROD},pod="router-a",model="gpt-4o"}}',
        "values": "0+0.05x9 30.5+0.05x80",
    },
    {"series": f'llmrouter_router_baseline_cost_usd_total{{{PROD},pod="router-a"}}', "values": "0+0.1x9 31+0.1x80"},
    {"series": f'{GIVEN_BACK[:-1]},pod="router-b",model="gpt-4o"}}', "values": "_x12 29.8x77"},
]


def dashboard_queries_pass(tmp_path: Path, panels: dict[str, str], series: list[dict], cases: list[dict]) -> None:
    """promtool evaluates the panels' queries ("<title>:<refId>", over release "llm" in namespace "prod") on the input
    series, each case's expression reading them as dashboard:<its panel's number in `panels`>."""
    targets = dashboard_targets()
    rules = [
        {"record": f"dashboard:{number}", "expr": grafana_expanded(targets[panel], "prod", "llm")}
        for number, panel in enumerate(panels.values())
    ]
    names = {name: f"dashboard:{number}" for number, name in enumerate(panels)}
    path = write_rules({"groups": [{"name": "dashboard", "rules": rules}]}, tmp_path)
    tests = [{**case, "expr": case["expr"].format(**names)} for case in cases]
    suite = {
        "rule_files": [str(path)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    test_file = tmp_path / "dashboard_test.yaml"
    test_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    result = subprocess.run([tool("promtool"), "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


COST_PANELS = {
    "cost": "Cost (USD/h):A",
    "actual": "Cost vs always-strongest (USD/h):A",
    "savings": "Savings (USD/h):A",
    "cost_by_model": "Cost by model (USD/h):A",
    "given_back_by_model": "Cost by model (USD/h):B",
    "savings_ratio": "Savings ratio:A",
}


def at(minutes: int, value: float, labels: str = "{}") -> dict:
    return {"eval_time": f"{minutes}m", "exp_samples": [{"labels": labels, "value": value}]}


def test_dashboard_cost_agrees_with_the_burn_alerts_records(tmp_path: Path) -> None:
    """The Cost panels take off what reconciled charges gave back as llmrouter:cost_usd_per_hour:rate5m does: a
    router's given-back series born holding its first give-back counts whole (rate() alone never sees it), and the
    Savings ratio takes it off the cost and the baseline alike (a reconciled charge claims no savings)."""
    cases = [
        # as rules_test.yaml has llmrouter:cost_usd_per_hour:rate5m: 0.25 USD served and the 0.2 USD
        {"expr": "round({cost}, 0.1)", **at(14, 5.4)},
        {"expr": "round({actual}, 0.1)", **at(14, 5.4)},
        {"expr": "round({cost}, 0.1)", **at(40, 3)},
        {"expr": "round({given_back_by_model}, 0.1)", **at(14, 357.6, '{model="gpt-4o"}')},
        # at 60m, over the hour: 3 USD served and the 0.2 USD reconciled, against a baseline of 6 USD
        # served and the same 0.2 USD (its holds of 30 USD too, less the 29.8 given back): 1 - 3.2 / 6.2
        {"expr": "round({savings_ratio}, 0.01)", **at(60, 0.48)},
    ]
    dashboard_queries_pass(tmp_path, COST_PANELS, GIVEN_BACK_INPUT, cases)


# The rules_test.yaml case "a router's first charge of a model, a reconciled hold given back, is no negative spend":
# 3 USD/h served by router-a; at 70m router-b's reconciler charges a hold of 30 USD on a series born holding it (its
# baseline, a series of its own from its start, counts the same 30); at 72m 29.8 USD of it is given back on router-c.
FIRST_CHARGE_INPUT = [
    {"series": f'{COST[:-1]},pod="router-a",model="gpt-4o"}}', "values": "0+0.05x100"},
    {"series": f'{COST[:-1]},pod="router-b",model="claude-sonnet-4"}}', "values": "_x70 30x30"},
    {"series": f'{GIVEN_BACK[:-1]},pod="router-c",model="claude-sonnet-4"}}', "values": "_x72 29.8x28"},
    {"series": f'llmrouter_router_baseline_cost_usd_total{{{PROD},pod="router-a"}}', "values": "0+0.1x100"},
    {"series": f'llmrouter_router_baseline_cost_usd_total{{{PROD},pod="router-b"}}', "values": "0x69 30x30"},
]


def test_dashboard_cost_counts_a_routers_first_charge_of_a_model(tmp_path: Path) -> None:
    """A cost series born holding a router's first charge of a model counts whole, as the burn alerts' records count
    it: rate() alone never sees it, and a reconciled hold it held, given back later, read as negative spend."""
    cases = [
        # in the 5 minutes to 74m: 0.25 USD served, and the hold less what was given back, 0.2 USD
        {"expr": "round({cost}, 0.1)", **at(74, 5.4)},
        {"expr": "round({actual}, 0.1)", **at(74, 5.4)},
        {
            "expr": "round({cost_by_model}, 0.1)",
            "eval_time": "74m",
            "exp_samples": [
                {"labels": '{model="gpt-4o"}', "value": 3},
                {"labels": '{model="claude-sonnet-4"}', "value": 360},
            ],
        },
        {"expr": "round({savings}, 0.1)", **at(74, 3)},  # 0.5 USD of baseline served, 0.25 spent: 3 USD/h
        # at 80m, over the hour: 3.2 USD spent against a baseline of 6 USD served and the same 0.2 USD
        {"expr": "round({savings_ratio}, 0.01)", **at(80, 0.48)},
    ]
    dashboard_queries_pass(tmp_path, COST_PANELS, FIRST_CHARGE_INPUT, cases)
