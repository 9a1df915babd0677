"""The chart rendered by the real helm: kinds per service, wiring (ports, addresses, probes, mounts), the
network and security posture, monitoring objects. Needs helm (deploy/install-tools.sh; without it, a failure
under CI=true)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.edge.settings import EdgeSettings

from .kube_api import KubeApi
from .support import (
    CHART,
    GRPC_SERVICES,
    OPERATOR_TARGET_LABELS,
    ROOT,
    SERVICES,
    by_kind,
    code_metrics,
    documented_ports,
    render,
    tool,
)

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


def name(svc: str) -> str:
    return f"llm-llm-cost-router-{svc}"


def container(docs: list[dict], svc: str) -> dict:
    """The service's container, of its Deployment or StatefulSet (the router's, with router.outbox.persistence)."""
    workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    (c,) = workloads[name(svc)]["spec"]["template"]["spec"]["containers"]
    return c


def env(docs: list[dict], svc: str) -> dict[str, str]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs, svc)["env"]}


REDIS_ROLES = ("money", "cache", "batches")


def redis_containers(docs: list[dict], role: str) -> dict[str, dict]:
    """The containers of an in-chart Redis pod (a Deployment for the cache, StatefulSets for the others), by name."""
    workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    return {c["name"]: c for c in workloads[name(f"redis-{role}")]["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize(
    "kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"]
)
def test_every_service_has_its_kinds(docs: list[dict], kind: str) -> None:
    objects = by_kind(docs, kind)
    for svc in SERVICES:
        assert name(svc) in objects, f"no {kind} for {svc}"
        labels = objects[name(svc)]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == svc


def test_monitoring_and_config_objects(docs: list[dict]) -> None:
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "ServiceAccount"} <= kinds
    assert by_kind(docs, "Deployment").keys() == {name(s) for s in (*SERVICES, "redis-cache")}
    assert by_kind(docs, "StatefulSet").keys() == {name("redis-money"), name("redis-batches")}


def test_monitoring_objects_only_where_the_operator_crds_exist() -> None:
    """No Prometheus Operator: the install must not fail on unknown kinds; the dashboard (a ConfigMap) stays."""
    docs = render(monitoring_crds=False)
    kinds = {d["kind"] for d in docs}
    assert kinds.isdisjoint({"ServiceMonitor", "PrometheusRule"})
    assert any(c["metadata"]["name"] == name("dashboard") for c in by_kind(docs, "ConfigMap").values())


def test_monitoring_objects_carry_the_prometheus_selector_label(docs: list[dict]) -> None:
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (obj,) = by_kind(docs, kind).values()
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind


def test_metrics_ports_open_to_prometheus_pods_in_any_namespace(docs: list[dict]) -> None:
    for svc in SERVICES:
        (_, metrics_rule) = by_kind(docs, "NetworkPolicy")[name(svc)]["spec"]["ingress"]
        assert metrics_rule["from"] == [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
        ]


@pytest.mark.parametrize("svc", SERVICES)
def test_ports_and_env_follow_the_conventions(docs: list[dict], svc: str) -> None:
    prefix, port, metrics_port = documented_ports()[svc]
    c = container(docs, svc)
    assert c["command"] == ["python", "-m", f"services.{svc}"]
    health = {} if svc == "edge" else {"health": VALUES["tls"]["healthPort"]}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        ("http" if svc == "edge" else "grpc"): port,
        "metrics": metrics_port,
        **health,
    }
    e = env(docs, svc)
    assert e[f"{prefix}_HOST"] == "0.0.0.0"
    assert e[f"{prefix}_PORT"] == str(port)
    assert e[f"{prefix}_METRICS_PORT"] == str(metrics_port)
    service_ports = {p["name"]: p["port"] for p in by_kind(docs, "Service")[name(svc)]["spec"]["ports"]}
    assert service_ports["metrics"] == metrics_port


def test_peer_addresses(docs: list[dict]) -> None:
    router = env(docs, "router")
    assert router["ROUTER_CLASSIFIER_ADDR"] == f"{name('classifier')}:50051"
    assert router["ROUTER_PROVIDERS_ADDR"] == f"{name('providers')}:50052"
    # The in-chart Redis' passwords, expanded by Kubernetes (tests/deploy/test_redis_auth.py).
    assert router["ROUTER_REDIS_URL"] == f"redis://:$(REDIS_MONEY_PASSWORD)@{name('redis-money')}:6379/0"
    assert router["ROUTER_CACHE_REDIS_URL"] == f"redis://:$(REDIS_CACHE_PASSWORD)@{name('redis-cache')}:6379/0"
    assert env(docs, "edge")["EDGE_ROUTER_ADDR"] == f"{name('router')}:50053"
    services = by_kind(docs, "Service")
    for addr in (
        router["ROUTER_CLASSIFIER_ADDR"],
        router["ROUTER_PROVIDERS_ADDR"],
        env(docs, "edge")["EDGE_ROUTER_ADDR"],
    ):
        host, port = addr.split(":")
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


@pytest.mark.parametrize("svc", GRPC_SERVICES)
def test_grpc_services_use_native_grpc_health_probes(docs: list[dict], svc: str) -> None:
    """On the plaintext health-only port: kubelet's gRPC probes cannot present a client certificate."""
    c = container(docs, svc)
    health_port = VALUES["tls"]["healthPort"]
    assert env(docs, svc)[f"{documented_ports()[svc][0]}_HEALTH_PORT"] == str(health_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": health_port}, probe
    service_ports = {p["port"] for p in by_kind(docs, "Service")[name(svc)]["spec"]["ports"]}
    policy_ports = {
        p["port"] for rule in by_kind(docs, "NetworkPolicy")[name(svc)]["spec"]["ingress"] for p in rule["ports"]
    }
    assert health_port not in service_ports | policy_ports


@pytest.mark.parametrize("svc", SERVICES)
def test_every_service_mounts_its_certificate(docs: list[dict], svc: str) -> None:
    pod = by_kind(docs, "Deployment")[name(svc)]["spec"]["template"]["spec"]
    mount_path = VALUES["tls"]["mountPath"]
    assert env(docs, svc)[f"{documented_ports()[svc][0]}_TLS_DIR"] == mount_path
    assert {"name": "tls", "mountPath": mount_path, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    (volume,) = (v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == f"{name(svc)}-tls"
    assert {item["path"] for item in volume["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}


def test_edge_is_ready_only_when_its_router_is(docs: list[dict]) -> None:
    c = container(docs, "edge")
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


KUBELET_PROBE_TIMEOUT_S = 1  # a probe's timeoutSeconds when it gives none


@pytest.mark.parametrize("check_s", [None, 2.5, 10])
def test_the_edges_readiness_probe_outwaits_the_edges_own_check(check_s: float | None) -> None:
    """/readyz waits up to EDGE_READINESS_TIMEOUT_S for the router's health check: the kubelet must wait longer, with
    room for the answer to come back, or a slow router times the probe out before /readyz can answer 503."""
    docs = render(*(() if check_s is None else ("--set-json", f"edge.readinessTimeoutSeconds={check_s}")))
    check = float(
        env(docs, "edge").get("EDGE_READINESS_TIMEOUT_S", EdgeSettings.model_fields["readiness_timeout_s"].default)
    )
    assert check == (VALUES["edge"]["readinessTimeoutSeconds"] if check_s is None else check_s)
    assert container(docs, "edge")["readinessProbe"].get("timeoutSeconds", KUBELET_PROBE_TIMEOUT_S) >= check + 1


@pytest.mark.parametrize("svc", SERVICES)
def test_readiness_waits_for_a_slow_answer_as_long_as_liveness(docs: list[dict], svc: str) -> None:
    """A pod answering slowly (a throttled CPU) that liveness keeps should not be taken out of its Service meanwhile."""
    probes = container(docs, svc)
    readiness, liveness = (
        probes[p].get("timeoutSeconds", KUBELET_PROBE_TIMEOUT_S) for p in ("readinessProbe", "livenessProbe")
    )
    assert readiness >= liveness > KUBELET_PROBE_TIMEOUT_S


def test_startup_probes_wait_for_a_slow_answer_as_configured(docs: list[dict]) -> None:
    """A cold start on a busy node answers late: with the kubelet's default timeout each late answer was a failure
    against the startup probe's threshold, and the pod was restarted mid-start. Every startup probe the chart renders
    waits as long as liveness does, and each service's follows <service>.startupProbeTimeoutSeconds."""
    workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    started = {
        (workload, c["name"]): c
        for workload, obj in workloads.items()
        for c in obj["spec"]["template"]["spec"]["containers"]
        if "startupProbe" in c
    }
    assert {container_name for _, container_name in started} >= set(SERVICES)
    for where, c in started.items():
        startup, liveness = (
            c[p].get("timeoutSeconds", KUBELET_PROBE_TIMEOUT_S) for p in ("startupProbe", "livenessProbe")
        )
        assert startup >= liveness > KUBELET_PROBE_TIMEOUT_S, where
    chosen = {svc: 4 + i for i, svc in enumerate(SERVICES)}
    docs = render(*(arg for svc, s in chosen.items() for arg in ("--set", f"{svc}.startupProbeTimeoutSeconds={s}")))
    assert {svc: container(docs, svc)["startupProbe"]["timeoutSeconds"] for svc in SERVICES} == chosen


def test_registry_configmap_is_mounted_where_the_services_read_it(docs: list[dict]) -> None:
    (cm,) = [c for c in by_kind(docs, "ConfigMap").values() if "models.yaml" in c["data"]]
    assert cm["data"]["models.yaml"] == (CHART / "files" / "models.yaml").read_text().rstrip("\n")
    for svc, var in (("router", "ROUTER_REGISTRY_PATH"), ("providers", "PROVIDERS_REGISTRY_PATH")):
        pod = by_kind(docs, "Deployment")[name(svc)]["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
        (mount,) = [m for m in container(docs, svc)["volumeMounts"] if m["name"] == volume["name"]]
        assert env(docs, svc)[var] == f"{mount['mountPath']}/models.yaml"


def test_provider_keys_come_from_an_existing_secret_as_files(docs: list[dict]) -> None:
    pod = by_kind(docs, "Deployment")[name("providers")]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == VALUES["providers"]["apiKeys"]["existingSecret"]
    (mount,) = [m for m in container(docs, "providers")["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": VALUES["providers"]["apiKeys"]["mountPath"], "readOnly": True}
    assert not any("KEY" in e["name"] and "DIR" not in e["name"] for c in pod["containers"] for e in c["env"])
    # the chart never holds an API key: its only Secrets are the generated certificates (tls.mode auto, no
    # cert-manager) and the in-chart Redis' passwords
    opaque = [s for s in by_kind(docs, "Secret").values() if s["type"] != "kubernetes.io/tls"]
    assert [s["metadata"]["name"] for s in opaque] == [name("redis-auth")]
    assert opaque[0]["data"].keys() == set(REDIS_ROLES)


@pytest.mark.parametrize("mount", [None, "/keys/elsewhere"])
def test_providers_read_keys_where_the_chart_mounts_them(mount: str | None) -> None:
    """The registry names no key path: the chart tells the providers the mount (PROVIDERS_API_KEYS_DIR)."""
    docs = render(*(["--set", f"providers.apiKeys.mountPath={mount}"] if mount else []))
    (volume_mount,) = [m for m in container(docs, "providers")["volumeMounts"] if m["name"] == "api-keys"]
    assert env(docs, "providers")["PROVIDERS_API_KEYS_DIR"] == volume_mount["mountPath"]
    assert volume_mount["mountPath"] == (mount or VALUES["providers"]["apiKeys"]["mountPath"])
    registry = yaml.safe_load((CHART / "files" / "models.yaml").read_text())
    assert not any("api_key_file" in spec for spec in registry["providers"].values())


@pytest.mark.parametrize("svc", [*SERVICES, "redis-money", "redis-cache", "redis-batches"])
def test_pods_are_locked_down(docs: list[dict], svc: str) -> None:
    workloads = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    pod = workloads[name(svc)]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # a Service named `router` would set ROUTER_PORT=tcp://...
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["requests"] and c["resources"]["limits"]


def _callers(policy: dict) -> list[dict] | None:
    """The `from` of the rule on the service port (not the metrics one): None means anyone."""
    (rule,) = policy["spec"]["ingress"][:1]
    return rule.get("from")


def test_network_policies_only_edge_is_open(docs: list[dict]) -> None:
    policies = by_kind(docs, "NetworkPolicy")
    assert _callers(policies[name("edge")]) is None
    expected = {"router": ["edge"], "classifier": ["router"], "providers": ["router"], "redis-money": ["router"]}
    expected |= {"redis-cache": ["router"], "redis-batches": ["edge"]}  # the edge's batches (edge.batchRedis)
    for svc, callers in expected.items():
        peers = _callers(policies[name(svc)])
        assert peers is not None, svc
        assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers] == callers, svc
        assert policies[name(svc)]["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == svc
    for policy_name, policy in policies.items():
        if "-redis-" not in policy_name:  # the Redis pods' egress is always closed (below)
            assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_the_redis_pods_call_no_one_even_with_egress_policies_off(docs: list[dict]) -> None:
    """Each Redis pod's exporter holds its Redis' password, and redis_exporter's /scrape?target=redis://<host>
    connects to any host a scraper (networkPolicy.metricsFrom: any pod labelled prometheus) names, with it."""
    policies = by_kind(docs, "NetworkPolicy")
    for store in ("redis-money", "redis-cache", "redis-batches"):
        workloads = by_kind(docs, "StatefulSet") | by_kind(docs, "Deployment")
        pod = workloads[name(store)]["spec"]["template"]["spec"]
        (exporter,) = [c for c in pod["containers"] if c["name"] == "exporter"]
        assert "REDIS_PASSWORD" in {e["name"] for e in exporter["env"]}
        assert policies[name(store)]["spec"]["policyTypes"] == ["Ingress", "Egress"], store
        assert policies[name(store)]["spec"]["egress"] == [], store


def test_autoscaling_and_disruption_budgets(docs: list[dict]) -> None:
    for svc in SERVICES:
        hpa = by_kind(docs, "HorizontalPodAutoscaler")[name(svc)]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name(svc)}
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
            VALUES[svc]["autoscaling"]["minReplicas"],
            VALUES[svc]["autoscaling"]["maxReplicas"],
        )
        assert hpa["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        assert "replicas" not in by_kind(docs, "Deployment")[name(svc)]["spec"]  # the HPA owns it
        pdb = by_kind(docs, "PodDisruptionBudget")[name(svc)]["spec"]
        assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == svc


@pytest.mark.parametrize("svc", SERVICES)
def test_hpa_bounds_crossed_are_refused_at_render(svc: str) -> None:
    """minReplicas over maxReplicas: the API server refuses the HPA only at apply, half-way through an install; the
    chart refuses it at `helm template`, naming the service and both bounds. Equal bounds (a fixed size) are taken."""
    with pytest.raises(subprocess.CalledProcessError) as crossed:
        render("--set", f"{svc}.autoscaling.minReplicas=5", "--set", f"{svc}.autoscaling.maxReplicas=3")
    assert f"{svc}.autoscaling: minReplicas (5) must not exceed maxReplicas (3)" in crossed.value.stderr
    fixed = render("--set", f"{svc}.autoscaling.minReplicas=4", "--set", f"{svc}.autoscaling.maxReplicas=4")
    hpa = by_kind(fixed, "HorizontalPodAutoscaler")[name(svc)]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (4, 4)


def test_a_file_quota_under_the_largest_file_is_refused_at_render() -> None:
    """The edge refuses to start with EDGE_FILES_TENANT_BYTES under what a file of EDGE_BATCH_MAX_FILE_BYTES counts
    (its pods crash-looping after the install went through): the chart refuses it at `helm template`. Equal fits."""
    with pytest.raises(subprocess.CalledProcessError) as under:
        render("--set", "edge.batches.maxFileBytes=2000", "--set", "edge.batches.filesTenantBytes=1999")
    assert "edge.batches.filesTenantBytes (1999) is under what a file of edge.batches.maxFileBytes counts (2000;" in (
        under.value.stderr
    )
    with pytest.raises(subprocess.CalledProcessError) as tiny:  # a file counts at least 1024
        render("--set", "edge.batches.maxFileBytes=10", "--set", "edge.batches.filesTenantBytes=1000")
    assert "counts (1024;" in tiny.value.stderr
    fits = render("--set", "edge.batches.maxFileBytes=2000", "--set", "edge.batches.filesTenantBytes=2000")
    edge = env(fits, "edge")
    EdgeSettings.model_validate(
        {k[5:].lower(): v for k, v in edge.items() if k.startswith(("EDGE_BATCH_", "EDGE_FILES_"))}
    )


def test_each_grpc_service_has_its_limit_of_calls_in_flight(docs: list[dict]) -> None:
    """<service>.maxInflightCalls is the service's <PREFIX>_MAX_INFLIGHT_CALLS, within the settings' bounds (below
    gRPC's queue of waiting calls); the edge, no gRPC server, has none."""
    from llmrouter.overload import GRPC_PENDING_CALLS

    for svc in GRPC_SERVICES:
        limit = VALUES[svc]["maxInflightCalls"]
        assert env(docs, svc)[f"{documented_ports()[svc][0]}_MAX_INFLIGHT_CALLS"] == str(limit)
        assert VALUES[svc]["autoscaling"]["targetInflightPerPod"] < limit < GRPC_PENDING_CALLS
    assert not any(name.endswith("_MAX_INFLIGHT_CALLS") for name in env(docs, "edge"))
    with pytest.raises(subprocess.CalledProcessError) as on_edge:
        render("--set", "edge.maxInflightCalls=64")
    assert "at '/edge'" in on_edge.value.stderr
    with pytest.raises(subprocess.CalledProcessError) as past_queue:
        render("--set", f"router.maxInflightCalls={GRPC_PENDING_CALLS}")
    assert "at '/router/maxInflightCalls'" in past_queue.value.stderr


@pytest.mark.parametrize("svc", GRPC_SERVICES)
def test_an_inflight_target_the_pods_would_refuse_is_refused_at_render(svc: str) -> None:
    """With autoscaling on calls in flight, a target at or past the pods' limit is never reached: the HPA would never
    scale on it while the pods refuse calls. Refused at `helm template`, naming both values."""
    target = VALUES[svc]["autoscaling"]["targetInflightPerPod"]
    with pytest.raises(subprocess.CalledProcessError) as unreachable:
        render("--set", "autoscaling.inflight.enabled=true", "--set", f"{svc}.maxInflightCalls={target}")
    assert f"{svc}.autoscaling.targetInflightPerPod ({target}) must be below {svc}.maxInflightCalls" in (
        unreachable.value.stderr
    )
    render("--set", "autoscaling.inflight.enabled=true", "--set", f"{svc}.maxInflightCalls={target + 1}")


@pytest.mark.parametrize("bound", ["minReplicas", "maxReplicas", "targetCPUUtilizationPercentage"])
def test_an_enabled_hpa_without_a_bound_is_refused_by_the_schema(bound: str) -> None:
    """Left out (null deletes it), the HPA rendered a null the API server refuses; off, the bounds are not needed."""
    with pytest.raises(subprocess.CalledProcessError) as missing:
        render("--set", f"router.autoscaling.{bound}=null")
    assert f"at '/router/autoscaling': missing property '{bound}'" in missing.value.stderr
    off = render("--set", f"router.autoscaling.{bound}=null", "--set", "router.autoscaling.enabled=false")
    assert name("router") not in by_kind(off, "HorizontalPodAutoscaler")


def test_service_monitor_scrapes_the_jobs_the_alerts_use(docs: list[dict]) -> None:
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    job_label = sm["spec"]["jobLabel"]
    selected = [
        s
        for s in by_kind(docs, "Service").values()
        if all(s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
        and job_label in s["metadata"]["labels"]
    ]
    jobs = {f"llmrouter-{svc}" for svc in SERVICES} | {"llmrouter-redis"}  # the in-chart Redis' exporters
    assert {s["metadata"]["labels"][job_label] for s in selected} == jobs
    for s in selected:
        assert "metrics" in {p["name"] for p in s["spec"]["ports"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    # the `release` target label the alerts select on is the release's name
    assert endpoint["relabelings"][0] == {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
        "targetLabel": "release",
    }
    assert all(s["metadata"]["labels"]["app.kubernetes.io/instance"] == "llm" for s in selected)


SECONDS = {"s": 1, "m": 60, "h": 3600}


def seconds(duration: str) -> int:
    return int(duration[:-1]) * SECONDS[duration[-1]]


@pytest.mark.parametrize(("interval", "timeout"), [("30s", "10s"), ("1m", "10s"), ("10s", "10s"), ("5s", "5s")])
def test_service_monitor_scrape_timeout_within_its_interval(interval: str, timeout: str) -> None:
    """The Prometheus Operator skips a ServiceMonitor whose scrapeTimeout exceeds its interval (Prometheus refuses the
    scrape config): with monitoring.serviceMonitor.interval under 10 s nothing of the release would be scraped, and
    every LLMRouter*Down alert fire. The timeout is 10 s, or the interval when shorter."""
    docs = render("--set", f"monitoring.serviceMonitor.interval={interval}")
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["interval"] == interval
    assert endpoint["scrapeTimeout"] == timeout
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])


def test_service_monitor_keeps_the_metrics_own_labels(docs: list[dict]) -> None:
    """A label a metric exports that the Operator also sets on the target (the metrics' `service`: router, edge...)
    would be renamed exported_<label>, its name taken by the target's (the Kubernetes Service's name), and the
    dashboard's and runbooks' queries on it would match nothing: the ServiceMonitor drops the target's."""
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    (endpoint,) = sm["spec"]["endpoints"]
    assert not endpoint.get("honorLabels"), "honorLabels would also let a target set its own namespace or release"
    dropped = {r["regex"] for r in endpoint["relabelings"] if r.get("action") == "labeldrop"}
    exported = set().union(*(labels for _, labels in code_metrics().values()))
    assert exported & OPERATOR_TARGET_LABELS == {"service"}
    assert exported & OPERATOR_TARGET_LABELS <= dropped


@pytest.mark.parametrize("role", REDIS_ROLES)
def test_each_in_chart_redis_has_an_exporter_sidecar_with_monitoring_on(docs: list[dict], role: str) -> None:
    """The default (monitoring.serviceMonitor on): redis_exporter beside each Redis, reading it over loopback, on a
    named port its Service exposes, labelled for the ServiceMonitor: job llmrouter-redis, its role."""
    containers = redis_containers(docs, role)
    assert containers.keys() == {"redis", "exporter"}
    exporter, exporter_values = containers["exporter"], VALUES["redis"]["exporter"]
    image = exporter_values["image"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", image["tag"]), "pinned to a release"
    assert exporter["image"] == f"oliver006/redis_exporter:{image['tag']}"
    settings = {e["name"]: e["value"] for e in exporter["env"] if "value" in e}
    assert settings["REDIS_ADDR"] == f"redis://127.0.0.1:{VALUES['redis'][role]['port']}"
    assert settings["REDIS_EXPORTER_WEB_LISTEN_ADDRESS"] == f":{exporter_values['port']}"
    assert exporter["ports"] == [{"name": "metrics", "containerPort": exporter_values["port"], "protocol": "TCP"}]
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    # A pod is ready only when every container is: an exporter's readiness would take its Redis out of the Service.
    assert "readinessProbe" not in exporter and "readinessProbe" in containers["redis"]
    assert exporter["resources"] == exporter_values["resources"]
    service = by_kind(docs, "Service")[name(f"redis-{role}")]
    assert {"name": "metrics", "port": exporter_values["port"], "targetPort": "metrics", "protocol": "TCP"} in service[
        "spec"
    ]["ports"]
    labels = service["metadata"]["labels"]
    assert (labels["llm-cost-router/job"], labels["llm-cost-router/redis-role"]) == ("llmrouter-redis", role)


def test_the_exporter_takes_no_credential_in_its_arguments(docs: list[dict]) -> None:
    """Its settings are env, never arguments a `ps` or the pod spec would show: its Redis' password from the Secret
    (REDIS_PASSWORD), none in its address."""
    for role in REDIS_ROLES:
        exporter = redis_containers(docs, role)["exporter"]
        assert "args" not in exporter and "command" not in exporter
        credentials = [e for e in exporter["env"] if re.search("PASSWORD|USER|AUTH", e["name"])]
        assert credentials == [
            {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": name("redis-auth"), "key": role}}}
        ]
        assert "@" not in next(e["value"] for e in exporter["env"] if e["name"] == "REDIS_ADDR")


def test_service_monitor_labels_the_redis_targets_with_their_role(docs: list[dict]) -> None:
    """redis_role, from the Redis Service's label, is what the Redis alerts and the dashboard select on (not `role`:
    redis_exporter's redis_instance_info has its own, master or replica, which a target label would rename)."""
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    (endpoint,) = sm["spec"]["endpoints"]
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_llm_cost_router_redis_role"],
        "targetLabel": "redis_role",
    } in endpoint["relabelings"]
    (down,) = _rule_groups(docs)["llmrouter.redis.money"]["rules"]
    assert 'job="llmrouter-redis",redis_role="money"' in down["expr"]


def test_redis_exporter_port_open_to_the_scrapers_only(docs: list[dict]) -> None:
    port = VALUES["redis"]["exporter"]["port"]
    for role in REDIS_ROLES:
        redis_rule, metrics_rule = by_kind(docs, "NetworkPolicy")[name(f"redis-{role}")]["spec"]["ingress"]
        assert metrics_rule == {
            "ports": [{"port": port, "protocol": "TCP"}],
            "from": VALUES["networkPolicy"]["metricsFrom"],
        }
        assert port not in {p["port"] for p in redis_rule["ports"]}


@pytest.mark.parametrize("setting", ["monitoring.serviceMonitor.enabled=false", "redis.exporter.enabled=false"])
def test_no_exporter_sidecar_without_the_charts_scraping(setting: str) -> None:
    """Without the chart's scraping (or with the exporter off): the Redis pods, Services, NetworkPolicies as they
    were, and no Redis alert (absent() of a series nobody scrapes would fire)."""
    docs = render("--set", setting)
    for role in REDIS_ROLES:
        assert redis_containers(docs, role).keys() == {"redis"}
        service = by_kind(docs, "Service")[name(f"redis-{role}")]
        assert [p["name"] for p in service["spec"]["ports"]] == ["redis"]
        assert "llm-cost-router/job" not in service["metadata"]["labels"]
        assert len(by_kind(docs, "NetworkPolicy")[name(f"redis-{role}")]["spec"]["ingress"]) == 1
    assert not [group for group in _rule_groups(docs) if group.startswith("llmrouter.redis")]


def test_the_exporter_sidecar_does_not_follow_the_operators_crds() -> None:
    """Gated on the values only: installing the Prometheus Operator later must not restart the money Redis."""
    docs = render(monitoring_crds=False)
    assert all(redis_containers(docs, role).keys() == {"redis", "exporter"} for role in REDIS_ROLES)


def test_redis_alerts_only_for_the_redis_the_chart_runs(docs: list[dict]) -> None:
    """The money Redis' down alert (absent()) only where the chart runs it; none with every Redis external."""
    assert {"llmrouter.redis", "llmrouter.redis.money"} <= _rule_groups(docs).keys()
    external_money = _rule_groups(render("--set", "redis.money.url=redis://money.example:6379/0"))
    assert "llmrouter.redis" in external_money and "llmrouter.redis.money" not in external_money
    production = _rule_groups(render("-f", str(CHART / "ci" / "production-values.yaml")))
    assert not [group for group in production if group.startswith("llmrouter.redis")]


@pytest.mark.parametrize(("exporter_policy", "skipped"), [("Always", False), ("IfNotPresent", True)])
def test_checkov_pull_policy_skip_covers_both_images(exporter_policy: str, skipped: bool) -> None:
    """checkov checks every container's pull policy: its skip stays while either image is not pulled Always."""
    docs = render(
        "--set", "redis.image.pullPolicy=Always", "--set", f"redis.exporter.image.pullPolicy={exporter_policy}"
    )
    skips = by_kind(docs, "StatefulSet")[name("redis-money")]["metadata"]["annotations"].values()
    assert any(skip.startswith("CKV_K8S_15=") for skip in skips) is skipped


def _rule_groups(docs: list[dict]) -> dict[str, dict]:
    (rule,) = by_kind(docs, "PrometheusRule").values()
    return {g["name"]: g for g in rule["spec"]["groups"]}


def test_prometheus_rule_carries_the_file_scoped_and_the_thresholds() -> None:
    # With the ledger-trim CronJob and the standalone ledger sink, so with their alerts.
    groups = _rule_groups(render(*LEDGER_DSN, "--set", "router.ledgerSink.enabled=true"))
    monitoring = VALUES["monitoring"]["prometheusRule"]
    text = (CHART / "files" / "prometheus-rules.yaml").read_text()
    scope = {"$NAMESPACE": "llm", "$RELEASE": "llm", "$RUNBOOK_BASE": monitoring["runbookBaseUrl"]}
    scope["$LEDGER_TRIM_CRONJOB"] = name("ledger-trim")
    for placeholder, value in scope.items():
        text = text.replace(placeholder, value)
    for group in yaml.safe_load(text)["groups"]:
        assert groups[group["name"]] == group
    assert "$" not in json.dumps(groups).replace("$value", "").replace("$labels", "")
    params = {r["record"]: r for r in groups["llmrouter.parameters"]["rules"]}
    budget, slo = params["llmrouter:budget_usd_per_hour"], params["llmrouter:edge_p99_slo_seconds"]
    assert budget["expr"] == f"vector({monitoring['hourlyBudgetUsd']})"
    assert slo["expr"] == f"vector({monitoring['edgeP99SloSeconds']})"
    assert budget["labels"] == slo["labels"] == {"namespace": "llm", "release": "llm"}


def test_dashboard_configmap_for_the_grafana_sidecar(docs: list[dict]) -> None:
    (cm,) = [c for c in by_kind(docs, "ConfigMap").values() if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    (body,) = cm["data"].values()
    rendered, source = json.loads(body), json.loads((CHART / "files" / "dashboard.json").read_text())
    assert rendered["panels"] == source["panels"]
    assert rendered["title"] == f"{source['title']} (llm/llm)"


def test_dashboard_uid_is_per_release() -> None:
    def uid(*args: str, namespace: str = "llm") -> str:
        (cm,) = [c for c in render(*args, namespace=namespace) if c["metadata"]["name"].endswith("-dashboard")]
        uid = json.loads(next(iter(cm["data"].values())))["uid"]
        assert len(uid) <= 40  # Grafana's limit
        return uid

    assert len({uid(), uid(namespace="staging"), uid("--set", "fullnameOverride=other")}) == 2  # name != release
    assert uid() != uid(namespace="staging")


def test_dashboard_file_name_is_per_release() -> None:
    """The Grafana sidecar writes each data key of the labelled ConfigMaps it watches (every namespace's, in
    kube-prometheus-stack) as a file of that name in one folder: two releases' dashboards under one key overwrite each
    other, so one of them is not shown, and uninstalling either deletes the file both wrote."""

    def key(namespace: str = "llm", release: str = "llm") -> str:
        docs = render(namespace=namespace, release=release)
        (cm,) = [c for c in docs if c["kind"] == "ConfigMap" and c["metadata"]["name"].endswith("-dashboard")]
        (key,) = cm["data"]
        assert re.fullmatch(r"[-._a-zA-Z0-9]+\.json", key)  # a ConfigMap key, and a file Grafana loads
        return str(key)

    assert len({key(), key(namespace="staging"), key(release="canary")}) == 3


def test_dashboard_opens_on_the_strongest_tier_of_the_registry_deployed() -> None:
    """The strong share is the share of the tier the dashboard's strong_tier variable names: by default the strongest
    of the registry the release serves (the last of its tiers), whatever it names them."""

    def strong_tier(*args: str) -> str:
        (cm,) = [c for c in render(*args) if c["metadata"]["name"].endswith("-dashboard")]
        variables = json.loads(next(iter(cm["data"].values())))["templating"]["list"]
        (tier,) = [v for v in variables if v["name"] == "strong_tier"]
        assert tier["current"]["text"] == tier["current"]["value"]
        return str(tier["current"]["value"])

    registry = yaml.safe_load((CHART / "files" / "models.yaml").read_text())
    assert strong_tier() == registry["tiers"][-1] == "premium"
    names = dict(zip(registry["tiers"], ["tiny", "small", "large", "frontier"], strict=True))
    registry["tiers"] = [names[tier] for tier in registry["tiers"]]
    for model in registry["models"]:
        model["tier"] = names[model["tier"]]
    assert strong_tier("--set-json", f"registry.models={json.dumps(registry)}") == "frontier"


def test_minimal_values_drop_the_optional_objects() -> None:
    docs = render("-f", str(CHART / "ci" / "minimal-values.yaml"))
    kinds = {d["kind"] for d in docs}
    assert kinds.isdisjoint({"HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"})
    assert by_kind(docs, "Deployment").keys() == {name(s) for s in SERVICES}
    assert by_kind(docs, "StatefulSet") == {}
    assert all(by_kind(docs, "Deployment")[name(s)]["spec"]["replicas"] == 1 for s in SERVICES)
    assert "ROUTER_REDIS_URL" not in env(docs, "router")


def test_production_values() -> None:
    docs = render("-f", str(CHART / "ci" / "production-values.yaml"))
    assert env(docs, "router")["ROUTER_REDIS_URL"] == {"secretKeyRef": {"name": "llm-redis", "key": "url"}}
    assert env(docs, "edge")["EDGE_BATCH_REDIS_URL"] == {"secretKeyRef": {"name": "llm-redis", "key": "batches-url"}}
    assert "EDGE_BATCH_REDIS_URL" not in env(docs, "router")
    assert by_kind(docs, "StatefulSet") == {}  # external money and batch Redis
    assert name("redis-cache") not in by_kind(docs, "Deployment")
    assert "@sha256:" in container(docs, "edge")["image"]
    assert env(docs, "edge")["EDGE_API_KEYS_FILE"] == "/var/run/secrets/llmrouter/edge/api-keys"
    (ingress,) = by_kind(docs, "Ingress").values()
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": name("edge"), "port": {"name": "http"}}
    # nginx's own body limit (1 MB unless raised) must let the largest batch upload through to the edge.
    body_limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    largest_upload = EdgeSettings.model_fields["batch_max_file_bytes"].default
    assert body_limit.endswith("m") and int(body_limit[:-1]) * 2**20 > largest_upload
    peers = _callers(by_kind(docs, "NetworkPolicy")[name("edge")])
    assert peers is not None
    (peer,) = peers
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}


def test_a_shared_router_without_redis_is_refused() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", "redis.money.enabled=false")
    assert "more than one replica needs redis" in failure.value.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("edge.porrt=1", "additional properties 'porrt' not allowed"),
        ("image.tag=latest", "/image/tag"),
        ("monitoring.prometheusRule.hourlyBudgetUsd=0", "hourlyBudgetUsd"),
        ("redis.money.url=http://redis:6379", "/redis/money"),
        ("redisUrl=redis://x", "additional properties 'redisUrl' not allowed"),  # a typo at the top level
        ("redis.cache.maxmemory=lots", "/redis/cache/maxmemory"),
        ("redis.batches.maxmemory=lots", "/redis/batches/maxmemory"),
        ("edge.batchRedis=elsewhere", "/edge/batchRedis"),
        ("router.ledgerTrim.timeZone=Local", "/router/ledgerTrim/timeZone"),  # the controller's: what it replaces
        ("router.ledgerTrim.timeZone=Europe Paris", "/router/ledgerTrim/timeZone"),
        ("router.ledgerTrim.timeZone=", "/router/ledgerTrim/timeZone"),
        ("router.ledgerTrim.schedule=CRON_TZ=Europe/Paris 17 3 * * *", "/router/ledgerTrim/schedule"),
        ("router.ledgerTrim.schedule=@fortnightly", "/router/ledgerTrim/schedule"),  # no such macro
        ("router.ledgerTrim.schedule=17 3 * * * *", "/router/ledgerTrim/schedule"),  # six fields: seconds
        ("router.ledgerTrim.schedule=daily", "/router/ledgerTrim/schedule"),
        # A secretKeyRef needs both (Kubernetes refuses an empty key): a name without its key, a key without its name.
        ("router.ledgerDsnSecret.name=llm-ledger", "/router/ledgerDsnSecret/key"),
        ("router.ledgerDsnSecret.key=dsn", "/router/ledgerDsnSecret/name"),
        ("router.endUserHashSecret.name=llm-end-user-hash", "/router/endUserHashSecret/key"),
        ("router.endUserHashSecret.key=secret", "/router/endUserHashSecret/name"),
        ("router.sqliteLedger.sizeLimitMiB=63", "/router/sqliteLedger/sizeLimitMiB"),  # no room past the bound
        ("redis.money.urlSecret.name=money-redis", "/redis/money/urlSecret/key"),
        ("redis.cache.urlSecret.key=url", "/redis/cache/urlSecret/name"),
        ("redis.auth.existingSecret=Redis_Auth", "/redis/auth/existingSecret"),  # not a Secret name
        ("redis.auth.existingSecretKeys.money=", "/redis/auth/existingSecretKeys/money"),
        ("classifier.startupProbeTimeoutSeconds=0", "/classifier/startupProbeTimeoutSeconds"),
        ("edge.startupProbeTimeoutSeconds=2.5", "/edge/startupProbeTimeoutSeconds"),  # the kubelet takes whole seconds
        ("router.startupProbeTimeoutSeconds=null", "missing property 'startupProbeTimeoutSeconds'"),  # the 1 s default
        # Kubernetes takes only strings as annotations (an unquoted number in YAML is one), a boolean as a flag
        ("podAnnotations.prometheus\\.io/port=9104", "at '/podAnnotations/prometheus.io~1port': got number"),
        ("serviceAccount.annotations.a=1", "at '/serviceAccount/annotations/a': got number"),
        (
            "monitoring.dashboard.annotations.grafana_folder=true",
            "at '/monitoring/dashboard/annotations/grafana_folder'",
        ),
        ("serviceAccount.create=no", "at '/serviceAccount/create': got string, want boolean"),  # "no" is truthy
        ("fullnameOverride=LLM", "at '/fullnameOverride'"),  # no Service may be named so
        ("nameOverride=Router", "at '/nameOverride'"),
        # the pods' placement and pulls, as the API server takes them
        ("nodeSelector.gpu=true", "at '/nodeSelector/gpu': got boolean, want string"),
        ("imagePullSecrets[0]=regcred", "at '/imagePullSecrets/0': got string, want object"),  # [{name: regcred}]
        ("tolerations[0].operator=exists", "at '/tolerations/0/operator'"),
        ("topologySpread[0].whenUnsatisfiable=scheduleAnyway", "at '/topologySpread/0/whenUnsatisfiable'"),
    ],
)
def test_values_schema_refuses_mistakes(setting: str, complaint: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", setting)
    assert complaint in failure.value.stderr


# The edge's deadline on a completion, past the router's own limit (tests/edge/test_request_deadline_defaults.py).
LONGEST_REQUEST_S = EdgeSettings.model_fields["request_timeout_s"].default


@pytest.mark.parametrize("svc", SERVICES)
def test_shutdown_lets_the_longest_request_finish(docs: list[dict], svc: str) -> None:
    pod = by_kind(docs, "Deployment")[name(svc)]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(env(docs, svc)[f"{documented_ports()[svc][0]}_GRACE_SECONDS"])
    assert sleep > 0
    assert drain > LONGEST_REQUEST_S
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_the_kill_leaves_the_router_its_shutdown_after_the_drain() -> None:
    """Past its drain the router lets its last charges reach the money store (a Redis call, up to its socket timeout,
    before the outbox takes the charge), replays its outbox once more (FINAL_REPLAY_S: the outbox is deleted with the
    pod) and stops its SQL sink's round in flight (SINK_STOP_GRACE_S): the kubelet's kill at
    terminationGracePeriodSeconds must leave it that long after preStopSleepSeconds + drainSeconds, or a charge is cut
    between its pending record and its settlement, or left in the outbox (the reconciler then charges its whole
    hold)."""
    from services.ledger.service import SINK_STOP_GRACE_S
    from services.router.store.redis_store import RedisStore
    from services.router.upkeep import FINAL_REPLAY_S

    store_call_s = RedisStore("redis://127.0.0.1:1/0").redis.connection_pool.connection_kwargs["socket_timeout"]
    needed = math.ceil(store_call_s + FINAL_REPLAY_S + SINK_STOP_GRACE_S)
    drained = VALUES["preStopSleepSeconds"] + VALUES["drainSeconds"]
    assert VALUES["terminationGracePeriodSeconds"] >= drained + needed
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", f"terminationGracePeriodSeconds={drained + needed - 1}")
    assert "terminationGracePeriodSeconds" in failure.value.stderr
    assert f"+ {needed} s" in failure.value.stderr  # the margin is named
    assert render("--set", f"terminationGracePeriodSeconds={drained + needed}")


def test_grpc_connection_age_grace_outlasts_the_longest_request() -> None:
    from llmrouter.server import SERVER_OPTIONS

    options: dict[str, Any] = dict(SERVER_OPTIONS)
    assert options["grpc.max_connection_age_grace_ms"] > LONGEST_REQUEST_S * 1000
    assert options["grpc.max_connection_age_ms"] <= 60_000  # new pods get calls within a minute


def test_topology_spread_is_kept_with_affinity() -> None:
    required = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["llm"]}]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    docs = render("--set-json", f"affinity={json.dumps(affinity)}")
    for svc in SERVICES:
        pod = by_kind(docs, "Deployment")[name(svc)]["spec"]["template"]["spec"]
        assert pod["affinity"]["nodeAffinity"]
        keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
        assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        for c in pod["topologySpreadConstraints"]:
            assert c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == svc


def test_registry_and_key_changes_roll_the_pods() -> None:
    def annotations(*args: str) -> dict[str, dict]:
        deployments = by_kind(render(*args), "Deployment")
        return {svc: deployments[name(svc)]["spec"]["template"]["metadata"]["annotations"] for svc in SERVICES}

    registry = yaml.safe_load((CHART / "files" / "models.yaml").read_text())
    registry["models"][0]["output_usd_per_mtok"] = "99"  # a price change
    before = annotations()
    after = annotations("--set-json", f"registry.models={json.dumps(registry)}")
    for svc in ("router", "providers"):
        assert before[svc]["checksum/registry"] != after[svc]["checksum/registry"]
    assert "checksum/api-keys" in before["edge"]  # the Secret's content, read by helm upgrade (lookup)
    assert "checksum/api-keys" not in before["providers"]  # they re-read their keys in place


def test_registry_overridden_from_values() -> None:
    from llmrouter.registry import Registry

    docs = render("-f", str(CHART / "ci" / "production-values.yaml"))
    (cm,) = [c for c in by_kind(docs, "ConfigMap").values() if "models.yaml" in c["data"]]
    registry = Registry.model_validate(yaml.safe_load(cm["data"]["models.yaml"]))
    assert [m.name for m in registry.models] == ["gpt-4o-mini", "gpt-4o"]


@pytest.mark.parametrize("role", ["money", "batches"])
def test_money_and_batch_redis_never_evict_and_persist(docs: list[dict], role: str) -> None:
    """Batches too: an eviction could drop the set of batches to resume (one stuck in_progress), a lease (two
    edges run one batch), paid-for results or a running batch's input; a restart must keep every batch."""
    redis = by_kind(docs, "StatefulSet")[name(f"redis-{role}")]
    c = redis_containers(docs, role)["redis"]
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert args["--maxmemory-policy"] == "noeviction"
    assert args["--appendonly"] == "yes" and args["--appendfsync"] == "everysec"
    assert args["--maxmemory"] == VALUES["redis"][role]["maxmemory"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == VALUES["redis"][role]["persistence"]["size"]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]


def _bytes(size: str) -> int:
    """A Redis maxmemory ("2gb") or a Kubernetes quantity ("3Gi") in bytes."""
    units = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    unit = next(u for u in units if size.endswith(u))
    return int(size.removesuffix(unit)) * units[unit]


def test_batch_redis_is_sized_for_the_files_kept() -> None:
    """maxmemory holds several of the largest uploads; the pod room for the AOF rewrite's fork; the volume for the
    AOF and its rewrite."""
    batches = VALUES["redis"]["batches"]
    maxmemory = _bytes(batches["maxmemory"])
    assert maxmemory >= 10 * EdgeSettings.model_fields["batch_max_file_bytes"].default
    assert _bytes(batches["resources"]["limits"]["memory"]) >= 1.5 * maxmemory
    assert _bytes(batches["persistence"]["size"]) >= 2 * maxmemory


def test_money_redis_holds_a_request_a_second_with_the_charts_trim() -> None:
    """At the bytes a request keeps that deploy/README.md measured (request-id markers a day, a ledger entry until
    trimmed), 1 request/s fits maxmemory with 30% headroom when the chart trims the ledger: retentionDays kept, a
    day more just before the daily run. The default 1gb held ~6 days, far short of the 90 then kept. The pod has
    room for the AOF rewrite's fork, the volume for the AOF and its rewrite."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    markers, entry = (
        int(re.search(rf"\*\*([\d,]+) bytes\*\* of {what}", readme)[1].replace(",", ""))  # type: ignore[index]
        for what in ("request-id markers", "ledger entry")
    )
    money = VALUES["redis"]["money"]
    days_held = VALUES["router"]["ledgerTrim"]["retentionDays"] + 1
    maxmemory = _bytes(money["maxmemory"])
    assert 1.3 * 86_400 * (markers + days_held * entry) <= maxmemory
    assert _bytes(money["resources"]["limits"]["memory"]) >= 1.5 * maxmemory
    assert _bytes(money["persistence"]["size"]) >= 2 * maxmemory


def test_cache_redis_evicts_least_recently_used(docs: list[dict]) -> None:
    c = redis_containers(docs, "cache")["redis"]
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert args["--maxmemory-policy"] == "allkeys-lru"
    assert args["--maxmemory"] == VALUES["redis"]["cache"]["maxmemory"]
    assert args["--appendonly"] == "no"


def test_edge_requires_keys_unless_anonymous_is_chosen() -> None:
    assert env(render(), "edge")["EDGE_ALLOW_ANONYMOUS"] == "false"
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", "edge.apiKeys.existingSecret=")
    assert "edge.allowAnonymous=true" in failure.value.stderr
    anonymous = render("--set", "edge.apiKeys.existingSecret=", "--set", "edge.allowAnonymous=true")
    assert env(anonymous, "edge")["EDGE_ALLOW_ANONYMOUS"] == "true"
    assert "EDGE_API_KEYS_FILE" not in env(anonymous, "edge")


def test_hpa_on_requests_in_flight() -> None:
    docs = render("--set", "autoscaling.inflight.enabled=true")
    for svc in SERVICES:
        cpu, inflight = by_kind(docs, "HorizontalPodAutoscaler")[name(svc)]["spec"]["metrics"]
        assert cpu["resource"]["name"] == "cpu"
        assert inflight["pods"]["metric"] == {"name": "llmrouter_inflight_requests"}
        assert inflight["pods"]["target"]["averageValue"] == str(VALUES[svc]["autoscaling"]["targetInflightPerPod"])


@pytest.mark.parametrize("role", ["cache", "batches"])
def test_egress_with_an_external_redis_needs_its_peers(role: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", "networkPolicy.egress.enabled=true", "--set", f"redis.{role}.url=redis://r.example:6379/0")
    assert "networkPolicy.egress.redisTo" in failure.value.stderr


def _egress_ports(policy: dict) -> dict[int, list[dict]]:
    """Port -> the peers every egress rule allows on it."""
    ports: dict[int, list[dict]] = {}
    for rule in policy["spec"]["egress"]:
        for port in rule["ports"]:
            ports.setdefault(port["port"], []).extend(rule["to"])
    return ports


def test_egress_reaches_dns_and_callees_only() -> None:
    policies = by_kind(render("--set", "networkPolicy.egress.enabled=true"), "NetworkPolicy")
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    component = {
        svc: {
            port: sorted(
                peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                for peer in to
                if "podSelector" in peer and "namespaceSelector" not in peer
            )
            for port, to in _egress_ports(policies[name(svc)]).items()
        }
        for svc in SERVICES
    }
    assert component["edge"] == {53: [], 50053: ["router"], 6379: ["redis-batches"]}
    redis = ["redis-cache", "redis-money"]
    assert component["router"] == {53: [], 50051: ["classifier"], 50052: ["providers"], 6379: redis}
    assert component["classifier"] == {53: []}
    assert component["providers"] == {53: [], 443: []}
    (api,) = _egress_ports(policies[name("providers")])[443]
    assert api["ipBlock"]["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in api["ipBlock"]["except"]
    for store in ("redis-money", "redis-cache", "redis-batches"):
        assert policies[name(store)]["spec"]["egress"] == [], store


def test_egress_lets_the_router_reach_its_budget_webhook() -> None:
    """The router POSTs budget notifications to router.env's ROUTER_BUDGET_ALERT_WEBHOOK_URL: with egress policies on
    it needs a rule to that address, on the URL's port, or every notification fails (logged, tried again each round)
    and none is ever sent."""
    on = ("--set", "networkPolicy.egress.enabled=true")
    hook = "router.env.ROUTER_BUDGET_ALERT_WEBHOOK_URL"
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*on, "--set", f"{hook}=https://hooks.example.com/budget")
    assert "networkPolicy.egress.webhookTo" in failure.value.stderr
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    to = ("--set-json", f"networkPolicy.egress.webhookTo={json.dumps(peers)}")
    for url, port in (("https://hooks.example.com/budget", 443), ("http://alerts.ops.svc:8080/budget", 8080)):
        docs = render(*on, *to, "--set", f"{hook}={url}")
        assert _egress_ports(by_kind(docs, "NetworkPolicy")[name("router")])[port] == peers, url
    assert 443 not in _egress_ports(by_kind(render(*on, *to), "NetworkPolicy")[name("router")])  # no webhook, no rule


def test_egress_lets_the_providers_reach_each_registry_provider_on_its_port() -> None:
    """With egress policies on, the providers reach the LLM APIs (networkPolicy.egress.providersTo) on the ports of
    the registry's base_urls: an OpenAI-compatible server of one's own on another port than 443 (vLLM's 8000) would
    otherwise be refused every call, whatever providersTo allows."""
    registry = yaml.safe_load((CHART / "files" / "models.yaml").read_text())
    registry["providers"]["vllm"] = {"kind": "openai", "base_url": "http://vllm.inference.svc:8000/v1"}
    registry["providers"]["gateway"] = {"kind": "openai", "base_url": "http://llm-gateway.example.com/v1"}
    on = ("--set", "networkPolicy.egress.enabled=true")
    docs = render(*on, "--set-json", f"registry.models={json.dumps(registry)}")
    egress = _egress_ports(by_kind(docs, "NetworkPolicy")[name("providers")])
    providers_to = VALUES["networkPolicy"]["egress"]["providersTo"]
    assert egress == {53: egress[53], 80: providers_to, 443: providers_to, 8000: providers_to}
    shipped = _egress_ports(by_kind(render(*on), "NetworkPolicy")[name("providers")])  # every base_url on 443
    assert shipped.keys() == {53, 443}


def test_egress_to_an_external_redis() -> None:
    """ci/production-values.yaml: the money and batch Redis' URLs in a Secret, which the chart cannot read, are reached
    on networkPolicy.egress.redisPort (6380); the cache's URL in values names its own port (6379), which the router
    must reach too, or every cache read and write fails."""
    docs = render("-f", str(CHART / "ci" / "production-values.yaml"))
    peers = [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    router = _egress_ports(by_kind(docs, "NetworkPolicy")[name("router")])
    assert router[6380] == peers  # money (urlSecret)
    assert router[6379] == peers  # cache: redis://llm-cache.redis.svc:6379/0
    edge = _egress_ports(by_kind(docs, "NetworkPolicy")[name("edge")])
    assert edge[6380] == peers  # batches (urlSecret)
    assert 6379 not in edge


@pytest.mark.parametrize(
    ("url", "ports"),
    [
        ("redis://money.example/0", {6379}),  # no port: Redis' own
        ("rediss://:secret@money.example:6390/0", {6390}),
        ("redis+cluster://node-a:7000,node-b:7001,[fd00::1]:7002", {7000, 7001, 7002}),  # each node's
    ],
)
def test_egress_reaches_a_redis_given_by_url_on_the_urls_ports(url: str, ports: set[int]) -> None:
    """A money Redis in redis.money.url: the router, the ledger-trim CronJob and the ledger sink reach it on the ports
    its URL names, not on networkPolicy.egress.redisPort (for a URL in a Secret), which let none of their calls out."""
    peers = [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    docs = render(
        "--set-json", f"redis.money.url={json.dumps(url)}",
        "--set", "networkPolicy.egress.enabled=true",
        "--set-json", f"networkPolicy.egress.redisTo={json.dumps(peers)}",
        "--set", "networkPolicy.egress.redisPort=6400",
        "--set", "router.ledgerDsnSecret.name=llm-ledger,router.ledgerDsnSecret.key=dsn",
        "--set-json", 'networkPolicy.egress.ledgerTo=[{"ipBlock": {"cidr": "10.30.0.5/32"}}]',
        "--set", "router.ledgerSink.enabled=true",
    )  # fmt: skip
    policies = by_kind(docs, "NetworkPolicy")
    for component in ("router", "ledger-trim", "ledger-sink"):
        egress = _egress_ports(policies[name(component)])
        for port in ports:
            assert peers[0] in egress.get(port, []), (component, port)
        assert 6400 not in egress, component


def test_external_batch_redis_alone_opens_the_edge_only() -> None:
    """The router never calls the batch Redis: an external one alone gives the edge, not the router, its peers."""
    docs = render(
        "--set", "redis.batches.url=redis://batches.example:6379/0",
        "--set", "networkPolicy.egress.enabled=true",
        "--set", "networkPolicy.egress.redisTo[0].ipBlock.cidr=10.40.0.0/24",
    )  # fmt: skip
    policies = by_kind(docs, "NetworkPolicy")
    assert _egress_ports(policies[name("edge")])[6379] == [{"ipBlock": {"cidr": "10.40.0.0/24"}}]
    router = _egress_ports(policies[name("router")])[6379]
    assert all("ipBlock" not in peer for peer in router)  # the in-chart money and cache only
    assert env(docs, "edge")["EDGE_BATCH_REDIS_URL"] == "redis://batches.example:6379/0"
    assert name("redis-batches") not in by_kind(docs, "StatefulSet") | policies


def test_a_changed_key_secret_rolls_its_pods(tmp_path: Path) -> None:
    """helm upgrade reads the edge's key Secret (lookup, against a Kubernetes API on loopback): new content, new
    checksum, so the edge, which reads its keys at start, rolls; the others keep theirs. The providers re-read their
    key files in place (tests/providers/test_key_reload.py): a changed provider key rolls nothing."""

    def checksums(api: KubeApi) -> dict[str, dict[str, str]]:
        deployments = by_kind(render(monitoring_crds=False, kubeconfig=api.kubeconfig), "Deployment")
        return {svc: deployments[name(svc)]["spec"]["template"]["metadata"]["annotations"] for svc in SERVICES}

    def key_secret(secret: str, data: dict[str, str]) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": "llm"}, "data": data}

    with KubeApi(tmp_path) as api:
        api.store(key_secret(VALUES["providers"]["apiKeys"]["existingSecret"], {"OPENAI_API_KEY": "c2stb2xk"}))
        api.store(key_secret(VALUES["edge"]["apiKeys"]["existingSecret"], {"api-keys": "YWNtZSAwMA=="}))
        before = checksums(api)
        api.store(key_secret(VALUES["providers"]["apiKeys"]["existingSecret"], {"OPENAI_API_KEY": "c2stbmV3"}))
        provider_key_changed = checksums(api)
        api.store(key_secret(VALUES["edge"]["apiKeys"]["existingSecret"], {"api-keys": "YWNtZSAwMQ=="}))
        after = checksums(api)
    assert all("checksum/api-keys" not in a for svc, a in after.items() if svc != "edge")
    assert provider_key_changed["edge"]["checksum/api-keys"] == before["edge"]["checksum/api-keys"]
    assert after["edge"]["checksum/api-keys"] != before["edge"]["checksum/api-keys"]
    assert {svc: a.get("checksum/registry") for svc, a in after.items()} == {
        svc: a.get("checksum/registry") for svc, a in before.items()
    }


def test_pod_annotations_are_a_map_and_merged_with_the_checksums() -> None:
    """A pod with no checksum to carry renders no `annotations: null`; values' podAnnotations reach every pod."""
    plain = by_kind(render(cert_manager=True), "Deployment")
    assert "annotations" not in plain[name("classifier")]["spec"]["template"]["metadata"]
    docs = by_kind(render("--set", "podAnnotations.team=llm", cert_manager=True), "Deployment")
    for svc in SERVICES:
        assert docs[name(svc)]["spec"]["template"]["metadata"]["annotations"]["team"] == "llm"
    assert "checksum/registry" in docs[name("router")]["spec"]["template"]["metadata"]["annotations"]


def test_edge_replicas_share_their_batches_through_redis() -> None:
    """Batches live in EDGE_BATCH_REDIS_URL, or in each edge process without it: there a file uploaded to one
    replica is not found by the batch created on another, and a pod the autoscaler removes takes its batches.
    By default their own Redis (redis.batches), which only the edge reaches."""
    docs = render("--set", "networkPolicy.egress.enabled=true")
    assert (
        env(docs, "edge")["EDGE_BATCH_REDIS_URL"]
        == f"redis://:$(REDIS_BATCHES_PASSWORD)@{name('redis-batches')}:6379/0"
    )
    assert "redis-batches" not in json.dumps(env(docs, "router"))
    policies = by_kind(docs, "NetworkPolicy")
    (to_batches,) = _egress_ports(policies[name("edge")])[6379]
    assert to_batches["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis-batches"
    # cache and money stay choices: that role's Redis then takes the edge too, and no batch Redis is run.
    for role in ("cache", "money"):
        shared = render("--set", f"edge.batchRedis={role}")
        url = f"redis://:$(REDIS_{role.upper()}_PASSWORD)@{name(f'redis-{role}')}:6379/0"
        assert env(shared, "edge")["EDGE_BATCH_REDIS_URL"] == url
        rule, _ = by_kind(shared, "NetworkPolicy")[name(f"redis-{role}")]["spec"][
            "ingress"
        ]  # the Redis', the exporter's
        callers = sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"])
        assert callers == ["edge", "router"], role
        assert name("redis-batches") not in by_kind(shared, "StatefulSet") | by_kind(shared, "NetworkPolicy")
    # An external batch Redis from a Secret: the edge reads it, and checkov knows the Secret is only referenced.
    external = render("--set", "redis.batches.urlSecret.name=llm-batches", "--set", "redis.batches.urlSecret.key=url")
    assert env(external, "edge")["EDGE_BATCH_REDIS_URL"] == {"secretKeyRef": {"name": "llm-batches", "key": "url"}}
    skips = by_kind(external, "Deployment")[name("edge")]["metadata"]["annotations"].values()
    assert any(skip.startswith("CKV_K8S_35=") for skip in skips)
    # Without a batch Redis only a single edge keeps its batches whole.
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", "edge.batchRedis=")
    assert "edge: more than one replica needs a batch Redis" in failure.value.stderr
    single = render(
        "--set", "redis.batches.enabled=false", "--set", "edge.replicas=1", "--set", "edge.autoscaling.enabled=false"
    )
    assert "EDGE_BATCH_REDIS_URL" not in env(single, "edge")


@pytest.mark.parametrize(("role", "warning"), [("cache", "eviction may drop"), ("money", "can fill")])
def test_notes_warn_of_batches_in_a_shared_redis(role: str, warning: str) -> None:
    notes = subprocess.run(
        [tool("helm"), "install", "llm", str(CHART), "--dry-run", "--set", f"edge.batchRedis={role}"],
        check=True, capture_output=True, text=True,
    ).stdout.split("NOTES:", 1)[1]  # fmt: skip
    assert warning in notes and "edge.batchRedis=batches" in notes
    default = subprocess.run(
        [tool("helm"), "install", "llm", str(CHART), "--dry-run"], check=True, capture_output=True, text=True
    ).stdout.split("NOTES:", 1)[1]
    assert "edge.batchRedis" not in default


def test_the_edges_memory_limit_fits_its_batch_limits(docs: list[dict]) -> None:
    """deploy/README.md, "Edge memory": ~80 MB serving plus (uploads + running batches + 3) x the largest file. The
    limit was 384Mi against 4 uploads and every active batch of up to 100 MiB each, held ~5x over: one upload
    took the edge past it."""
    settings = env(docs, "edge")
    file_bytes = int(settings["EDGE_BATCH_MAX_FILE_BYTES"])
    held = int(settings["EDGE_BATCH_MAX_CONCURRENT_UPLOADS"]) + int(settings["EDGE_BATCH_MAX_RUNNING"]) + 3
    limit = container(docs, "edge")["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") or limit.endswith("Gi"), limit
    limit_bytes = int(limit[:-2]) * 1024 ** (2 if limit.endswith("Mi") else 3)
    assert limit_bytes >= 80 * 1024**2 + held * file_bytes, (limit, settings)
    batch_limits = {k[5:].lower(): v for k, v in settings.items() if k.startswith("EDGE_BATCH_MAX")}
    assert EdgeSettings(**batch_limits)  # type: ignore[arg-type]  # the chart's strings, parsed as from the environment


@pytest.mark.parametrize("scheme", ["redis", "rediss", "redis+cluster", "rediss+cluster"])
def test_redis_urls_take_every_scheme_the_services_open(scheme: str, tmp_path: Path) -> None:
    """values.yaml and docs/capacity.md point redis.*.url at a Redis Cluster (llmrouter/redis_connect.py)."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"redis": {"money": {"url": f"{scheme}://node-a:6379,node-b:6379"}}}))
    docs = render("-f", str(values))
    assert env(docs, "router")["ROUTER_REDIS_URL"] == f"{scheme}://node-a:6379,node-b:6379"


def test_latency_slo_is_under_the_edge_histograms_top_bucket() -> None:
    """histogram_quantile answers at most the highest finite bucket, so an SLO at or above it would keep
    LLMRouterEdgeLatencyOverSLO from ever firing, however slow the edge."""
    from services.edge.app import HTTP_SECONDS

    top = max(b for b in HTTP_SECONDS._upper_bounds if b != float("inf"))
    render("--set", f"monitoring.prometheusRule.edgeP99SloSeconds={top - 1:g}")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set", f"monitoring.prometheusRule.edgeP99SloSeconds={top:g}")
    assert "edgeP99SloSeconds" in failure.value.stderr


def test_router_ledger_in_postgresql_from_a_secret() -> None:
    """Without ROUTER_LEDGER_SQL_DSN each router pod keeps its own SQLite ledger on /tmp: with two replicas each
    holds a part of it (Stats sees half), and the pod's deletion loses it. The DSN holds a password: a Secret."""
    dsn = ("--set", "router.ledgerDsnSecret.name=llm-ledger", "--set", "router.ledgerDsnSecret.key=dsn")
    assert env(render(*dsn), "router")["ROUTER_LEDGER_SQL_DSN"] == {
        "secretKeyRef": {"name": "llm-ledger", "key": "dsn"}
    }
    assert "ROUTER_LEDGER_SQL_DSN" not in env(render(), "router")
    egress = ("--set", "networkPolicy.egress.enabled=true")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*dsn, *egress)
    assert "networkPolicy.egress.ledgerTo" in failure.value.stderr
    docs = render(*dsn, *egress, "--set", "networkPolicy.egress.ledgerTo[0].ipBlock.cidr=10.30.0.5/32")
    router = _egress_ports(by_kind(docs, "NetworkPolicy")[name("router")])
    assert router[5432] == [{"ipBlock": {"cidr": "10.30.0.5/32"}}]


def test_router_end_user_hash_secret_from_a_secret() -> None:
    """Without ROUTER_END_USER_HASH_SECRET the end-user ids sent to providers are keyed by the tenant's name alone:
    whoever knows it can confirm a guessed id. The chart gives the router the secret from a Secret, referenced only,
    and warns when there is none."""
    secret = (
        "--set",
        "router.endUserHashSecret.name=llm-end-user-hash",
        "--set",
        "router.endUserHashSecret.key=secret",
    )
    docs = render(*secret)
    assert env(docs, "router")["ROUTER_END_USER_HASH_SECRET"] == {
        "secretKeyRef": {"name": "llm-end-user-hash", "key": "secret"}
    }
    skips = by_kind(docs, "Deployment")[name("router")]["metadata"]["annotations"].values()
    assert any(skip.startswith("CKV_K8S_35=") for skip in skips)
    assert all("ROUTER_END_USER_HASH_SECRET" not in env(docs, svc) for svc in SERVICES if svc != "router")
    # No Secret at all: Redis by plain URLs (the in-chart ones' passwords are Secrets too).
    plain = render("--set", "redis.money.url=redis://money:6379/0", "--set", "redis.cache.url=redis://cache:6379/0")
    assert "ROUTER_END_USER_HASH_SECRET" not in env(plain, "router")
    plain_skips = by_kind(plain, "Deployment")[name("router")]["metadata"]["annotations"].values()
    assert not any(skip.startswith("CKV_K8S_35=") for skip in plain_skips)
    assert "no router.endUserHashSecret" in _notes("--set", "edge.allowAnonymous=true")
    assert "no router.endUserHashSecret" not in _notes(*secret, "--set", "edge.allowAnonymous=true")


def test_router_budget_webhook_url_from_a_secret() -> None:
    """The budget alert webhook's URL is a credential (a Slack or PagerDuty URL carries its token; the router holds it
    as a secret, never shown): router.budgetWebhookSecret gives it from a Secret, referenced only, where router.env
    would write it into the pod spec. With egress on, the router reaches it on networkPolicy.egress.webhookPort."""
    secret = ("--set", "router.budgetWebhookSecret.name=llm-budget-hook", "--set", "router.budgetWebhookSecret.key=url")
    docs = render(*secret)
    assert env(docs, "router")["ROUTER_BUDGET_ALERT_WEBHOOK_URL"] == {
        "secretKeyRef": {"name": "llm-budget-hook", "key": "url"}
    }
    assert all("ROUTER_BUDGET_ALERT_WEBHOOK_URL" not in env(docs, svc) for svc in SERVICES if svc != "router")
    assert "ROUTER_BUDGET_ALERT_WEBHOOK_URL" not in env(render(), "router")
    with pytest.raises(subprocess.CalledProcessError) as failure:  # one way at a time
        render(*secret, "--set", "router.env.ROUTER_BUDGET_ALERT_WEBHOOK_URL=https://hooks.example.com/x")
    assert "router.env.ROUTER_BUDGET_ALERT_WEBHOOK_URL" in failure.value.stderr
    on = ("--set", "networkPolicy.egress.enabled=true")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*secret, *on)
    assert "networkPolicy.egress.webhookTo" in failure.value.stderr
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    to = ("--set-json", f"networkPolicy.egress.webhookTo={json.dumps(peers)}")
    for port in (443, 8443):
        docs = render(*secret, *on, *to, "--set", f"networkPolicy.egress.webhookPort={port}")
        assert _egress_ports(by_kind(docs, "NetworkPolicy")[name("router")])[port] == peers


LEDGER_DSN = ("--set", "router.ledgerDsnSecret.name=llm-ledger", "--set", "router.ledgerDsnSecret.key=dsn")


def _sqlite_ledger(docs: list[dict]) -> tuple[dict[str, str], dict | None]:
    """The router's ROUTER_LEDGER_SQL_* settings, and the volume its SQLite file is on (None: no file)."""
    settings = {k: v for k, v in env(docs, "router").items() if k.startswith("ROUTER_LEDGER_SQL_")}
    if "ROUTER_LEDGER_SQL_PATH" not in settings:
        return settings, None
    pod = by_kind(docs, "Deployment")[name("router")]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container(docs, "router")["volumeMounts"]}
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[str(Path(settings["ROUTER_LEDGER_SQL_PATH"]).parent)]]
    return settings, volume


@pytest.mark.parametrize("size", [None, 64])  # the default, and the smallest volume the schema allows
def test_the_default_sqlite_ledger_is_bounded_below_its_volume(size: int | None) -> None:
    """Without router.ledgerDsnSecret each router pod's sink copies the ledger into a SQLite file on an emptyDir. Were
    it unbounded, it would pass the volume's sizeLimit, and the kubelet would evict the pod and delete its emptyDirs,
    /tmp with them: the charges the outbox keeps there while the money Redis is away, not yet settled. The file is on
    a volume of its own, bounded below its sizeLimit with room for what passes the bound (its write-ahead log and a
    chunk of rows: services/ledger/db.py), and rows past a retention are deleted."""
    from services.ledger.db import SIZE_CHECK_BYTES, WAL_LIMIT_BYTES
    from services.ledger.settings import LedgerSettings

    settings, volume = _sqlite_ledger(render(*(("--set", f"router.sqliteLedger.sizeLimitMiB={size}") if size else ())))
    assert volume is not None and volume["name"] != "tmp", "the outbox's /tmp is not shared with the ledger"
    bound = int(settings["ROUTER_LEDGER_SQL_MAX_MIB"]) * 2**20
    assert 0 < bound <= _bytes(volume["emptyDir"]["sizeLimit"]) - 2 * (WAL_LIMIT_BYTES + 2 * SIZE_CHECK_BYTES)
    assert float(settings["ROUTER_LEDGER_SQL_RETENTION_DAYS"]) > 0
    for var in settings:
        assert var.removeprefix("ROUTER_").lower() in LedgerSettings.model_fields, var
    # With PostgreSQL there is no file, and no volume for it.
    assert _sqlite_ledger(render(*LEDGER_DSN)) == (
        {"ROUTER_LEDGER_SQL_DSN": {"secretKeyRef": {"name": "llm-ledger", "key": "dsn"}}},
        None,
    )
    router = by_kind(render(*LEDGER_DSN), "Deployment")[name("router")]["spec"]["template"]["spec"]
    assert [v["name"] for v in router["volumes"] if "emptyDir" in v] == ["tmp"]
    assert "SQLite file per router pod, bounded" in _notes("--set", "edge.allowAnonymous=true")
    assert "SQLite file per router pod" not in _notes(*LEDGER_DSN, "--set", "edge.allowAnonymous=true")


def _trim_pod(docs: list[dict]) -> dict:
    return by_kind(docs, "CronJob")[name("ledger-trim")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _notes(*args: str) -> str:
    return subprocess.run(
        [tool("helm"), "install", "llm", str(CHART), "--dry-run", *args], check=True, capture_output=True, text=True
    ).stdout.split("NOTES:", 1)[1]


def test_notes_warn_of_alerts_without_the_charts_scraping() -> None:
    """The PrometheusRule's alerts select the targets by the job (llmrouter-<service>) and release labels the chart's
    ServiceMonitor gives them: with it off and the rule on, LLMRouter<Service>Down (absent(up{job=...})) fire from the
    first minutes and every other alert stays silent, unless the operator's own scraping gives those labels."""
    off = ("--set", "monitoring.serviceMonitor.enabled=false", "--set", "edge.allowAnonymous=true")
    notes = _notes(*off)
    assert "monitoring.serviceMonitor.enabled=false" in notes and "LLMRouterEdgeDown" in notes
    for quiet in ((), ("--set", "monitoring.prometheusRule.enabled=false")):
        assert "serviceMonitor" not in _notes(*off[: 2 * bool(quiet)], *quiet, "--set", "edge.allowAnonymous=true")


def test_the_ledger_is_trimmed_daily_where_the_sql_sink_keeps_it() -> None:
    """The money Redis (noeviction) keeps a ledger entry per request until trimmed: untrimmed, the default 2gb is
    full in about 2 days at 5 requests/s, and then refuses every request. With the ledger in PostgreSQL a CronJob
    trims daily what the sink copied, with the router's image, Redis URL, router.env and locked-down pod."""
    from services.ledger.settings import LedgerSettings

    docs = render(*LEDGER_DSN, "--set", "router.ledgerTrim.retentionDays=30")
    (cron,) = by_kind(docs, "CronJob").values()
    assert cron["spec"]["schedule"] == "17 3 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["timeZone"] == "Etc/UTC"  # not the controller manager's zone, whatever it is
    pod = _trim_pod(docs)
    router = by_kind(docs, "Deployment")[name("router")]["spec"]["template"]["spec"]
    (trim,) = pod["containers"]
    assert trim["command"] == ["python", "-m", "services.router.ledger", "trim", "--copied-only"]
    assert trim["image"] == container(docs, "router")["image"]
    trim_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in trim["env"]}
    assert trim_env == {
        "REDIS_MONEY_PASSWORD": env(docs, "router")["REDIS_MONEY_PASSWORD"],
        "ROUTER_REDIS_URL": env(docs, "router")["ROUTER_REDIS_URL"],
        "ROUTER_LEDGER_RETENTION_DAYS": "30",
    }
    for var in set(trim_env) - expanded_only(trim["env"]):  # what it reads: no certificate, DSN or server setting
        assert var.removeprefix("ROUTER_").lower() in LedgerSettings.model_fields, var
    assert pod["securityContext"] == router["securityContext"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["enableServiceLinks"] is False
    assert trim["securityContext"] == container(docs, "router")["securityContext"]
    assert trim["resources"]["requests"] and trim["resources"]["limits"]
    # It reaches the money Redis through the network policies, and nothing reaches it.
    policies = by_kind(docs, "NetworkPolicy")
    peers = _callers(policies[name("redis-money")])
    assert peers is not None
    callers = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers]
    assert callers == ["router", "ledger-trim"]
    assert policies[name("ledger-trim")]["spec"]["ingress"] == []
    egress = (
        "--set",
        "networkPolicy.egress.enabled=true",
        "--set",
        "networkPolicy.egress.ledgerTo[0].ipBlock.cidr=10.30.0.5/32",
    )
    trim_egress = _egress_ports(by_kind(render(*LEDGER_DSN, *egress), "NetworkPolicy")[name("ledger-trim")])
    assert trim_egress.keys() == {53, 6379}
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in trim_egress[6379]] == [
        "redis-money"
    ]
    # An external money Redis from a Secret (production-values.yaml sets the ledger's DSN too).
    production = render("-f", str(CHART / "ci" / "production-values.yaml"))
    (trim,) = _trim_pod(production)["containers"]
    assert {"name": "ROUTER_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "llm-redis", "key": "url"}}} in trim[
        "env"
    ]
    production_egress = _egress_ports(by_kind(production, "NetworkPolicy")[name("ledger-trim")])
    assert production_egress[6380] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    assert "nothing trims the ledger" not in _notes(*LEDGER_DSN, "--set", "edge.allowAnonymous=true")


def test_the_charts_trim_keeps_a_week_and_the_router_is_told_the_same() -> None:
    """With the ledger in PostgreSQL the streams need only outlive the sink's copy: the chart keeps 7 days
    (router.ledgerTrim.retentionDays, which redis.money.maxmemory is sized for), not the code's 90, and gives the
    router the same figure; router.env may not set another. Without the CronJob the chart sets none: the operator's
    own trim reads router.env."""
    docs = render(*LEDGER_DSN)
    (trim,) = _trim_pod(docs)["containers"]
    retention = {e["name"]: e.get("value") for e in trim["env"]}["ROUTER_LEDGER_RETENTION_DAYS"]
    assert retention == "7" == env(docs, "router")["ROUTER_LEDGER_RETENTION_DAYS"]
    with pytest.raises(subprocess.CalledProcessError) as twice:
        render(*LEDGER_DSN, "--set", "router.env.ROUTER_LEDGER_RETENTION_DAYS=30")
    assert "router.env.ROUTER_LEDGER_RETENTION_DAYS: the chart sets it" in twice.value.stderr
    with pytest.raises(subprocess.CalledProcessError) as none:
        render(*LEDGER_DSN, "--set", "router.ledgerTrim.retentionDays=0")
    assert "retentionDays" in none.value.stderr
    assert "ROUTER_LEDGER_RETENTION_DAYS" not in env(render(), "router")
    own = render("--set", "router.env.ROUTER_LEDGER_RETENTION_DAYS=30")
    assert env(own, "router")["ROUTER_LEDGER_RETENTION_DAYS"] == "30"


def test_the_ledger_trim_runs_in_the_time_zone_given() -> None:
    zone = ("--set", "router.ledgerTrim.timeZone=America/Argentina/Buenos_Aires")
    (cron,) = by_kind(render(*LEDGER_DSN, *zone, "--set", "router.ledgerTrim.schedule=0 4 * * *"), "CronJob").values()
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("0 4 * * *", "America/Argentina/Buenos_Aires")


@pytest.mark.parametrize(
    "schedule", ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "*/30 2-4 * * 1-5"]
)
def test_the_ledger_trim_takes_the_schedules_kubernetes_takes(schedule: str) -> None:
    """Five fields, or one of the macros Kubernetes' CronJob accepts (robfig/cron's descriptors but @every)."""
    (cron,) = by_kind(render(*LEDGER_DSN, "--set", f"router.ledgerTrim.schedule={schedule}"), "CronJob").values()
    assert cron["spec"]["schedule"] == schedule


def test_the_ledger_trim_alert_is_rendered_with_its_cronjob_only(docs: list[dict]) -> None:
    """LLMRouterLedgerTrimFailing watches the CronJob the chart renders, by its name; without the CronJob it
    would watch nothing (and a trim the operator schedules is theirs to watch)."""
    docs_with = render(*LEDGER_DSN)
    (cron,) = by_kind(docs_with, "CronJob")
    (alert,) = _rule_groups(docs_with)["llmrouter.ledger"]["rules"]
    assert alert["alert"] == "LLMRouterLedgerTrimFailing"
    assert f'{{namespace="llm",cronjob="{cron}"}}' in alert["expr"]
    assert alert["labels"]["release"] == "llm"
    off = render(*LEDGER_DSN, "--set", "router.ledgerTrim.enabled=false")
    for without in (docs, off):
        assert by_kind(without, "CronJob") == {}
        assert "llmrouter.ledger" not in _rule_groups(without)
        assert "llmrouter.alerts" in _rule_groups(without)


def _dashboard(docs: list[dict]) -> dict:
    (cm,) = [c for c in by_kind(docs, "ConfigMap").values() if c["metadata"]["name"].endswith("-dashboard")]
    return dict(json.loads(next(iter(cm["data"].values()))))


def _selected(expr: str, variables: dict[str, str]) -> dict[str, str]:
    """The matchers of a query's one selector, {label: regex} (= as an exact regex), its variables given values."""
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(f"${name}", value)
    (selector,) = re.findall(r"\{([^}]*)\}", expr)
    return {k: v if op == "=~" else re.escape(v) for k, op, v in re.findall(r'(\w+)(=~|=)"([^"]*)"', selector)}


@pytest.mark.parametrize(
    ("release", "settings"),
    [
        ("llm", []),
        ("prod-llm-cost-router", []),  # the release name holds the chart's: the fullname is the release's
        ("llm", ["--set", "fullnameOverride=llm-router"]),
        ("llm", ["--set", "nameOverride=router"]),
        ("a" * 51 + "-b", []),  # cut to 52 characters for the objects' names, and of the "-" it then ends in
    ],
)
def test_the_dashboard_and_the_alert_watch_the_ledger_trim_cronjob_rendered(release: str, settings: list[str]) -> None:
    """The ledger-trim panel, on the variables the chart opens the dashboard on, and LLMRouterLedgerTrimFailing
    select the CronJob the chart renders, whatever makes its name; and the panel's CronJob variable offers it."""
    docs = render(*LEDGER_DSN, *settings, release=release)
    (cron,) = by_kind(docs, "CronJob")
    dashboard = _dashboard(docs)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chosen = {name: v["current"]["value"] for name, v in variables.items() if "current" in v}
    (panel,) = [p for p in dashboard["panels"] if "ledger-trim CronJob" in p["title"]]
    (target,) = panel["targets"]
    matchers = _selected(target["expr"], chosen)
    assert re.fullmatch(matchers["namespace"], "llm") and re.fullmatch(matchers["cronjob"], cron), target["expr"]
    assert _offered(variables["ledger_trim_cronjob"]["query"], chosen, _recorded_series(docs)) == {cron}
    (alert,) = _rule_groups(docs)["llmrouter.ledger"]["rules"]
    assert f'{{namespace="llm",cronjob="{cron}"}}' in alert["expr"]


def _recorded_series(docs: list[dict]) -> list[dict[str, str]]:
    """What Prometheus holds of a release without traffic, as label sets with their __name__: the constant series
    (vector(...)) its PrometheusRule records, and kube-state-metrics' of its CronJobs (they carry no release)."""
    recorded = [
        {"__name__": rule["record"], **rule.get("labels", {})}
        for group in _rule_groups(docs).values()
        for rule in group["rules"]
        if "record" in rule and rule["expr"].startswith("vector(")
    ]
    kube_state = [
        {"__name__": metric, "namespace": cron["metadata"]["namespace"], "cronjob": cron["metadata"]["name"]}
        for cron in by_kind(docs, "CronJob").values()
        for metric in ("kube_cronjob_status_last_schedule_time", "kube_cronjob_status_last_successful_time")
    ]
    return recorded + kube_state


def _offered(query: str, variables: dict[str, str], series: list[dict[str, str]]) -> set[str]:
    """What a dashboard variable's label_values(selector, label) offers among these series, its variables given."""
    parsed = re.fullmatch(r"label_values\(([\w:]+)\{.*\}, (\w+)\)", query)
    assert parsed, query
    metric, label = parsed.groups()
    matchers = _selected(query, variables)
    return {
        one[label]
        for one in series
        if one["__name__"] == metric and all(re.fullmatch(v, one.get(k, "")) for k, v in matchers.items())
    }


def test_the_dashboards_ledger_trim_cronjob_follows_the_release_chosen() -> None:
    """Two releases in one namespace, their CronJobs named by fullnameOverride as much as by the release: choosing
    the other release in the dashboard offers that release's CronJob, and only it (before, every *-ledger-trim of the
    namespace, the first release's staying selected); a release without one offers none."""
    releases = {
        "llm": render(*LEDGER_DSN),
        "staging": render(*LEDGER_DSN, "--set", "fullnameOverride=llm-next", release="staging"),
        "dev": render(release="dev"),  # a SQLite ledger: no CronJob
    }
    series = [one for docs in releases.values() for one in _recorded_series(docs)]
    crons = {release: set(by_kind(docs, "CronJob")) for release, docs in releases.items()}
    assert crons["staging"] == {"llm-next-ledger-trim"} and crons["dev"] == set()
    variables = {v["name"]: v for v in _dashboard(releases["llm"])["templating"]["list"]}
    query = variables["ledger_trim_cronjob"]["query"]
    for release in releases:
        chosen = {name: v["current"]["value"] for name, v in variables.items() if "current" in v} | {"release": release}
        assert _offered(query, chosen, series) == crons[release], release


@pytest.mark.parametrize(
    "settings",
    [
        ["--set", "monitoring.prometheusRule.enabled=false"],
        [],  # `helm install --dry-run` knows no cluster: no Prometheus Operator, so no PrometheusRule
    ],
)
def test_without_the_prometheus_rule_the_ledger_trim_panel_is_said_to_list_no_cronjob(settings: list[str]) -> None:
    """The dashboard lists the release's CronJob by llmrouter:ledger_trim_cronjob_info, which only the chart's
    PrometheusRule records: with the CronJob and without that rule, NOTES.txt says the panel lists none and gives the
    series to record; the variable's description says where it comes from."""
    notes = _notes(*LEDGER_DSN, *settings, "--set", "edge.allowAnonymous=true")
    assert "the dashboard's ledger-trim panel lists no CronJob" in notes
    assert 'release="llm", cronjob="llm-llm-cost-router-ledger-trim"}' in notes
    no_rule = render(*LEDGER_DSN, *settings, monitoring_crds=bool(settings))
    assert "PrometheusRule" not in {d["kind"] for d in no_rule} and by_kind(no_rule, "CronJob")
    variables = {v["name"]: v for v in _dashboard(no_rule)["templating"]["list"]}
    assert "llmrouter:ledger_trim_cronjob_info" in variables["ledger_trim_cronjob"]["description"]
    for quiet in (
        [*settings],  # no CronJob: nothing to list
        [*LEDGER_DSN, *settings, "--set", "monitoring.dashboard.enabled=false"],
    ):
        assert "ledger-trim panel" not in _notes(*quiet, "--set", "edge.allowAnonymous=true")


@pytest.mark.parametrize(
    "settings",
    [
        [],  # no ledger database: the sink copies into each pod's SQLite, lost with the pod
        [*LEDGER_DSN, "--set", "router.ledgerTrim.enabled=false"],
    ],
)
def test_no_trim_cronjob_and_a_warning_without_the_sql_ledger(settings: list[str]) -> None:
    assert by_kind(render(*settings), "CronJob") == {}
    notes = _notes(*settings, "--set", "edge.allowAnonymous=true")
    assert "nothing trims the ledger streams" in notes
    assert "python -m services.router.ledger trim --out FILE" in notes


def test_no_trim_cronjob_and_no_warning_without_a_money_redis() -> None:
    """The in-process store's ledger lives and dies with its router: there is no stream to trim."""
    single = ["--set", "redis.money.enabled=false", "--set", "router.replicas=1"]
    single += ["--set", "router.autoscaling.enabled=false", *LEDGER_DSN]
    assert by_kind(render(*single), "CronJob") == {}
    assert "nothing trims the ledger" not in _notes(*single, "--set", "edge.allowAnonymous=true")


def _settings_class(svc: str) -> type[BaseSettings]:
    from services.classifier.settings import ClassifierSettings
    from services.providers.settings import ProvidersSettings
    from services.router.settings import RouterSettings

    classes: dict[str, type[BaseSettings]] = {"classifier": ClassifierSettings, "providers": ProvidersSettings}
    classes |= {"router": RouterSettings, "edge": EdgeSettings}
    return classes[svc]


def expanded_only(entries: list[dict]) -> set[str]:
    """The env entries there only for Kubernetes to expand into a later one's value ($(NAME)): the in-chart Redis'
    passwords in their URLs. No setting of their own, and named outside the services' prefixes."""
    return {
        entry["name"]
        for i, entry in enumerate(entries)
        if not entry["name"].startswith(("ROUTER_", "EDGE_"))
        and any(f"$({entry['name']})" in later.get("value", "") for later in entries[i + 1 :])
    }


@pytest.mark.parametrize("values", [None, "production-values.yaml", "minimal-values.yaml", "outbox-volume-values.yaml"])
def test_every_env_the_chart_sets_is_a_setting_of_its_service(values: str | None) -> None:
    """An env name no settings class reads is silently ignored (extra="ignore"): a misspelt one leaves the
    service on its default, whatever values.yaml says."""
    docs = render(*(["-f", str(CHART / "ci" / values)] if values else []))
    for svc in SERVICES:
        cls = _settings_class(svc)
        prefix = cls.model_config["env_prefix"]
        for var in set(env(docs, svc)) - expanded_only(container(docs, svc)["env"]):
            assert var.startswith(prefix), (svc, var)
            assert var[len(prefix) :].lower() in cls.model_fields, f"{svc}: {var} is no setting of {cls.__name__}"


def test_whole_numbers_reach_the_services_as_integers(tmp_path: Path) -> None:
    """Helm reads numbers in a values file as floats and prints those of a million or more in exponent form
    ("2.592e+06"), which an integer setting refuses: the service would not start. Both the env maps and the
    chart's own values (edge.batches) must reach the services as plain integers."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "edge": {
                    "env": {"EDGE_BATCH_RETENTION_S": 60 * 86400, "EDGE_REQUEST_TIMEOUT_S": 330.5},
                    "batches": {
                        "maxFileBytes": 104857600,
                        "maxConcurrentUploads": 1000000,
                        "maxRunning": 2000000,
                        "filesTenantBytes": 4 * 1024**3,
                    },
                },
                "router": {"env": {"ROUTER_REQUEST_ID_TTL_S": 14 * 86400, "ROUTER_TENANT_BUDGET_USD": 2500000}},
                "drainSeconds": 1000000,
                "terminationGracePeriodSeconds": 1000020,
            }
        )
    )
    docs = render("-f", str(values))
    edge, router = env(docs, "edge"), env(docs, "router")
    assert edge["EDGE_BATCH_RETENTION_S"] == str(60 * 86400)
    assert edge["EDGE_REQUEST_TIMEOUT_S"] == "330.5"
    assert edge["EDGE_BATCH_MAX_CONCURRENT_UPLOADS"] == "1000000"
    assert edge["EDGE_FILES_TENANT_BYTES"] == str(4 * 1024**3)
    assert edge["EDGE_GRACE_SECONDS"] == "1000000"
    assert router["ROUTER_REQUEST_ID_TTL_S"] == str(14 * 86400)
    # and the services take them
    names = ("EDGE_BATCH_", "EDGE_FILES_", "EDGE_REQUEST_TIMEOUT_S", "EDGE_GRACE_SECONDS")
    EdgeSettings.model_validate({k[5:].lower(): v for k, v in edge.items() if k.startswith(names)})
    ttl, budget = router["ROUTER_REQUEST_ID_TTL_S"], router["ROUTER_TENANT_BUDGET_USD"]
    _settings_class("router").model_validate({"auth": "none", "request_id_ttl_s": ttl, "tenant_budget_usd": budget})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("edge.env.EDGE_BATCH_MAX_FILE_BYTES", "209715200"),  # edge.batches.maxFileBytes: the memory check reads it
        ("router.env.ROUTER_REDIS_URL", "redis://elsewhere:6379/0"),
        ("classifier.env.CLASSIFIER_GRACE_SECONDS", "5"),
    ],
)
def test_env_may_not_set_again_what_the_chart_sets(setting: str, value: str) -> None:
    """A second entry of one name hides the chart's (the API server warns), so the value the chart checks is not the
    one the service runs with, and server-side apply refuses the Deployment (env is a map keyed by name)."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set-string", f"{setting}={value}")
    name = setting.rsplit(".", 1)[1]
    assert f"{setting.rsplit('.', 2)[0]}.env.{name}" in failure.value.stderr
    assert "the chart sets it" in failure.value.stderr


def test_money_redis_sizing_keeps_request_ids_as_long_as_the_router() -> None:
    """deploy/README.md sizes the money Redis by how long the router keeps a request's id markers
    (ROUTER_REQUEST_ID_TTL_S) and deploy/redis_sizing.py measures them with that TTL: a week where the router
    keeps a day put the sizing off by 7x, and hid that the untrimmed ledger is what fills the store."""
    import re
    import runpy

    from services.router.settings import RouterSettings

    ttl_s = RouterSettings.model_fields["request_id_ttl_s"].default
    readme = (ROOT / "deploy" / "README.md").read_text()
    (seconds,) = re.findall(r"Money memory \S+ requests/s \S ([\d,]+) \S", readme)
    assert int(seconds.replace(",", "")) == ttl_s
    assert runpy.run_path(str(ROOT / "deploy" / "redis_sizing.py"))["TTL_S"] == ttl_s
    for text in (readme, (CHART / "values.yaml").read_text()):
        assert "7 days" not in text and "7-day" not in text


def _tfvars_annotations() -> dict[str, str]:
    """The ingress annotations terraform/terraform.tfvars.example gives (one `annotations = { ... }` line)."""
    import re

    text = (ROOT / "terraform" / "terraform.tfvars.example").read_text()
    (block,) = re.findall(r"^\s*annotations\s*=\s*\{(.*)\}\s*$", text, re.M)
    return dict(re.findall(r'"([^"]+)"\s*=\s*"([^"]*)"', block))


@pytest.mark.parametrize("example", ["production-values.yaml", "terraform.tfvars.example"])
def test_nginx_examples_let_the_longest_request_and_the_largest_upload_through(example: str) -> None:
    """ingress-nginx answers 504 itself when the edge sends nothing for proxy-read-timeout (60 s unless raised): a
    chat completion the edge lets run EDGE_REQUEST_TIMEOUT_S (120 s) is cut half-way, charged, and its caller
    retries it. Its body limit (1 MB) refuses batch uploads with a 413 of its own."""
    if example.endswith(".yaml"):
        annotations = yaml.safe_load((CHART / "ci" / example).read_text())["ingress"]["annotations"]
    else:
        annotations = _tfvars_annotations()
    fields = EdgeSettings.model_fields
    timeout = annotations.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")
    assert int(timeout) > fields["request_timeout_s"].default, annotations
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 2**20 > fields["batch_max_file_bytes"].default


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (["edge.env.EDGE_REQUEST_TIMEOUT_S=400"], "drainSeconds"),  # a rollout would cut completions short
        (["drainSeconds=330"], "terminationGracePeriodSeconds"),  # the kubelet kills the pod mid-drain
        # the edge would cut a completion the router serves on: a 504 with its charge pending
        (["router.env.ROUTER_REQUEST_TIMEOUT_S=310"], "ROUTER_REQUEST_TIMEOUT_S"),
        (["edge.env.EDGE_REQUEST_TIMEOUT_S=120"], "ROUTER_REQUEST_TIMEOUT_S"),
        # the kubelet kills the edge while the Idempotency-Key answers it still keeps are landing
        (["edge.env.EDGE_IDEMPOTENCY_DRAIN_S=15"], "EDGE_IDEMPOTENCY_DRAIN_S"),
    ],
)
def test_shutdown_outlasting_the_longest_request_is_kept_when_values_change(
    settings: list[str], complaint: str
) -> None:
    """A completion runs up to EDGE_REQUEST_TIMEOUT_S; a pod drains drainSeconds after its preStop sleep and is killed
    at terminationGracePeriodSeconds. Raising one without the next cut requests at every rollout and scale-down."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*(arg for setting in settings for arg in ("--set", setting)))
    assert complaint in failure.value.stderr
    raised = ["edge.env.EDGE_REQUEST_TIMEOUT_S=400", "drainSeconds=405", "terminationGracePeriodSeconds=425"]
    docs = render(*(arg for setting in raised for arg in ("--set", setting)))
    assert env(docs, "edge")["EDGE_REQUEST_TIMEOUT_S"] == "400"
    docs = render("--set", "edge.env.EDGE_IDEMPOTENCY_DRAIN_S=14")
    assert env(docs, "edge")["EDGE_IDEMPOTENCY_DRAIN_S"] == "14"
    lowered = ["router.env.ROUTER_REQUEST_TIMEOUT_S=100", "edge.env.EDGE_REQUEST_TIMEOUT_S=110"]
    docs = render(*(arg for setting in lowered for arg in ("--set", setting)))
    assert env(docs, "edge")["EDGE_REQUEST_TIMEOUT_S"] == "110"


def test_a_whole_number_past_int64_reaches_its_service_as_written(tmp_path: Path) -> None:
    """A whole number too large for an integer (a budget written 1e20 for 'no cap') is passed as Helm prints it,
    which a decimal setting reads: converted to int64 it wrapped to -9223372036854775808, which the service refuses
    at start (or, where no bound checks it, takes as a negative number)."""
    values = tmp_path / "values.yaml"
    values.write_text("router:\n  env:\n    ROUTER_TENANT_BUDGET_USD: 1.0e+20\n    ROUTER_REQUEST_ID_TTL_S: 86400\n")
    router = env(render("-f", str(values)), "router")
    assert router["ROUTER_REQUEST_ID_TTL_S"] == "86400"
    budget = router["ROUTER_TENANT_BUDGET_USD"]
    settings = _settings_class("router").model_validate({"auth": "none", "tenant_budget_usd": budget})
    assert settings.tenant_budget_usd == 10**20  # type: ignore[attr-defined]


def test_runbooks_name_the_deployments_the_chart_renders(docs: list[dict]) -> None:
    """A runbook's `kubectl rollout undo deployment/...` names an object that exists, read at night as written."""
    runbooks = (ROOT / "deploy" / "runbooks.md").read_text()
    named = re.findall(r"deployment/(\S+?)(?:[.\s`]|$)", runbooks)
    assert named
    fullname = name("")  # "llm-llm-cost-router-" for release "llm"
    rendered = by_kind(docs, "Deployment").keys()
    for deployment in named:
        assert deployment.startswith("<fullname>-"), f"deployment/{deployment}: write <fullname>-<component>"
        assert deployment.replace("<fullname>-", fullname) in rendered, f"no Deployment {deployment}"


@pytest.mark.parametrize(
    ("settings", "bearer"),
    [
        ([], "Bearer <a key whose SHA-256 digest Secret llm-edge-keys lists>"),
        (["edge.apiKeys.existingSecret=", "edge.allowAnonymous=true"], "Bearer anything (no keys"),
    ],
)
def test_notes_tell_which_key_to_send(settings: list[str], bearer: str) -> None:
    """The edge's key Secret holds `<tenant> <sha256 hex>` lines, digests: NOTES' curl asks for the key behind one
    (it said "a key from Secret ...", which has none to take), or, with no keys, any bearer string."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    notes = subprocess.run(
        [tool("helm"), "install", "llm", str(CHART), "--dry-run", *sets], check=True, capture_output=True, text=True
    ).stdout.split("NOTES:", 1)[1]
    assert f"-H 'authorization: {bearer}" in notes


# The longest name Kubernetes lets each kind have; a Service's is a DNS label. Past it the API server refuses the
# object, or, for a StatefulSet, every one of its pods (their controller-revision-hash label, the name and 11 more).
NAME_LIMITS = {"Service": 63, "CronJob": 52, "StatefulSet": 52}
DNS_SUBDOMAIN = r"[a-z0-9]([-.a-z0-9]*[a-z0-9])?"


@pytest.mark.parametrize(
    ("release", "settings"),
    [
        ("a" * 51 + "-b", []),  # the longest release name Helm takes
        ("llm", ["--set", "fullnameOverride=" + "f" * 63]),
        ("prod-llm-cost-router-" + "x" * 20, []),  # the release name holds the chart's: it is the fullname
    ],
)
def test_every_object_name_fits_what_kubernetes_allows_its_kind(release: str, settings: list[str]) -> None:
    """The CronJob and the Redis StatefulSets were named past 52 characters, the batch Redis' Service past 63, with a
    release name Helm takes; they are cut further (names within the limits are as before), and what names them
    elsewhere follows."""
    docs = render(*LEDGER_DSN, "--set", "router.ledgerSink.enabled=true", *settings, release=release)
    assert {"CronJob", "StatefulSet"} <= {d["kind"] for d in docs}
    for doc in docs:
        kind, name_ = doc["kind"], doc["metadata"]["name"]
        assert len(name_) <= NAME_LIMITS.get(kind, 253) and re.fullmatch(DNS_SUBDOMAIN, name_), f"{kind} {name_}"
        if kind == "Service":
            assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name_), name_
    services = by_kind(docs, "Service")
    for setting in ("ROUTER_REDIS_URL", "ROUTER_CACHE_REDIS_URL"):
        host = re.fullmatch(r"redis://:\$\(\w+\)@([^:]+):6379/0", _env_of(docs, "router")[setting])
        assert host and host[1] in services, setting
    for statefulset in by_kind(docs, "StatefulSet").values():
        assert statefulset["spec"]["serviceName"] in services
    (cron,) = by_kind(docs, "CronJob")
    (alert,) = _rule_groups(docs)["llmrouter.ledger"]["rules"]
    assert f'cronjob="{cron}"' in alert["expr"]


def _env_of(docs: list[dict], svc: str) -> dict[str, str]:
    """A service's env, its Deployment found by component (its name depends on the release)."""
    (deployment,) = [
        d for d in by_kind(docs, "Deployment").values() if d["metadata"]["labels"]["app.kubernetes.io/component"] == svc
    ]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.mark.parametrize("release", ["1llm", "llm.prod"])
def test_a_release_name_no_service_may_start_with_is_refused(release: str) -> None:
    """Helm takes these release names; the API server would refuse every Service named after them."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(release=release)
    assert "a Service's name cannot" in failure.value.stderr
    assert "set fullnameOverride" in failure.value.stderr
    assert by_kind(render("--set", "fullnameOverride=llm", release=release), "Service")
