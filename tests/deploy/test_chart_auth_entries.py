"""The chart's gRPC services start with the callers and tokens it gives them: no token given to two identities and no
caller listed with two rights (llmrouter/auth.py refuses either at start), rendered with the default values, each CI
values file and with TLS off. Each service's own settings class is built from the rendered auth settings (its
certificates' directory a stand-in holding the three files), as the service builds them at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.classifier.settings import ClassifierSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.deploy.support import CHART, GRPC_SERVICES, render
from tests.deploy.test_chart import env

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
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("")
    docs = render(*args)
    for svc in GRPC_SERVICES:
        prefix = f"{svc.upper()}_"
        rendered = env(docs, svc)
        for variable in (prefix + setting for setting in AUTH_SETTINGS):
            monkeypatch.delenv(variable, raising=False)
            if variable in rendered:
                assert isinstance(rendered[variable], str), (variable, rendered[variable])  # a value, not a Secret's
                monkeypatch.setenv(variable, str(tmp_path) if variable.endswith("TLS_DIR") else rendered[variable])
        settings = SETTINGS[svc]()  # the validators the service runs at start, the refusals among them
        assert settings.auth == ("none" if args == VARIANTS["tls off"] else "mtls"), svc
