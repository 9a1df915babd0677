# syntax=docker/dockerfile:1
# One image for the four services; each Kubernetes Deployment picks its service with the command:
#   python -m services.edge | services.router | services.classifier | services.providers
#
# Model artefacts are NOT built here. Training the classifier needs the routing data set (kept outside the
# repository, in ../shared/data/routing) and the heavy `build` extras (torch, transformers), none of which the
# serving image should carry. Build them once on the build host, then copy them in from the build context:
#   make artefacts                          # -> artefacts/classifier, artefacts/verifier, artefacts/smollm2
#   docker build -t llm-cost-router .       # or --build-arg ARTEFACTS=<another dir in the context>
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# checkov:skip=CKV_DOCKER_7: the base image is the PYTHON_IMAGE build arg above, pinned to a version tag
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; the chart probes each service (gRPC health, /healthz)

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llmrouter llmrouter
COPY services services
# A regular (not editable) install: the runtime stage takes /opt/venv alone. The pip cache stays in BuildKit.
RUN --mount=type=cache,target=/root/.cache/pip pip install .

FROM ${PYTHON_IMAGE}
ARG ARTEFACTS=artefacts
# HOME and caches on /tmp: the root filesystem is read-only in the pods (onnxruntime keeps a cache under ~/.cache,
# tiktoken under /tmp); the chart mounts an emptyDir there.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    ROUTER_REGISTRY_PATH=/app/config/models.yaml \
    PROVIDERS_REGISTRY_PATH=/app/config/models.yaml \
    CLASSIFIER_MODEL_DIR=/app/artefacts/classifier \
    CLASSIFIER_VERIFIER_DIR=/app/artefacts/verifier \
    PROVIDERS_LOCAL_MODEL_DIR=/app/artefacts/smollm2
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY config/models.yaml config/models.yaml
COPY ${ARTEFACTS}/classifier artefacts/classifier
COPY ${ARTEFACTS}/verifier artefacts/verifier
COPY ${ARTEFACTS}/smollm2 artefacts/smollm2
USER 10001:10001
# The services' ports (edge HTTP, gRPC, metrics), the ledger sink's metrics, and the chart's plaintext health port
# (tls.healthPort): tests/deploy/test_dockerfile_ports.py keeps this list whole.
EXPOSE 8080 50051 50052 50053 9101 9102 9103 9104 9105 8086
# No default service: Kubernetes sets the command; this one only says how to start.
CMD ["python", "-c", "print('run: python -m services.<edge|router|classifier|providers>')"]
