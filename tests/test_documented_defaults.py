"""A setting's default, where a document states it beside the variable (`EDGE_REQUEST_TIMEOUT_S`, 310 s;
`ROUTER_CACHE_TTL_S` (300; 0 off); `ROUTER_SESSION_TTL_S` (default 3600)), is the settings class's: a reader sizing
a proxy's timeout or a store from the prose gets the value the service runs with (terraform.tfvars.example's
120 s was a timeout the edge had long outgrown)."""

from __future__ import annotations

import re

from services.classifier.settings import ClassifierSettings
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.test_documented_commands import DOCUMENTS as COMMAND_DOCUMENTS
from tests.test_documented_commands import ROOT

# The documents whose commands are checked, and Terraform's, which state defaults beside its variables too.
DOCUMENTS = [
    *COMMAND_DOCUMENTS,
    *sorted((ROOT / "terraform").rglob("*.tf")),
    ROOT / "terraform" / "terraform.tfvars.example",
]
# A variable, then ", N" or " (N", "default" before the number or "by default" after it allowed, the number ending
# the clause: "ROUTER_LEDGER_RETENTION_DAYS, 7 by default in the chart" is the chart's value, not the code's.
DEFAULT = re.compile(
    r"\b((?:CLASSIFIER|PROVIDERS|ROUTER|EDGE)_[A-Z0-9_]+)`?(?:,\s+|\s+\()(?:default\s+)?"
    r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s(?:s|bytes/s))?(?:\s+by default)?(?=[;),:])"
)


def code_defaults() -> dict[str, object]:
    return {
        settings.model_config["env_prefix"] + name.upper(): field.default
        for settings in (ClassifierSettings, EdgeSettings, ProvidersSettings, RouterSettings)
        for name, field in settings.model_fields.items()
    }


def documented_defaults() -> list[tuple[str, str, str]]:
    """(document, variable, value) of every default the documents state beside its variable."""
    return [
        (str(doc.relative_to(ROOT)), name, value)
        for doc in DOCUMENTS
        for name, value in DEFAULT.findall(doc.read_text())
    ]


def test_the_documents_state_defaults() -> None:
    assert {"EDGE_REQUEST_TIMEOUT_S", "ROUTER_CACHE_TTL_S", "ROUTER_SESSION_TTL_S"} <= {
        name for _, name, _ in documented_defaults()
    }


def test_every_documented_default_is_the_codes() -> None:
    defaults = code_defaults()
    for doc, name, value in documented_defaults():
        assert name in defaults, f"{doc}: {name} is no setting"
        assert float(value.replace(",", "")) == defaults[name], f"{doc}: {name} is {defaults[name]}, not {value}"
