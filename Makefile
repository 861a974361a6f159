# tts-operator: the one vocabulary for building, testing and running it locally.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# tools installed into the shared dependency venv (see hack/setup-python.sh)
DEPS_BIN = $(shell cat .venv/.deps 2>/dev/null)/bin

.PHONY: help setup test lint typecheck crds crds-check unit cluster-test cluster-up cluster-down cluster-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

setup: ## install everything: Debian packages, the control plane (built once, cached), the Python venv
	bash hack/setup-system.sh
	bash hack/build-control-plane.sh all
	bash hack/setup-python.sh

test: lint typecheck crds-check ## lint, type checks and every test (cluster tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: ## ruff lint and format check; hadolint on the Dockerfiles
	$(PY) -m ruff check operator runtime tests
	$(PY) -m ruff format --check operator runtime tests
	$(DEPS_BIN)/hadolint Dockerfile.runtime Dockerfile.operator

typecheck: ## mypy on both packages
	$(PY) -m mypy

crds: ## regenerate crds/ from the pydantic models
	$(PY) -m tts_operator.crdgen --out crds

crds-check: ## fail when crds/ is stale
	$(PY) -m tts_operator.crdgen --check --out crds

unit: ## the fast tests only (no cluster, no models)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

cluster-up: ## start the local control plane (prints the kubeconfig)
	.venv/bin/tts-operator dev cluster up

cluster-down: ## stop it (by PID; nothing left running)
	.venv/bin/tts-operator dev cluster down

cluster-status: ## is it running?
	.venv/bin/tts-operator dev cluster status

clean: cluster-down ## stop the cluster and remove local state (.cluster/, caches in the checkout)
	rm -rf .cluster .pytest_cache .mypy_cache .ruff_cache
