#!/usr/bin/env bash
# `make test-platform` (also run by .ci/run): the cluster tier's data path, for real, on loopback.
#   PostgreSQL (Debian's binaries; apt-installed when missing and root) as MLflow's backend store,
#   MinIO built from its Go module (scripts/platform/build-minio.sh, cached in ~/.cache/clinrisk),
#   the MLflow tracking server with the args/env `helm template charts/mlflow` renders,
#   KServe's storage-initializer package (kserve-storage, own venv, as the init container has its own image),
#   a Docker engine and the pipeline/serving images (tier 2: steps and the server run in the images),
# then `pytest -m platform tests/platform` (tests/platform/conftest.py starts and stops the services).
# A service that fails to start fails the run, named, with the tail of its log.
# Env: CLINRISK_CACHE (default ~/.cache/clinrisk), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO_ROOT="$PWD"
CACHE="${CLINRISK_CACHE:-$HOME/.cache/clinrisk}"
KSERVE_STORAGE_VERSION="0.21.0"   # the storage initializer of KServe 0.21 (the `kserve` pin in requirements.lock)
T0=$(date +%s)
phase() { echo "[test-platform +$(($(date +%s) - T0))s] $*"; }
fail() { echo "error: $*" >&2; exit 2; }

# 1. PostgreSQL binaries (the chart runs postgres:16; Debian bookworm ships 15 — same wire protocol/SQL here).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  [[ "$(id -u)" == "0" ]] || fail "postgres: initdb not found and not root (apt-get install postgresql)"
  phase "installing postgresql (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/tmp/clinrisk-apt-pg.log 2>&1 \
    || { apt-get update -q >>/tmp/clinrisk-apt-pg.log 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >>/tmp/clinrisk-apt-pg.log 2>&1; } \
    || fail "postgres: apt-get install postgresql failed: $(tail -n 3 /tmp/clinrisk-apt-pg.log | tr '\n' ' ')"
fi

# 2. MinIO from its Go module (cold build ≈ minutes, then cached).
phase "MinIO (build or cache)"
MINIO_BIN="$(scripts/platform/build-minio.sh)" || fail "minio: build failed (see output above)"

# 3. helm for rendering charts/mlflow (make k8s-tools put it in .tools/k8s).
HELM="$REPO_ROOT/.tools/k8s/helm"
[[ -x "$HELM" ]] || fail "helm: $HELM missing (run make k8s-tools)"

# 4. Python environments: the server/test venv = project .venv + the mlflow image's extras (boto3, psycopg2);
#    KServe's storage initializer in its own venv.
SERVER_VENV="$CACHE/platform/mlflow-server-venv"
REQ_SUM="$(cat requirements.lock images/mlflow-requirements.txt | sha256sum | cut -c1-16)"
if [[ "$(cat "$SERVER_VENV/.stamp" 2>/dev/null || true)" != "$REQ_SUM:$REPO_ROOT" ]]; then
  phase "server venv: .venv + images/mlflow-requirements.txt"
  rm -rf "$SERVER_VENV" && python3 -m venv "$SERVER_VENV"
  site="$("$SERVER_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # An `import` line in a .pth runs at startup: addsitedir also processes .venv's own .pth files
  # (the editable clinrisk install).
  venv_site="$("$REPO_ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$venv_site')" > "$site/zz-clinrisk-venv.pth"
  "$SERVER_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r images/mlflow-requirements.txt
  # The console script must run under this interpreter (it carries psycopg2/boto3).
  printf '#!%s\nimport sys\nfrom mlflow.cli import cli\nsys.exit(cli())\n' "$SERVER_VENV/bin/python" > "$SERVER_VENV/bin/mlflow"
  chmod +x "$SERVER_VENV/bin/mlflow"
  echo "$REQ_SUM:$REPO_ROOT" > "$SERVER_VENV/.stamp"
fi
KS_VENV="$CACHE/platform/kserve-storage-$KSERVE_STORAGE_VERSION"
if ! "$KS_VENV/bin/python" -c 'import kserve_storage' >/dev/null 2>&1; then
  phase "kserve-storage $KSERVE_STORAGE_VERSION venv"
  rm -rf "$KS_VENV" && python3 -m venv "$KS_VENV"
  "$KS_VENV/bin/pip" install -q --disable-pip-version-check "kserve-storage==$KSERVE_STORAGE_VERSION" \
    || fail "kserve-storage: pip install kserve-storage==$KSERVE_STORAGE_VERSION failed"
fi

# 5. Tier 2: a Docker engine and the images, so the pipeline's steps run in the pipeline image and the serving
#    image answers (CLINRISK_PLATFORM_RUNNER=docker). Started here like scripts/k8s/test-images.sh does
#    (`dockerd --bridge=none --iptables=false`: the containers use the host network, where the proxy and the
#    services listen), and stopped on exit. Without an engine the same tests run the steps on the host, and the
#    run says so. CLINRISK_SKIP_IMAGE_BUILD=1 reuses images built just before (.ci/run: after make test-images).
RUNNER="subprocess"
DOCKERD_PID=""
stop_dockerd() {
  if [[ -n "$DOCKERD_PID" ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill "$DOCKERD_PID"
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
}
trap stop_dockerd EXIT
engine_up() { timeout 20 docker info >/dev/null 2>&1; }
if ! engine_up && [[ "$(id -u)" == "0" ]] && command -v dockerd >/dev/null 2>&1; then
  phase "starting dockerd (log: /tmp/clinrisk-platform-dockerd.log)"
  nice -n 10 dockerd --bridge=none --iptables=false >/tmp/clinrisk-platform-dockerd.log 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do engine_up && break; kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
fi
if engine_up; then
  if [[ "${CLINRISK_SKIP_IMAGE_BUILD:-0}" != "1" ]]; then
    phase "images (images/build.sh pipeline serving; cached layers)"
    nice -n 10 images/build.sh pipeline || fail "images: images/build.sh pipeline failed"
    nice -n 10 images/build.sh serving || fail "images: images/build.sh serving failed"
  fi
  RUNNER="docker"
else
  echo "SKIPPED: tier 2 of test-platform (pipeline and serving images): no Docker engine could be started" \
       "(not root, no dockerd, or it did not answer; see /tmp/clinrisk-platform-dockerd.log); the steps run on the host"
fi

phase "services + tests (runner: $RUNNER)"
# A private pytest base dir: pytest prunes old /tmp/pytest-of-$USER/pytest-N dirs, and other pytest runs on a
# shared machine would delete this run's service data underneath it.
BASETEMP="$(mktemp -d /tmp/clinrisk-platform.XXXXXX)"
set +e
CLINRISK_PLATFORM_RUNNER="$RUNNER" CLINRISK_REQUIRE_DOCKER=$([[ $RUNNER == docker ]] && echo 1 || echo 0) \
CLINRISK_MINIO_BIN="$MINIO_BIN" CLINRISK_HELM="$HELM" CLINRISK_KSERVE_STORAGE_PYTHON="$KS_VENV/bin/python" \
  CLINRISK_REQUIRE_PLATFORM=1 "$SERVER_VENV/bin/python" -m pytest -q -m platform -p no:cacheprovider -s --basetemp "$BASETEMP" \
  ${PYTEST_ARGS:-} tests/platform
rc=$?
set -e
[[ $rc -eq 5 ]] && fail "pytest collected no platform tests"
[[ $rc -eq 0 ]] && rm -rf "$BASETEMP" || echo "service logs and data kept in $BASETEMP"
phase "done (pytest exit $rc): make test-platform took $(($(date +%s) - T0))s"
exit $rc
