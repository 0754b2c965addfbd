# clinrisk — the single developer entry point.
#   make run    the main job on the embedded default (tier 1: kfp.local + local MLflow + local KServe)
#   make test   every test (sets up its own virtual environment)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
CONFIG ?= configs/default.yaml
STAMP := $(VENV)/.installed

.PHONY: venv run test test-fast lint bench lock clean help

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP) ## create/refresh the virtual environment from the lock file

run: venv ## run the main job on the default config
	$(BIN)/clinrisk run --config $(CONFIG)

test: venv ## run the whole test suite
	$(BIN)/pytest -q tests

lint: venv ## ruff + mypy
	$(BIN)/ruff check src tests components pipelines benchmarks
	$(BIN)/ruff format --check src tests components pipelines benchmarks
	$(BIN)/mypy

bench: venv ## run the benchmarks (prints medians and ratios)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

lock: ## re-resolve dependencies from pyproject.toml into requirements.lock
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q -e ".[dev]"
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lockenv

clean: ## remove outputs (not the venv)
	rm -rf outputs
