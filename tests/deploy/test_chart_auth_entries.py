"""The chart's gRPC services start with the callers and tokens it gives them: no token given to two identities and no
caller listed with two rights (llmrouter/auth.py refuses either at start), rendered with the default values, each CI
values file, with TLS off, and with the values the Terraform module gives by default. Each service's own settings
class is built from the rendered auth settings (its certificates' directory a stand-in holding the three files), as
the service builds them at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classifier.settings import ClassifierSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.deploy.support import CHART, GRPC_SERVICES, by_kind, render
from tests.deploy.test_terraform import module_values

SETTINGS = {"classifier": ClassifierSettings, "providers": ProvidersSettings, "router": RouterSettings}
AUTH_SETTINGS = ("AUTH", "AUTH_NONE_ALLOW_REMOTE", "AUTH_TOKENS", "AUTH_TOKENS_FILE", "CALLERS", "HOST", "TLS_DIR")
VARIANTS = {
    "defaults": [],
    **{path.stem: ["-f", str(path)] for path in sorted((CHART / "ci").glob("*.yaml"))},
    "tls off": ["--set", "tls.enabled=false"],
}


@pytest.mark.parametrize("args", VARIANTS.values(), ids=VARIANTS.keys())
def test_each_grpc_service_starts_with_the_callers_and_tokens_the_chart_gives_it(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = "none" if args == VARIANTS["tls off"] else "mtls"
    assert_each_grpc_service_starts(render(*args), auth, tmp_path, monkeypatch)


def test_each_grpc_service_starts_with_the_callers_and_tokens_the_terraform_module_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_each_grpc_service_starts(render("-f", str(module_values(tmp_path, {}))), "mtls", tmp_path, monkeypatch)


def assert_each_grpc_service_starts(
    docs: list[dict], auth: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("")
    for svc in GRPC_SERVICES:
        prefix = f"{svc.upper()}_"
        workloads = by_kind(docs, "Deployment") | by_kind(
            docs, "StatefulSet"
        )  # the router a StatefulSet with its outbox on a claim
        (workload,) = [w for n, w in workloads.items() if n.endswith(f"-{svc}")]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        rendered = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        for variable in (prefix + setting for setting in AUTH_SETTINGS):
            monkeypatch.delenv(variable, raising=False)
            if variable in rendered:
                assert isinstance(rendered[variable], str), (variable, rendered[variable])  # a value, not a Secret's
                monkeypatch.setenv(variable, str(tmp_path) if variable.endswith("TLS_DIR") else rendered[variable])
        settings = SETTINGS[svc]()  # the validators the service runs at start, the refusals among them
        assert settings.auth == auth, svc
