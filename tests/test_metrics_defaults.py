"""Metrics are on by default: every service's settings serve Prometheus on the port docs/conventions.md lists
(the launcher and the chart use these); 0 turns them off."""

from __future__ import annotations

import pytest

from llmrouter.settings import ServiceSettings
from services.classifier.settings import ClassifierSettings
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.deploy.support import documented_ports

SETTINGS: dict[str, type[ServiceSettings]] = {
    "classifier": ClassifierSettings,
    "providers": ProvidersSettings,
    "router": RouterSettings,
    "edge": EdgeSettings,
}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_serves_metrics_on_its_documented_port_by_default(service: str) -> None:
    prefix, _, metrics_port = documented_ports()[service]
    field = SETTINGS[service].model_fields["metrics_port"]
    assert field.default == metrics_port
    with pytest.MonkeyPatch.context() as env:
        env.setenv(f"{prefix}_METRICS_PORT", "0")
        env.setenv(f"{prefix}_AUTH", "none")
        assert SETTINGS[service]().metrics_port == 0
