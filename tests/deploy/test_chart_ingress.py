"""The Ingress values: values.schema.json refuses a wrong type or form at `helm template`, naming the value, rather than
letting it render an Ingress the API server refuses (or one routing nothing); the documented examples render valid
Ingresses (kubernetes-validate, strict). Needs helm and kubernetes-validate (deploy/install-tools.sh; without them, a
failure under CI=true)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .support import CHART, ROOT, by_kind, render, tool
from .test_terraform import module_values

SCHEMA_REFUSAL = "values don't meet the specifications of the schema"
ROUTE = {"path": "/", "pathType": "Prefix"}


def ingress_with(**values: object) -> tuple[str, str]:
    """--set-json arguments giving these ingress values, enabled."""
    return ("--set-json", "ingress=" + json.dumps({"enabled": True, **values}))


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"hosts": "llm.example.com"}, "at '/ingress/hosts': got string, want array"),
        (
            {"hosts": [{"host": "llm.example.com", "paths": ROUTE}]},
            "at '/ingress/hosts/0/paths': got object, want array",
        ),
        ({"hosts": [{"host": "llm.example.com", "paths": []}]}, "at '/ingress/hosts/0/paths'"),  # routes nothing
        ({"hosts": [{"host": "llm.example.com", "paths": ["/"]}]}, "at '/ingress/hosts/0/paths/0': got string"),
        ({"hosts": [{"host": "llm.example.com", "paths": [{"path": "/"}]}]}, "missing property 'pathType'"),
        ({"hosts": [{"paths": [{"path": "v1", "pathType": "Prefix"}]}]}, "at '/ingress/hosts/0/paths/0/path'"),
        ({"hosts": [{"paths": [{"path": "/", "pathType": "prefix"}]}]}, "at '/ingress/hosts/0/paths/0/pathType'"),
        ({"hosts": [{"host": 5, "paths": [ROUTE]}]}, "at '/ingress/hosts/0/host': got number, want string"),
        ({"hosts": [{"host": "https://llm.example.com", "paths": [ROUTE]}]}, "at '/ingress/hosts/0/host'"),
        ({"hosts": [{"host": "llm.example.com:443", "paths": [ROUTE]}]}, "at '/ingress/hosts/0/host'"),
        ({"hosts": [{"host": "10.0.0.1", "paths": [ROUTE]}]}, "at '/ingress/hosts/0/host'"),  # an IP: no DNS name
        ({"hosts": [{"host": "LLM.example.com", "paths": [ROUTE]}]}, "at '/ingress/hosts/0/host'"),
        (
            {"hosts": [{"hostname": "llm.example.com", "paths": [ROUTE]}]},
            "additional properties 'hostname' not allowed",
        ),
        ({"hosts": []}, "at '/ingress/hosts'"),  # no rule and no default backend: the API server refuses it
        ({"host": "llm.example.com"}, "additional properties 'host' not allowed"),
        ({"tls": {"secretName": "llm-tls"}}, "at '/ingress/tls': got object, want array"),
        ({"tls": [{"secretName": "llm-tls", "hosts": "llm.example.com"}]}, "at '/ingress/tls/0/hosts': got string"),
        ({"tls": [{"secretName": "llm_TLS"}]}, "at '/ingress/tls/0/secretName'"),  # no Secret's name
        ({"tls": [{"secret": "llm-tls"}]}, "additional properties 'secret' not allowed"),
        ({"className": 5}, "at '/ingress/className': got number, want string"),
        ({"className": "Nginx"}, "at '/ingress/className'"),  # no IngressClass' name
        ({"annotations": ["nginx.ingress.kubernetes.io/proxy-body-size=101m"]}, "at '/ingress/annotations': got array"),
        # unquoted in YAML, a number: the API server takes only strings
        (
            {"annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": 330}},
            "at '/ingress/annotations/nginx.ingress.kubernetes.io~1proxy-read-timeout': got number, want string",
        ),
        (
            {"annotations": {"proxy read timeout": "330"}},
            "invalid propertyName 'proxy read timeout'",
        ),  # no annotation's name
        ({"enabled": "yes"}, "at '/ingress/enabled': got string, want boolean"),
    ],
    ids=lambda v: json.dumps(v)[:70] if isinstance(v, dict) else None,
)
def test_ingress_values_of_a_wrong_type_or_form_are_refused(values: dict, complaint: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(*ingress_with(**values))
    assert SCHEMA_REFUSAL in failure.value.stderr
    assert complaint in failure.value.stderr, failure.value.stderr


def _tfvars_ingress() -> dict:
    """The ingress terraform/terraform.tfvars.example gives, as the module's variable."""
    text = (ROOT / "terraform" / "terraform.tfvars.example").read_text()
    (block,) = re.findall(r"^ingress = \{\n(.*?)^\}", text, re.M | re.S)
    ingress: dict = dict(re.findall(r'^\s*(\w+)\s*=\s*"([^"]*)"\s*$', block, re.M))
    (annotations,) = re.findall(r"^\s*annotations\s*=\s*\{(.*)\}\s*$", block, re.M)
    ingress["annotations"] = dict(re.findall(r'"([^"]+)"\s*=\s*"([^"]*)"', annotations))
    return ingress


def documented(tmp_path: Path, example: str) -> list[str]:
    """The render arguments of each documented example."""
    if example == "values.yaml":  # the chart's own hosts, turned on
        return ["--set", "ingress.enabled=true"]
    if example == "production-values.yaml":
        return ["-f", str(CHART / "ci" / example)]
    if example == "terraform.tfvars.example":
        return ["-f", str(module_values(tmp_path, {"ingress": _tfvars_ingress()}))]
    # values.yaml's comments and the schema's descriptions: a TLS Secret, a wildcard host and a rule for every host
    tls = [{"secretName": "llm-example-com-tls", "hosts": ["llm.example.com", "*.llm.example.com"]}]
    hosts = [{"host": "*.llm.example.com", "paths": [ROUTE]}, {"paths": [{"path": "/v1", "pathType": "Exact"}]}]
    return list(ingress_with(className="nginx", hosts=hosts, tls=tls))


@pytest.mark.parametrize(
    "example", ["values.yaml", "production-values.yaml", "terraform.tfvars.example", "the comments' examples"]
)
def test_the_documented_ingress_examples_render_valid_ingresses(tmp_path: Path, example: str) -> None:
    args = documented(tmp_path, example)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["ingress"]
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            values |= yaml.safe_load(Path(args[i + 1]).read_text())["ingress"]
        elif arg == "--set-json":
            values |= json.loads(args[i + 1].removeprefix("ingress="))
    docs = render(*args)
    (ingress,) = by_kind(docs, "Ingress").values()
    spec = ingress["spec"]
    assert spec.get("ingressClassName", "") == values["className"]
    assert spec.get("tls", []) == values["tls"]
    assert ingress["metadata"].get("annotations", {}) == values["annotations"]
    edge = ingress["metadata"]["name"]  # the edge's Service, named as the Ingress
    assert by_kind(docs, "Service")[edge]["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"
    backend = {"service": {"name": edge, "port": {"name": "http"}}}
    assert [(rule.get("host"), rule["http"]["paths"]) for rule in spec["rules"]] == [
        (host.get("host"), [{**path, "backend": backend} for path in host["paths"]]) for host in values["hosts"]
    ]
    manifest = tmp_path / "ingress.yaml"
    manifest.write_text(yaml.safe_dump(ingress))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "--no-warn", "-k", "1.31.0", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_ingress_class_named_like_a_number_stays_a_string() -> None:
    """An IngressClass may be named 2024 (a DNS-1123 subdomain): written unquoted it became a number, which the API
    server refuses for ingressClassName."""
    (ingress,) = by_kind(render(*ingress_with(className="2024")), "Ingress").values()
    assert ingress["spec"]["ingressClassName"] == "2024"
