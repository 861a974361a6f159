# tts-operator: the one vocabulary for building, testing and running it locally.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# tools installed into the shared dependency venv (see hack/setup-python.sh)
DEPS_BIN = $(shell cat .venv/.deps 2>/dev/null)/bin

.PHONY: help setup test lint typecheck crds crds-check unit cluster-test cluster-up cluster-down cluster-status env clean bench bench-scale proof soak \
	demo chart-crds chart-lint chart-test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

setup: ## install everything: Debian packages, the control plane (built once, cached), the Python venv
	bash hack/setup-system.sh
	@# the Go builds (CPU-bound) and the Python venv (mostly download and unpack) side by side
	@bash hack/build-control-plane.sh all & cp=$$!; \
	  bash hack/setup-python.sh; py=$$?; \
	  wait $$cp; cp=$$?; \
	  if [ $$cp -ne 0 ] || [ $$py -ne 0 ]; then \
	    echo "make setup: failed (control plane: exit $$cp, Python venv: exit $$py); the lines above say why" >&2; \
	    exit 1; \
	  fi

test: ## lint, type checks and every test (cluster tests included; the chaos suite in a lane of its own, hack/test.sh)
	$(MAKE) --no-print-directory -j3 lint typecheck crds-check
	bash hack/test.sh $(PYTEST_ARGS)

lint: ## ruff lint and format check; hadolint on the Dockerfiles
	$(PY) -m ruff check operator runtime contract devtools tests bench docs/tools
	$(PY) -m ruff format --check operator runtime contract devtools tests bench docs/tools
	$(DEPS_BIN)/hadolint Dockerfile.runtime Dockerfile.operator

typecheck: ## mypy on the packages (operator, runtime, contract, dev cluster)
	$(PY) -m mypy

crds: ## regenerate crds/ from the pydantic models (and the chart's copy)
	$(PY) -m tts_operator.crdgen --out crds
	$(MAKE) chart-crds

crds-check: ## fail when crds/ is stale
	$(PY) -m tts_operator.crdgen --check --out crds

unit: ## the fast tests only (no cluster, no models)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

soak: ## the serving soak at concurrency 8 for 30 minutes (CI runs 1 minute); figures in soak.json
	SOAK_SECONDS=$${SOAK_SECONDS:-1800} SOAK_REPORT=soak.json $(PY) -m pytest -s tests/runtime/serving/test_soak.py

bench: ## benchmarks as ratios to in-process baselines -> bench/results/*.json (BENCH_QUICK=1: short)
	$(PY) -m bench

bench-scale: ## the operator with 1000 VoiceModels + 500 TrainingRuns on the dev cluster -> bench/results/scale.json (BENCH_QUICK=1: 100 + 50)
	$(PY) -m bench scale

proof: ## run bench and bench-scale, then write docs/proof.md from every result and soak.json (render only: python -m bench.proof --render-only)
	$(PY) -m bench.proof

cluster-up: ## start the local control plane (prints the kubeconfig)
	.venv/bin/tts-operator dev cluster up

cluster-down: ## stop it (by PID; nothing left running)
	.venv/bin/tts-operator dev cluster down

env: ## the export lines for the project's kubectl, helm and KUBECONFIG: eval "$(make -s env)"
	@.venv/bin/tts-operator dev env

cluster-status: ## is it running?
	.venv/bin/tts-operator dev cluster status

clean: cluster-down ## stop the cluster and remove local state (.cluster/, caches in the checkout)
	rm -rf .cluster .pytest_cache .mypy_cache .ruff_cache

demo: ## the whole product locally: cluster, operator, train a tiny voice, export, serve, a wav (< 10 min)
	bash hack/demo.sh

HELM = $(shell bash hack/build-control-plane.sh print-bin)/helm

chart-crds: ## copy crds/ into the chart (Helm cannot read outside it); run after `make crds`
	cp crds/*.yaml charts/tts-operator/files/crds/

chart-lint: ## helm lint (strict) and a render of the chart
	$(HELM) lint --strict --kube-version 1.36.3 charts/tts-operator
	$(HELM) template tts charts/tts-operator --kube-version 1.36.3 >/dev/null

chart-test: ## the chart's tests: lint, render, RBAC minimality, server-side dry run, the operator as the chart's ServiceAccount
	$(PY) -m pytest tests/chart $(PYTEST_ARGS)
