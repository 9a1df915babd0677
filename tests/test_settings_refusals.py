"""A setting refused at start is said in a user's words: the variables as a user sets them (ROUTER_TLS_DIR, not
tls_dir), without pydantic's 'Value error, ', and a value quoted only when the user gave it. `python -m
services.router` without certificates said 'ROUTER_*: Value error, auth=mtls needs tls_dir (...)'; an edge without
keys on a public host ended its refusal '(got False)' of an EDGE_ALLOW_ANONYMOUS never set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic_settings import BaseSettings

from llmrouter.settings import load_settings
from services.classifier.settings import ClassifierSettings
from services.edge.settings import EdgeSettings
from services.providers.settings import ProvidersSettings
from services.router.settings import RouterSettings
from tests.conftest import ROOT
from tests.in_process import environment_without

GRPC_SERVICES = [ClassifierSettings, ProvidersSettings, RouterSettings]


def refusal(cls: type[BaseSettings], capsys: pytest.CaptureFixture[str]) -> str:
    """What load_settings says on standard error as it refuses the environment's settings of `cls`."""
    with pytest.raises(SystemExit) as exited:
        load_settings(cls)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_a_router_without_certificates_names_the_variables_to_set() -> None:
    env = {name: value for name, value in os.environ.items() if name not in ("ROUTER_AUTH", "ROUTER_TLS_DIR")}
    started = subprocess.run(
        [sys.executable, "-m", "services.router"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 2
    assert started.stderr == (
        "invalid configuration for RouterSettings:\n"
        "  ROUTER_*: ROUTER_AUTH=mtls needs ROUTER_TLS_DIR (or set ROUTER_AUTH=token with ROUTER_AUTH_TOKENS, or"
        " ROUTER_AUTH=none)\n"
    )


@pytest.mark.parametrize("cls", GRPC_SERVICES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({}, "{p}AUTH=mtls needs {p}TLS_DIR (or set {p}AUTH=token with {p}AUTH_TOKENS, or {p}AUTH=none)"),
        ({"AUTH": "token"}, "{p}AUTH=token needs {p}AUTH_TOKENS or {p}AUTH_TOKENS_FILE"),
        (
            {"AUTH": "none", "HOST": "0.0.0.0"},
            "{p}AUTH=none on 0.0.0.0: serve on loopback ({p}HOST), or set {p}AUTH_NONE_ALLOW_REMOTE=true",
        ),
    ],
)
def test_a_service_refusing_its_authentication_names_its_variables(
    cls: type[BaseSettings],
    settings: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = cls.model_config["env_prefix"]
    environment_without(monkeypatch, prefix, **{f"{prefix}{name}": value for name, value in settings.items()})
    assert refusal(cls, capsys) == f"invalid configuration for {cls.__name__}:\n  {prefix}*: {said.format(p=prefix)}\n"


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"ROUTER_DEFAULT_STRONG_SHARE": "0.2", "ROUTER_DEFAULT_QUALITY_KEPT": "0.9"},
            "set ROUTER_DEFAULT_STRONG_SHARE or ROUTER_DEFAULT_QUALITY_KEPT, not both",
        ),
        (
            {"ROUTER_TENANT_STRONG_SHARE": '{"acme": 0.2}', "ROUTER_TENANT_QUALITY_KEPT": '{"acme": 0.9}'},
            "tenants in both ROUTER_TENANT_STRONG_SHARE and ROUTER_TENANT_QUALITY_KEPT: acme",
        ),
        (
            {"ROUTER_HEARTBEAT_TTL_S": "5", "ROUTER_UPKEEP_INTERVAL_S": "2"},
            "ROUTER_HEARTBEAT_TTL_S must be at least 3 x ROUTER_UPKEEP_INTERVAL_S (a live router must never look dead)",
        ),
        (
            {"ROUTER_REQUEST_ID_TTL_S": "100"},
            "ROUTER_REQUEST_ID_TTL_S (100 s) must be at least ROUTER_REQUEST_TIMEOUT_S (300 s) + 60 s: a request's"
            " charged marker must outlive it, or a request the reconciler charged could be charged again by its own"
            " router",
        ),
        (
            {"ROUTER_PENDING_STALE_S": "120"},
            "ROUTER_PENDING_STALE_S (120 s) must be at least ROUTER_REQUEST_TIMEOUT_S (300 s) + 60 s for the charge to"
            " land: the reconciler charges a pending charge older than ROUTER_PENDING_STALE_S its hold, a request"
            " still running too",
        ),
    ],
)
def test_a_rule_across_router_settings_names_its_variables(
    settings: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment_without(monkeypatch, "ROUTER_", ROUTER_AUTH="none", **settings)
    assert refusal(RouterSettings, capsys) == f"invalid configuration for RouterSettings:\n  ROUTER_*: {said}\n"


def test_a_value_refused_is_said_without_pydantics_prefix_and_quoted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment_without(monkeypatch, "ROUTER_", ROUTER_AUTH="none", ROUTER_HEARTBEAT_TTL_S="1000")
    said = refusal(RouterSettings, capsys)
    assert said.startswith("invalid configuration for RouterSettings:\n  ROUTER_HEARTBEAT_TTL_S: must be at most 120 s")
    assert said.endswith(" (got '1000')\n") and "Value error" not in said


def test_an_edge_without_keys_on_a_public_host_says_what_to_set_not_a_default_never_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment_without(monkeypatch, "EDGE_", EDGE_HOST="0.0.0.0")
    assert refusal(EdgeSettings, capsys) == (
        "invalid configuration for EdgeSettings:\n"
        "  EDGE_ALLOW_ANONYMOUS: no API keys configured and host 0.0.0.0 is not loopback: set EDGE_API_KEYS_FILE (or"
        " EDGE_API_KEYS), or EDGE_ALLOW_ANONYMOUS=true to serve every caller as one anonymous tenant\n"
    )
    monkeypatch.setenv("EDGE_ALLOW_ANONYMOUS", "false")  # set by the user: what it was set to is said
    assert refusal(EdgeSettings, capsys).endswith(" anonymous tenant (got 'false')\n")


def test_a_default_refused_for_another_settings_value_is_not_quoted_as_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EDGE_FILES_TENANT_BYTES unset, its default refused for the EDGE_BATCH_MAX_FILE_BYTES set: its message says it
    all, and '(got 1073741824)' of a variable no one set read as a value given."""
    environment_without(monkeypatch, "EDGE_", EDGE_BATCH_MAX_FILE_BYTES=str(2 * 1024**3))
    said = refusal(EdgeSettings, capsys)
    line = said.removeprefix("invalid configuration for EdgeSettings:\n")
    assert line.startswith("  EDGE_FILES_TENANT_BYTES: EDGE_FILES_TENANT_BYTES (1073741824) is under")
    assert said.endswith("; raise it\n")
