"""A Kubernetes API server on loopback, speaking just enough of the real wire format for
`helm template --dry-run=server`: discovery of the kinds the chart renders, and GET of Secrets, Services and
StatefulSets (what the chart's `lookup` reads). No cluster is reachable here; this lets the tests see what an upgrade
renders when the cluster already holds the release's objects."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# groupVersion -> (kind, plural, namespaced): every kind the chart can render.
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("Secret", "secrets", True),
        ("ConfigMap", "configmaps", True),
        ("Service", "services", True),
        ("ServiceAccount", "serviceaccounts", True),
        ("PersistentVolumeClaim", "persistentvolumeclaims", True),
    ],
    "apps/v1": [("Deployment", "deployments", True), ("StatefulSet", "statefulsets", True)],
    "autoscaling/v2": [("HorizontalPodAutoscaler", "horizontalpodautoscalers", True)],
    "policy/v1": [("PodDisruptionBudget", "poddisruptionbudgets", True)],
    "networking.k8s.io/v1": [("NetworkPolicy", "networkpolicies", True), ("Ingress", "ingresses", True)],
}
CERT_MANAGER = {"cert-manager.io/v1": [("Certificate", "certificates", True), ("Issuer", "issuers", True)]}


class KubeApi:
    """Serves discovery for `resources`, the Secrets in `self.secrets`, the Services in `self.services` and the
    StatefulSets in `self.statefulsets` ((namespace, name) -> object)."""

    def __init__(self, directory: Path, resources: dict[str, list[tuple[str, str, bool]]] = RESOURCES) -> None:
        self.resources = resources
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.statefulsets: dict[tuple[str, str], dict[str, Any]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.kubeconfig = directory / "kubeconfig"
        server = f"http://127.0.0.1:{self._server.server_address[1]}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": server}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(json.dumps(config))

    def __enter__(self) -> KubeApi:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def store(self, obj: dict[str, Any], release: str = "llm") -> None:
        """Keep a Secret, a Service or a StatefulSet as the cluster holds it after `helm install` (with Helm's
        ownership annotations; a Service's cluster IP as the API server gives it, unless headless)."""
        meta = obj["metadata"]
        owner = {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": meta["namespace"]}
        meta["annotations"] = {**meta.get("annotations", {}), **owner}
        if obj["kind"] == "Service":
            obj["spec"].setdefault("clusterIP", f"10.96.0.{len(self.services) + 10}")
            self.services[(meta["namespace"], meta["name"])] = obj
        elif obj["kind"] == "StatefulSet":
            self.statefulsets[(meta["namespace"], meta["name"])] = obj
        else:
            self.secrets[(meta["namespace"], meta["name"])] = obj

    def _answer(self, path: str) -> dict[str, Any] | None:
        parts = path.strip("/").split("/")
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups: list[dict[str, Any]] = [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}]}
                for gv in self.resources
                if "/" in gv
            ]
            for group in groups:
                group["preferredVersion"] = group["versions"][0]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        group_version = "/".join(parts[1:]) if parts[0] == "api" else "/".join(parts[1:3])
        if path in (f"/api/{group_version}", f"/apis/{group_version}") and group_version in self.resources:
            resources = [
                {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": ["get"]}
                for kind, plural, namespaced in self.resources[group_version]
            ]
            return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] in ("secrets", "services"):
            return (self.secrets if parts[4] == "secrets" else self.services).get((parts[3], parts[5]))
        if parts[:4] == ["apis", "apps", "v1", "namespaces"] and len(parts) == 7 and parts[5] == "statefulsets":
            return self.statefulsets.get((parts[4], parts[6]))
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = api._answer(self.path.split("?")[0])
                status = 200 if body is not None else 404
                if body is None:
                    body = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                    }
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
