"""`python -m llmrouter.opscheck --namespace NS [--release NAME] [--context CTX]`: is a release of the chart
healthy, as the Kubernetes API and the services themselves say? Its Deployments and StatefulSets (the router's, with
router.outbox.persistence; the in-chart Redis') rolled out, its HPAs reading
their metrics, a PodDisruptionBudget and a NetworkPolicy per service, the registry ConfigMap a valid registry,
and each gRPC service answering grpc.health.v1 SERVING through a port-forward (kubectl) to its probe port.

The judgement is plain functions of the API objects (the kubernetes client's own models), tested without a
cluster; `fetch` and `grpc_health` are the live path. Exit status 1 when anything fails."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client import (
    V1ConfigMap,
    V1Deployment,
    V1DeploymentStatus,
    V1NetworkPolicy,
    V1PodDisruptionBudget,
    V1StatefulSet,
    V2HorizontalPodAutoscaler,
)

from llmrouter.registry import parse_registry

SERVICES = ("classifier", "providers", "router", "edge")
GRPC_SERVICES = ("classifier", "providers", "router")

# A service's pods: a Deployment, or a StatefulSet (the router's, its outbox on a claim per pod).
Workload = V1Deployment | V1StatefulSet


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.what}{': ' + self.detail if self.detail else ''}"


@dataclass
class Objects:
    """What the API holds for one release."""

    deployments: list[V1Deployment]
    hpas: list[V2HorizontalPodAutoscaler]
    pdbs: list[V1PodDisruptionBudget]
    policies: list[V1NetworkPolicy]
    configmaps: list[V1ConfigMap]
    statefulsets: list[V1StatefulSet] = field(default_factory=list)

    def workloads(self) -> list[Workload]:
        return [*self.deployments, *self.statefulsets]


def name(obj: Any) -> str:
    return obj.metadata.name if obj.metadata and obj.metadata.name else "?"


def component(obj: Any) -> str:
    return ((obj.metadata.labels or {}) if obj.metadata else {}).get("app.kubernetes.io/component", "")


def kind(workload: Workload) -> str:
    return "StatefulSet" if isinstance(workload, V1StatefulSet) else "Deployment"


def rolled_out(workload: Workload) -> Finding:
    want = workload.spec.replicas if workload.spec and workload.spec.replicas is not None else 1
    status = workload.status or V1DeploymentStatus()  # none yet: no count (a StatefulSet's are the same)
    problems = []
    generation = workload.metadata.generation if workload.metadata else None
    if (status.observed_generation or 0) < (generation or 0):
        problems.append("the controller has not acted on the latest spec yet")
    if (status.updated_replicas or 0) < want:
        problems.append(f"{status.updated_replicas or 0}/{want} replicas on the latest spec")
    if (status.available_replicas or 0) < want:
        problems.append(f"{status.available_replicas or 0}/{want} replicas available")
    if (status.replicas or 0) > want:
        problems.append(f"{status.replicas} replicas, old ones still terminating")
    return Finding(not problems, f"{kind(workload)} {name(workload)} rolled out", "; ".join(problems))


def reads_its_metrics(hpa: V2HorizontalPodAutoscaler) -> Finding:
    status = hpa.status
    conditions = {c.type: c for c in (status.conditions or [])} if status else {}
    problems = []
    active = conditions.get("ScalingActive")
    if active is None or active.status != "True":
        why = f"{active.reason}: {active.message}" if active else "no status yet"
        problems.append(f"not scaling ({why})")
    wanted = len(hpa.spec.metrics or []) if hpa.spec else 0
    current = len(status.current_metrics or []) if status else 0
    if current < wanted:
        problems.append(f"reads {current} of its {wanted} metrics")
    return Finding(not problems, f"HPA {name(hpa)} reads its metrics", "; ".join(problems))


def one_per_service(kind: str, objects: Iterable[object]) -> Finding:
    missing = sorted(set(SERVICES) - {component(o) for o in objects})
    return Finding(not missing, f"a {kind} per service", f"none for {', '.join(missing)}" if missing else "")


def registry_valid(configmaps: list[V1ConfigMap]) -> Finding:
    found = [cm for cm in configmaps if "models.yaml" in (cm.data or {})]
    if len(found) != 1:
        return Finding(False, "registry ConfigMap valid", f"{len(found)} ConfigMaps hold a models.yaml")
    (cm,) = found
    what = f"registry ConfigMap {name(cm)} valid"
    try:
        registry = parse_registry((cm.data or {})["models.yaml"].encode(), Path(f"ConfigMap {name(cm)}"))
    except ValueError as exc:
        return Finding(False, what, " ".join(str(exc).split())[:300])
    return Finding(True, what, f"{len(registry.models)} models")


def evaluate(objects: Objects) -> list[Finding]:
    findings = [one_per_service("Deployment or StatefulSet", objects.workloads())]
    findings += [rolled_out(w) for w in objects.workloads()]
    findings += [reads_its_metrics(h) for h in objects.hpas]
    findings.append(one_per_service("PodDisruptionBudget", objects.pdbs))
    findings.append(one_per_service("NetworkPolicy", objects.policies))
    findings.append(registry_valid(objects.configmaps))
    return findings


def health_port(workload: Workload) -> int | None:
    """The port the kubelet's native gRPC probe checks (the plaintext health port under mTLS)."""
    pod = workload.spec.template.spec if workload.spec else None
    if pod is None or not pod.containers:
        return None
    container = pod.containers[0]
    probe = container.readiness_probe
    return probe.grpc.port if probe is not None and probe.grpc is not None else None


def fetch(namespace: str, release: str) -> Objects:
    selector = f"app.kubernetes.io/instance={release}"
    apps, autoscaling = client.AppsV1Api(), client.AutoscalingV2Api()
    policy, networking, core = client.PolicyV1Api(), client.NetworkingV1Api(), client.CoreV1Api()
    return Objects(
        apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace, label_selector=selector).items,
        policy.list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items,
        networking.list_namespaced_network_policy(namespace, label_selector=selector).items,
        core.list_namespaced_config_map(namespace, label_selector=selector).items,
        apps.list_namespaced_stateful_set(namespace, label_selector=selector).items,
    )


def grpc_health(workload: Workload, namespace: str, context: str | None) -> Finding:
    """grpc.health.v1 Check through `kubectl port-forward` to one pod of the Deployment or StatefulSet."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    what = f"{name(workload)} answers gRPC health"
    port = health_port(workload)
    if port is None:
        return Finding(False, what, "no gRPC readiness probe to find the health port")
    command = ["kubectl", "port-forward", "-n", namespace, f"{kind(workload).lower()}/{name(workload)}", f":{port}"]
    forward = subprocess.Popen(
        [*command, *(["--context", context] if context else [])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert forward.stdout is not None
        match = re.search(r"127\.0\.0\.1:(\d+)", forward.stdout.readline())
        if match is None:
            return Finding(False, what, "kubectl port-forward did not start")
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]  # stubs list no methods
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return Finding(
            serving, what, "" if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        )
    except grpc.RpcError as err:
        return Finding(False, what, f"{err.code().name}")
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def api_problem(exc: Exception) -> str:
    """One line: no kubeconfig, no cluster answering, or the API's refusal (its status, not its headers and body)."""
    if isinstance(exc, client.ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmrouter.opscheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--release", default="llm-cost-router", help="the Helm release name")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    args = parser.parse_args(argv)
    try:
        config.load_kube_config(context=args.context)
        objects = fetch(args.namespace, args.release)
    except (config.ConfigException, client.ApiException, urllib3.exceptions.HTTPError) as exc:
        print(f"opscheck: cannot read the release from the Kubernetes API: {api_problem(exc)}", file=sys.stderr)
        return 1
    findings = evaluate(objects)
    findings += [
        grpc_health(w, args.namespace, args.context) for w in objects.workloads() if component(w) in GRPC_SERVICES
    ]
    for finding in findings:
        print(finding.line())
    return 0 if all(f.ok for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
