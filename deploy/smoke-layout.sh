#!/usr/bin/env bash
# The image's layout without a Docker engine: install the repository the way the Dockerfile does (a regular
# `pip install .` into a fresh venv, run from a directory holding only config/ and artefacts/), start the four
# services with the environment the image and the chart give them, and check what Kubernetes would: gRPC health
# (the probes), GET /healthz, the metrics ports, one chat completion through the chain, and a clean SIGTERM
# drain. Loopback only, every wait bounded. Needs `make artefacts` first. Takes a few minutes the first time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/.tools/smoke"
PYTHON="${PYTHON:-python3.11}"
[[ -f "$ROOT/artefacts/classifier/model.onnx" && -d "$ROOT/artefacts/smollm2" ]] || { echo "run make artefacts first" >&2; exit 1; }

rm -rf "$WORK/src" "$WORK/app" && mkdir -p "$WORK/src" "$WORK/app/config"
cp -r "$ROOT"/{pyproject.toml,README.md,llmrouter,services} "$WORK/src/"        # the .dockerignore'd context
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
[[ -x "$WORK/venv/bin/python" ]] || "$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check "$WORK/src" 2>&1 | grep -v '^WARNING: Location' || true
# and this checkout's code, not a build pip considers already satisfied
"$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$WORK/src" 2>&1 \
  | grep -v '^WARNING: Location' || true
cp "$ROOT/config/models.yaml" "$WORK/app/config/"
cp -r "$ROOT/artefacts" "$WORK/app/"

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A PORT METRICS HEALTH
for s in classifier providers router edge; do PORT[$s]=$(free_port); METRICS[$s]=$(free_port); HEALTH[$s]=$(free_port); done

cd "$WORK/app"
export PATH="$WORK/venv/bin:$PATH" HOME="$WORK/app/tmp" XDG_CACHE_HOME="$WORK/app/tmp/.cache" \
  PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 \
  ROUTER_REGISTRY_PATH="$PWD/config/models.yaml" PROVIDERS_REGISTRY_PATH="$PWD/config/models.yaml" \
  CLASSIFIER_MODEL_DIR="$PWD/artefacts/classifier" PROVIDERS_LOCAL_MODEL_DIR="$PWD/artefacts/smollm2" \
  ROUTER_CLASSIFIER_ADDR="127.0.0.1:${PORT[classifier]}" ROUTER_PROVIDERS_ADDR="127.0.0.1:${PORT[providers]}" \
  EDGE_ROUTER_ADDR="127.0.0.1:${PORT[router]}"
mkdir -p tmp
# As the chart mounts them: one kubernetes.io/tls directory per service (mTLS, identity = subject CN).
python -c 'import sys; from pathlib import Path; from llmrouter.certs import Authority
ca = Authority.create()
for s in ("classifier", "providers", "router", "edge"): ca.write(Path(sys.argv[1]) / s, s)' "$PWD/tmp/tls"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
for s in classifier providers router edge; do
  P="${s^^}"
  env "${P}_HOST=127.0.0.1" "${P}_PORT=${PORT[$s]}" "${P}_METRICS_PORT=${METRICS[$s]}" \
    "${P}_TLS_DIR=$PWD/tmp/tls/$s" "${P}_HEALTH_PORT=${HEALTH[$s]}" \
    python -m "services.$s" >"$WORK/$s.log" 2>&1 &
  pids+=($!)
done

fail() { echo "FAIL: $*" >&2; tail -n 5 "$WORK"/*.log >&2; exit 1; }
python - "${HEALTH[classifier]}" "${HEALTH[providers]}" "${HEALTH[router]}" "${PORT[edge]}" <<'PY' || fail "services not healthy"
import sys, time, urllib.request
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
*grpc_ports, edge = sys.argv[1:]
deadline = time.monotonic() + 120
for port in grpc_ports:  # what the kubelet's native gRPC probe asks, on the plaintext health port
    while True:
        try:
            stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                print(f"ok   grpc.health.v1 SERVING on {port}")
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"no SERVING on {port}")
        time.sleep(1)
while True:
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{edge}/healthz", timeout=2).status == 200
        print(f"ok   GET /healthz on {edge}")
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("no /healthz")
        time.sleep(1)
PY
python - "${PORT[edge]}" "${METRICS[router]}" "${METRICS[edge]}" "${METRICS[classifier]}" <<'PY' || fail "chain or metrics"
import json, sys, urllib.request
edge, *metrics = sys.argv[1:]
body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{edge}/v1/chat/completions", body, {"content-type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=120))
assert reply["choices"][0]["message"]["content"], reply
print(f"ok   chat completion served by {reply['model']}")
for port in metrics:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "llmrouter_" in text, port
print("ok   metrics on the router, edge and classifier metrics ports")
PY
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do timeout 30 tail --pid="$pid" -f /dev/null || fail "pid $pid did not drain in 30s"; done
pids=()
grep -q '"msg": "stopped"' "$WORK/router.log" || fail "router did not log its drain"
echo "ok   SIGTERM drained all four"
echo "smoke layout: passed"
