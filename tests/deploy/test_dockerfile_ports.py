"""The image's EXPOSE names every port its processes listen on, and no other: each service's settings' default ports
(gRPC or HTTP, metrics, the ledger sink's metrics) and every container port the chart gives a container of this
image (the plaintext health port, tls.healthPort, included). Needs helm (deploy/install-tools.sh)."""

from __future__ import annotations

import re

import yaml
from pydantic_settings import BaseSettings

from services.classifier.settings import ClassifierSettings
from services.edge.settings import EdgeSettings
from services.ledger.settings import LedgerSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings

from .support import CHART, ROOT, render

IMAGE_SETTINGS: tuple[type[BaseSettings], ...] = (
    EdgeSettings,
    RouterSettings,
    ClassifierSettings,
    ProvidersSettings,
    LedgerSettings,
)


def exposed() -> set[int]:
    """The ports of the Dockerfile's EXPOSE instructions."""
    lines = re.findall(r"^EXPOSE\s+(.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    return {int(port.split("/")[0]) for line in lines for port in line.split()}


def default_ports() -> set[int]:
    """Every port field's default (`port`, `*_port`) of the settings of the processes the image runs: 0 picks a free
    port or disables, None listens on none."""
    return {
        field.default
        for settings in IMAGE_SETTINGS
        for name, field in settings.model_fields.items()
        if (name == "port" or name.endswith("_port")) and isinstance(field.default, int) and field.default
    }


def chart_ports() -> set[int]:
    """The container ports the chart gives containers of this image, every optional listener on (the ledger sink)."""
    docs = render("-f", str(CHART / "ci" / "ledger-sink-values.yaml"))
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    ports: set[int] = set()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith(repository):
                ports |= {p["containerPort"] for p in c.get("ports", [])}
    return ports


def test_every_listening_port_is_exposed_and_nothing_else() -> None:
    listening = default_ports() | chart_ports()
    assert {9105, 8086} <= listening  # the ledger sink's metrics and the health port: found, not assumed away
    assert exposed() == listening
