"""A setting's default, where a document states it beside the variable (`EDGE_REQUEST_TIMEOUT_S`, 310 s;
`ROUTER_CACHE_TTL_S` (300; 0 off); `ROUTER_SESSION_TTL_S` (default 3600); in words or binary units,
`EDGE_BATCH_RETENTION_S` (default 30 days), `EDGE_IDEMPOTENCY_MEMORY_BYTES` (64 MiB); for every service that has it,
`*_REGISTRY_RELOAD_S` (5 s)), is the settings class's: a reader sizing a proxy's timeout or a store from the prose gets
the value the service runs with (terraform.tfvars.example's 120 s was a timeout the edge had long outgrown)."""

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
# The same, the number in days, hours or binary units, or in words: "one day", "an hour", "30 days", "256 KiB".
IN_UNITS = re.compile(
    r"\b((?:CLASSIFIER|PROVIDERS|ROUTER|EDGE)_[A-Z0-9_]+)`?(?:,\s+|\s+\()(?:default\s+)?"
    r"(one|an?|\d+)\s+(days?|hours?|GiB|MiB|KiB)(?:\s+by default)?(?=[;),:])"
)
UNITS = {"day": 86_400, "hour": 3_600, "GiB": 2**30, "MiB": 2**20, "KiB": 2**10}
# A setting of every service that has it, `*_REGISTRY_RELOAD_S` (5 s).
GENERIC = re.compile(r"`\*(_[A-Z0-9_]+)`?\s+\((\d+(?:\.\d+)?)(?:\s+s)?(?=[;),:])")


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


def documented_defaults_in_units() -> list[tuple[str, str, int]]:
    """(document, variable, value in seconds or bytes) of every default stated in days, hours or binary units."""
    return [
        (str(doc.relative_to(ROOT)), name, (1 if count in ("one", "a", "an") else int(count)) * UNITS[unit.rstrip("s")])
        for doc in DOCUMENTS
        for name, count, unit in IN_UNITS.findall(doc.read_text())
    ]


def test_every_default_in_days_hours_or_bytes_is_the_codes() -> None:
    documented = documented_defaults_in_units()
    assert {"EDGE_BATCH_RETENTION_S", "EDGE_IDEMPOTENCY_MEMORY_BYTES", "ROUTER_PENDING_STALE_S"} <= {
        name for _, name, _ in documented
    }
    defaults = code_defaults()
    for doc, name, value in documented:
        assert name in defaults, f"{doc}: {name} is no setting"
        assert defaults[name] == value, f"{doc}: {name} is {defaults[name]}, not {value}"


def test_every_default_of_every_services_setting_is_the_codes() -> None:
    documented = [
        (str(doc.relative_to(ROOT)), suffix, value)
        for doc in DOCUMENTS
        for suffix, value in GENERIC.findall(doc.read_text())
    ]
    assert "_REGISTRY_RELOAD_S" in {suffix for _, suffix, _ in documented}
    defaults = code_defaults()
    for doc, suffix, value in documented:
        settings = {name: default for name, default in defaults.items() if name.endswith(suffix)}
        assert settings, f"{doc}: no service has a setting *{suffix}"
        for name, default in settings.items():
            assert default == float(value), f"{doc}: {name} is {default}, not {value}"
