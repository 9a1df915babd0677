"""Every setting a service reads is named in the documents, and every variable they name is one a service reads:
else a reader sets `EDGE_WORKERS` (named in benchmarks/README.md, never built) or looks in vain for
`ROUTER_CLASSIFIER_TIMEOUT_S` (in no document). A setting every gRPC service has may be named once for all,
`<PREFIX>_AUTH` or `*_TLS_DIR`. The defaults of docs/conventions.md's tables (Ports, Other settings) are the
settings classes'."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.classifier.settings import ClassifierSettings
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.test_documented_commands import ROOT
from tests.test_documented_defaults import DOCUMENTS

SERVICES: list[type[BaseSettings]] = [ClassifierSettings, ProvidersSettings, RouterSettings, EdgeSettings]
VARIABLE = re.compile(r"(?<![\w<*])((?:CLASSIFIER|PROVIDERS|ROUTER|EDGE)_[A-Z0-9_]*[A-Z0-9])\b")
# `<PREFIX>_AUTH`, `*_TLS_DIR`: a setting of every service that has it.
GENERIC = re.compile(r"(?:<PREFIX>|\*)_([A-Z0-9_]*[A-Z0-9])\b")
CONVENTIONS = ROOT / "docs" / "conventions.md"


def variables() -> dict[str, object]:
    """Every setting's environment variable and its default (the ledger's settings are part of the router's)."""
    return {
        (service.model_config["env_prefix"] + name).upper(): field.default
        for service in SERVICES
        for name, field in service.model_fields.items()
    }


def documents_text() -> str:
    return "\n".join(doc.read_text() for doc in DOCUMENTS)


def test_every_setting_is_documented() -> None:
    text = documents_text()
    named = set(VARIABLE.findall(text))
    generic = set(GENERIC.findall(text))
    undocumented = [
        variable for variable in variables() if variable not in named and variable.split("_", 1)[1] not in generic
    ]
    assert not undocumented, f"settings no document names: {undocumented}"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_documented_variable_is_a_setting(doc: Path) -> None:
    unknown = sorted(set(VARIABLE.findall(doc.read_text())) - set(variables()))
    assert not unknown, f"{doc.relative_to(ROOT)} names variables no service reads: {unknown}"


def test_the_cli_reads_the_variables_documented_for_it() -> None:
    documented = set(re.findall(r"\bLLMROUTER_[A-Z_]*[A-Z]\b", documents_text()))
    source = "".join(path.read_text() for path in (ROOT / "llmrouter" / "cli").glob("*.py"))
    assert documented, "the README names the CLI's LLMROUTER_URL and LLMROUTER_API_KEY"
    assert not {name for name in documented if f'"{name}"' not in source}


def table_rows(heading: str) -> list[list[str]]:
    """The cells of the first table under a docs/conventions.md heading."""
    section = CONVENTIONS.read_text().split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # the header row is no setting


def test_the_ports_table_is_the_defaults() -> None:
    defaults = variables()
    rows = table_rows("Ports")
    assert len(rows) == len(SERVICES)
    for _, prefix, port, metrics_port in rows:
        assert (defaults[f"{prefix}PORT"], defaults[f"{prefix}METRICS_PORT"]) == (int(port), int(metrics_port))


def test_the_other_settings_table_is_the_defaults() -> None:
    defaults = variables()
    checked = 0
    for names, default, _ in table_rows("Other settings"):
        for variable in re.findall(r"`([A-Z][A-Z0-9_]+)`", names):
            if variable.startswith(("CLASSIFIER_", "PROVIDERS_", "ROUTER_", "EDGE_")):
                code = defaults[variable]
                if default == "unset":
                    assert code is None, f"{variable} is {code!r}, not unset"
                elif default.startswith("`"):
                    assert code == default.strip("`"), f"{variable} is {code!r}, not {default}"
                elif default[0].isdigit():
                    assert code == float(default), f"{variable} is {code!r}, not {default}"
                checked += 1
    assert checked >= 10
