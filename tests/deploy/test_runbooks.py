"""deploy/runbooks.md as the on-call reads it at night: each alert's section states its rule (the series it reads, its
thresholds, how long it waits) and the dashboard panels that show it, panels that exist and read those series; the
objects the runbooks and deploy/README.md name are the chart's; and every metric an operator's document names is
one the code defines, with the labels written. Fast: plain text, the dashboard's JSON, one helm render."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import CHART, ROOT, SERVICES, code_metrics, render
from .test_alerts import ALERTS, RULES, RUNBOOKS, series_names

ARROW = "\u203a"  # between a dashboard row's title and its panel's, as the runbooks write them
SECTIONS = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", RUNBOOKS, re.S | re.M))
RECORDED_FROM = {r["record"]: r["expr"] for g in RULES["groups"] for r in g["rules"] if "record" in r}
# Labels every scraped series carries besides its own (the ServiceMonitor's target labels and the chart's release).
TARGET_LABELS = {"namespace", "release", "job", "instance", "pod", "container", "endpoint"}
# The PromQL names of a metric family of each type (a histogram's own name too: documents name it so).
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}
# Words of the form llmrouter_... that are no metric: a data set's name (../shared/data/routing).
NOT_METRICS = {"llmrouter_tasks"}
OPERATOR_DOCS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    ROOT / "deploy" / "runbooks.md",
    ROOT / "docs" / "capacity.md",
    ROOT / "docs" / "conventions.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "services").glob("*/README.md")),
    CHART / "values.yaml",
    CHART / "templates" / "NOTES.txt",
]


def dashboard_panels() -> dict[tuple[str, str], list[str]]:
    """(row title, panel title) -> the panel's expressions."""
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    panels: dict[tuple[str, str], list[str]] = {}
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        exprs = [t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h") for t in panel["targets"]]
        panels[(row, panel["title"])] = exprs
    return panels


def rule_line(alert: str) -> str:
    found = re.findall(r"^Rule: (.*)$", SECTIONS.get(alert, ""), re.M)
    assert len(found) == 1, f"deploy/runbooks.md, {alert}: one 'Rule: ... Dashboard: ...' line"
    return found[0]


def read_by(expr: str) -> set[str]:
    """The series an expression reads, a recording rule's own series included."""
    names = series_names(expr)
    return names | {n for name in names if name in RECORDED_FROM for n in series_names(RECORDED_FROM[name])}


def thresholds(expr: str) -> set[str]:
    """The numbers an expression compares with."""
    return set(re.findall(r"(?:[<>]=?|[=!]=)\s*(\d+(?:\.\d+)?)\b", expr))


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_runbook_states_the_rule(rule: dict) -> None:
    """The metric, threshold and wait as the rule has them: a section that named another would send the on-call to
    the wrong graph."""
    line = rule_line(rule["alert"]).split(" Dashboard: ")[0]
    for name in series_names(rule["expr"]):
        assert re.search(rf"`{re.escape(name)}[`{{]", line), f"{rule['alert']}: the rule line does not name {name}"
    for number in thresholds(rule["expr"]):
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d]|\.\d)", line), f"{rule['alert']}: no {number}"
    assert f"for {rule['for']}" in line, f"{rule['alert']}: waits {rule['for']}"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_runbook_names_dashboard_panels_that_show_the_alert(rule: dict) -> None:
    line = rule_line(rule["alert"])
    assert " Dashboard: " in line, f"{rule['alert']}: no dashboard panel named"
    named = re.findall(rf"`([^`]+)` {ARROW} `([^`]+)`", line.split(" Dashboard: ", 1)[1])
    assert named, f"{rule['alert']}: name panels as `<row>` {ARROW} `<panel title>`"
    panels, alert_reads = dashboard_panels(), read_by(rule["expr"])
    for row_and_title in named:
        assert row_and_title in panels, f"{rule['alert']}: no panel {row_and_title} on the dashboard"
        shown = set().union(*(read_by(expr) for expr in panels[row_and_title]))
        assert shown & alert_reads, f"{rule['alert']}: {row_and_title} reads none of {sorted(alert_reads)}"


def test_the_rule_checks_catch_what_they_are_for() -> None:
    (high,) = [r for r in ALERTS if r["alert"] == "LLMRouterMoneyStoreMemoryHigh"]
    assert thresholds(high["expr"]) == {"0.8"}
    with pytest.raises(AssertionError, match="waits"):
        test_runbook_states_the_rule({**high, "for": "20m"})
    with pytest.raises(AssertionError, match=r"no 0\.9"):
        test_runbook_states_the_rule({**high, "expr": high["expr"].replace("0.8", "0.9")})
    (burn,) = [r for r in ALERTS if r["alert"] == "LLMRouterCostBurnRateHigh"]
    assert "llmrouter_router_cost_usd_total" in read_by(burn["expr"])  # the panels read what it records


FULLNAME = "llm-llm-cost-router"  # release "llm"
DOCS_NAMING_OBJECTS = [ROOT / "deploy" / "runbooks.md", ROOT / "deploy" / "README.md"]


def named_objects(text: str) -> Iterator[str]:
    """The object names written `<fullname>-...`, each Redis role spelled out where the text leaves it open (the
    persisted ones: the cache's pods are a Deployment's); `<fullname>-<component>`, the rule itself, is none."""
    for found in re.findall(r"<fullname>-([a-z0-9_<>-]*[a-z0-9>])", text):
        for role in ("money", "batches") if "<redis_role>" in found or "<role>" in found else ("",):
            name = found.replace("<redis_role>", role).replace("<role>", role)
            if "<" not in name:
                yield name


@pytest.mark.parametrize("doc", DOCS_NAMING_OBJECTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_objects_named_are_the_charts(doc: Path) -> None:
    """`<release>-llm-cost-router-x` is no object of a release whose name holds llm-cost-router (Terraform's default
    release_name): the chart then names it `<release>-x`. `<fullname>-x` is right for both, and must be rendered."""
    text = doc.read_text()
    assert "<release>-llm-cost-router-" not in text, f"{doc.name}: write <fullname>-<component>"
    docs = render(
        "--set",
        "router.ledgerDsnSecret.name=ledger",
        "--set",
        "router.ledgerDsnSecret.key=dsn",
        "--set",
        "router.ledgerSink.enabled=true",  # the standalone sink's objects too
    )
    rendered = {d["metadata"]["name"] for d in docs}
    stateful = {d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"}
    names = list(named_objects(text))
    assert names
    for suffix in names:
        name = f"{FULLNAME}-{suffix}".removesuffix("-manual")  # a Job made by hand from the CronJob
        if name.endswith("-0") and name.removesuffix("-0") in stateful:
            continue  # a StatefulSet's first pod, or its claim (data-<pod>)
        assert name in rendered, f"{doc.name}: <fullname>-{suffix} is no object the chart renders"


def test_every_metric_the_documents_name_is_the_codes() -> None:
    """A metric in a runbook's query, a README's sentence or a values comment that the code does not define (or
    without the label written) returns nothing when pasted into Prometheus."""
    code = code_metrics()
    for doc in OPERATOR_DOCS:
        text = doc.read_text()
        for match in re.finditer(r"\b(llmrouter_[a-z0-9_]*[a-z0-9])(?![a-z0-9_*])(\{[^}]*\})?", text):
            name, selector = match.groups()
            if name in NOT_METRICS:
                continue
            family = next((f for f, (kind, _) in code.items() for sfx in SUFFIXES[kind] if name == f + sfx), None)
            assert family, f"{doc.relative_to(ROOT)}: {name} is no metric the code defines"
            labels = code[family][1] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
            written = re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=|,|\})", selector or "")
            assert not set(written) - labels, f"{doc.relative_to(ROOT)}: {match.group(0)} has no such label"


# A panel title's stated wait for an alert it shows, "<N> minutes: <alert>" (<Service>: each service's alert).
STATED_WAIT = re.compile(r"(\d+) minutes?: (LLMRouter[A-Za-z<>]+)")
SERVICE_ALERT_NAMES = "|".join(s.capitalize() for s in SERVICES)


def stated_wait(title: str, alert: str) -> str | None:
    """The wait a panel title states for the alert ("3m"), its own name first, then a <Service> pattern; None when
    the title states none for it."""
    waits = STATED_WAIT.findall(title)
    for minutes, named in waits:
        if named == alert:
            return f"{minutes}m"
    for minutes, named in waits:
        pattern = re.escape(named).replace(re.escape("<Service>"), f"({SERVICE_ALERT_NAMES})")
        if re.fullmatch(pattern, alert):
            return f"{minutes}m"
    return None


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_a_panel_stating_how_long_an_alert_waits_states_its_wait(rule: dict) -> None:
    """A runbook sending the on-call to a panel that says "none for 3 minutes" for an alert that waits 10 has them
    look for the wrong thing: a panel that states waits states the right one for every alert that names it."""
    line = rule_line(rule["alert"]).split(" Dashboard: ", 1)[1]
    for _, title in re.findall(rf"`([^`]+)` {ARROW} `([^`]+)`", line):
        if STATED_WAIT.search(title):
            assert stated_wait(title, rule["alert"]) == rule["for"], f"{rule['alert']} waits {rule['for']}: {title}"


def test_the_stated_wait_check_catches_a_wrong_one() -> None:
    title = (
        "Targets up (none for 3 minutes: LLMRouter<Service>Down; the ledger sink's 10 minutes: LLMRouterLedgerSinkDown)"
    )
    assert stated_wait(title, "LLMRouterEdgeDown") == "3m"
    assert stated_wait(title, "LLMRouterLedgerSinkDown") == "10m"
    assert stated_wait("Targets up (none for 3 minutes: LLMRouter<Service>Down)", "LLMRouterLedgerSinkDown") is None


def test_the_runbooks_name_no_histogram_without_its_series() -> None:
    """A histogram's own name returns nothing in Prometheus: a runbook step telling the on-call to look at it sends
    them to an empty graph. The runbooks name its _bucket (in a quantile), _sum or _count."""
    histograms = {name for name, (kind, _) in code_metrics().items() if kind == "histogram"}
    named = set(re.findall(r"\b(llmrouter_[a-z0-9_]*[a-z0-9])(?![a-z0-9_])", RUNBOOKS))
    assert not named & histograms, f"deploy/runbooks.md names histograms bare: {sorted(named & histograms)}"
