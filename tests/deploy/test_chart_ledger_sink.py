"""The standalone SQL ledger sink in the chart (router.ledgerSink): off by default; on, a Deployment of its own with the
money Redis and the ledger's DSN as the router has them, its metrics port behind a Service the ServiceMonitor scrapes
as job llmrouter-ledger-sink, the routers' own sinks off, its network policy and its alert; refused where it has
nothing to copy into. Needs helm (deploy/install-tools.sh)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from services.ledger.settings import LedgerSettings

from .support import CHART, by_kind, render

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
LEDGER_DSN = ("--set", "router.ledgerDsnSecret.name=llm-ledger", "--set", "router.ledgerDsnSecret.key=dsn")
SINK = (*LEDGER_DSN, "--set", "router.ledgerSink.enabled=true")
EGRESS = (
    "--set",
    "networkPolicy.egress.enabled=true",
    "--set",
    "networkPolicy.egress.ledgerTo[0].ipBlock.cidr=10.30.0.5/32",
)


def name(component: str) -> str:
    return f"llm-llm-cost-router-{component}"


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def router_env(docs: list[dict]) -> dict[str, object]:
    (router,) = by_kind(docs, "Deployment")[name("router")]["spec"]["template"]["spec"]["containers"]
    return env_of(router)


def alerts(docs: list[dict]) -> set[str]:
    (rule,) = by_kind(docs, "PrometheusRule").values()
    return {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def test_off_by_default_and_the_routers_copy_the_ledger() -> None:
    for docs in (render(), render(*LEDGER_DSN)):
        assert not [d for d in docs if d["metadata"]["name"] == name("ledger-sink")]
        assert "ROUTER_LEDGER_SQL_SINK" not in router_env(docs)
        assert "LLMRouterLedgerSinkDown" not in alerts(docs)  # absent() would fire on a release without it


def test_refused_without_postgresql_or_a_money_redis() -> None:
    for extra in ((), ("--set", "redis.money.enabled=false", "--set", "router.replicas=1", "--set",
                       "router.autoscaling.enabled=false", *LEDGER_DSN)):  # fmt: skip
        with pytest.raises(subprocess.CalledProcessError) as refused:
            render("--set", "router.ledgerSink.enabled=true", *extra)
        assert "router.ledgerSink" in refused.value.stderr and "router.ledgerDsnSecret" in refused.value.stderr


def test_the_sink_runs_apart_with_its_metrics_scraped() -> None:
    docs = render(*SINK, "--set", "router.env.ROUTER_LEDGER_SQL_CLAIM_IDLE_S=90")
    sink = by_kind(docs, "Deployment")[name("ledger-sink")]
    pod = sink["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "services.ledger", "sink"]
    env = env_of(container)
    port = VALUES["router"]["ledgerSink"]["metricsPort"]
    assert port == LedgerSettings.model_fields["ledger_sink_metrics_port"].default  # the code's default, 9105
    routers = router_env(docs)
    assert env["ROUTER_REDIS_URL"] == routers["ROUTER_REDIS_URL"]
    assert env["REDIS_MONEY_PASSWORD"] == routers["REDIS_MONEY_PASSWORD"]
    assert (
        env["ROUTER_LEDGER_SQL_DSN"]
        == routers["ROUTER_LEDGER_SQL_DSN"]
        == {"secretKeyRef": {"name": "llm-ledger", "key": "dsn"}}
    )
    assert env["ROUTER_LEDGER_SINK_METRICS_PORT"] == str(port)
    assert env["ROUTER_LEDGER_SINK_METRICS_HOST"] == "0.0.0.0"  # the scrapers come from other pods
    assert env["ROUTER_LEDGER_SQL_CLAIM_IDLE_S"] == "90"  # router.env, as the router has it
    for var in set(env) - {"REDIS_MONEY_PASSWORD"}:  # read by the sink's settings: none is a no-op
        assert var.removeprefix("ROUTER_").lower() in LedgerSettings.model_fields, var
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}
    # The routers' sinks are off: the standalone one copies the ledger.
    assert routers["ROUTER_LEDGER_SQL_SINK"] == "false"

    # Its Service is one the ServiceMonitor selects (llm-cost-router/job present, the release's labels) on its port
    # named metrics, so Prometheus scrapes it as job llmrouter-ledger-sink, the job LLMRouterLedgerSinkDown reads.
    service = by_kind(docs, "Service")[name("ledger-sink")]
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    labels = service["metadata"]["labels"]
    assert labels[monitor["spec"]["jobLabel"]] == "llmrouter-ledger-sink"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert [p["name"] for p in service["spec"]["ports"]] == [endpoint["port"]]
    assert service["spec"]["ports"][0]["port"] == port and service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= sink["spec"]["template"]["metadata"]["labels"].items()
    assert "LLMRouterLedgerSinkDown" in alerts(docs)


def test_its_network_policy_and_the_money_redis_lets_it_in() -> None:
    docs = render(*SINK, *EGRESS)
    policies = by_kind(docs, "NetworkPolicy")
    own = policies[name("ledger-sink")]["spec"]
    port = VALUES["router"]["ledgerSink"]["metricsPort"]
    assert [rule["ports"] for rule in own["ingress"]] == [[{"port": port, "protocol": "TCP"}]]
    assert own["ingress"][0]["from"] == VALUES["networkPolicy"]["metricsFrom"]
    egress = {p["port"]: rule.get("to") for rule in own["egress"] for p in rule["ports"]}
    assert egress.keys() == {53, 6379, 5432}
    assert egress[5432] == [{"ipBlock": {"cidr": "10.30.0.5/32"}}]
    (money_peer,) = egress[6379]
    assert money_peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis-money"
    (redis_in, *_) = policies[name("redis-money")]["spec"]["ingress"]
    callers = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in redis_in["from"]]
    assert "ledger-sink" in callers


def test_router_env_may_not_turn_the_routers_sinks_back_on() -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render(*SINK, "--set", "router.env.ROUTER_LEDGER_SQL_SINK=true")
    assert "router.env.ROUTER_LEDGER_SQL_SINK" in refused.value.stderr
