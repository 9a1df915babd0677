"""The NetworkPolicy peers in values (networkPolicy.edgeFrom and metricsFrom; egress' dns, providersTo, redisTo,
ledgerTo and webhookTo): values.schema.json takes them as the API takes a NetworkPolicyPeer (podSelector and
namespaceSelector, LabelSelectors, or ipBlock {cidr, except} alone) and refuses any other form at `helm template`,
naming the value, rather than rendering a policy the API server refuses at install; every form it takes renders
NetworkPolicies that kubernetes-validate (strict) takes, carrying the peers as given. Needs helm and
kubernetes-validate (deploy/install-tools.sh; without them, a failure under CI=true)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from .support import CHART, by_kind, render, tool

SCHEMA_REFUSAL = "values don't meet the specifications of the schema"
EGRESS = ("--set", "networkPolicy.egress.enabled=true")
# Each value holding peers, with the settings under which the chart renders a rule of them.
PEER_VALUES: dict[str, tuple[str, ...]] = {
    "edgeFrom": (),
    "metricsFrom": (),
    "egress.dns": EGRESS,
    "egress.providersTo": EGRESS,
    "egress.redisTo": (*EGRESS, "--set", "redis.money.url=redis://money.redis.example:6379/0"),
    "egress.ledgerTo": (*EGRESS, "--set", "router.ledgerDsnSecret.name=llm-ledger,router.ledgerDsnSecret.key=dsn"),
    "egress.webhookTo": (*EGRESS, "--set", "router.budgetWebhookSecret.name=hook,router.budgetWebhookSecret.key=url"),
}
# Every form of peer the API takes.
EVERY_FORM = [
    {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}},
    {"namespaceSelector": {}},
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {
            "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["prometheus", "vmagent"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ]
        },
    },
    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4/32"]}},
    {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}},
]


def validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate (strict: no unknown field) of the NetworkPolicies among these manifests."""
    manifest = tmp_path / "network-policies.yaml"
    manifest.write_text(yaml.safe_dump_all(list(by_kind(docs, "NetworkPolicy").values())))
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "--no-warn", "-k", "1.31.0", str(manifest)],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("value", PEER_VALUES)
def test_every_form_of_peer_renders_valid_policies_carrying_it(tmp_path: Path, value: str) -> None:
    docs = render(*PEER_VALUES[value], "--set-json", f"networkPolicy.{value}={json.dumps(EVERY_FORM)}")
    rules = [
        rule
        for policy in by_kind(docs, "NetworkPolicy").values()
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", [])
    ]
    assert any(rule.get("from", rule.get("to")) == EVERY_FORM for rule in rules), value
    result = validate(docs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_peers_render_valid_policies(tmp_path: Path) -> None:
    """values.yaml's (metricsFrom, dns, providersTo) with egress on, and ci/production-values.yaml's."""
    for docs in (render(*EGRESS), render("-f", str(CHART / "ci" / "production-values.yaml"))):
        result = validate(docs, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


# (peers, the schema's complaint, whether the API's OpenAPI schema refuses the rendered policy too: kubernetes-validate
# shows it; the others the API server's validation refuses, which no offline tool runs).
REFUSED = [
    ({"podSelector": {}}, "at '/networkPolicy/edgeFrom': got object, want array", True),
    (["10.0.0.0/8"], "at '/networkPolicy/edgeFrom/0': got string, want object", True),
    # labels written where matchLabels goes
    ([{"podSelector": {"app": "prometheus"}}], "additional properties 'app' not allowed", True),
    ([{"ipblock": {"cidr": "10.0.0.0/8"}}], "additional properties 'ipblock' not allowed", True),
    ([{"podSelector": {"matchLabels": {"tier": 1}}}], "matchLabels/tier': got number, want string", True),
    (
        [{"ipBlock": {"except": ["10.1.0.0/16"]}}],
        "at '/networkPolicy/edgeFrom/0/ipBlock': missing property 'cidr'",
        True,
    ),
    ([{"ipBlock": {"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}}], "ipBlock/except': got string, want array", True),
    ([{}], "at '/networkPolicy/edgeFrom/0': minProperties", False),  # "must specify a peer"
    (
        [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}],
        "at '/networkPolicy/edgeFrom/0': maxProperties",
        False,
    ),
    ([{"ipBlock": {"cidr": "10.0.0.0"}}], "at '/networkPolicy/edgeFrom/0/ipBlock/cidr'", False),
    ([{"ipBlock": {"cidr": "10.0.0.0/33"}}], "at '/networkPolicy/edgeFrom/0/ipBlock/cidr'", False),
    (
        [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0"]}}],
        "at '/networkPolicy/edgeFrom/0/ipBlock/except/0'",
        False,
    ),
    ([{"podSelector": {"matchLabels": {"tier": "a b"}}}], "matchLabels/tier'", False),
    ([{"podSelector": {"matchExpressions": [{"key": "app", "operator": "in", "values": ["x"]}]}}], "operator'", False),
    ([{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}], "missing property 'values'", False),
    (
        [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}],
        "values'",
        False,
    ),
]


@pytest.mark.parametrize(("peers", "complaint", "openapi"), REFUSED, ids=lambda v: json.dumps(v)[:70])
def test_peers_the_api_refuses_are_refused_at_render(
    tmp_path: Path, peers: object, complaint: str, openapi: bool
) -> None:
    setting = ("--set-json", f"networkPolicy.edgeFrom={json.dumps(peers)}")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*setting)
    assert SCHEMA_REFUSAL in failure.value.stderr
    assert complaint in failure.value.stderr, failure.value.stderr
    if openapi:  # what the chart rendered before: a policy the API refuses
        assert validate(render("--skip-schema-validation", *setting), tmp_path).returncode != 0


def test_egress_peers_are_typed_too() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*PEER_VALUES["egress.redisTo"], "--set", "networkPolicy.egress.redisTo[0].ipBlock=10.20.0.0/24")
    assert "at '/networkPolicy/egress/redisTo/0/ipBlock': got string, want object" in failure.value.stderr


def test_a_misspelt_network_policy_value_is_refused() -> None:
    """networkPolicy.edgefrom was ignored: the edge stayed open to every caller its author meant to keep out."""
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render("--set-json", 'networkPolicy.edgefrom=[{"namespaceSelector": {}}]')
    assert "at '/networkPolicy': additional properties 'edgefrom' not allowed" in failure.value.stderr
