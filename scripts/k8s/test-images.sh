#!/usr/bin/env bash
# `make test-images` (also run by .ci/run): make sure a Docker engine runs, build both images, then run the
# docker-marked tests: image hygiene, a pipeline step in the pipeline image, the serving image answering V1
# on a freshly trained bundle, and the whole pipeline through kfp.local's DockerRunner (tier 2); then the
# segmentation images (images/build.sh segmentation): its pipeline through the DockerRunner, model steps in
# the JAX image, and its predictor image answering V1 with the in-process masks.
#
# With no engine running and root, it installs Debian's docker.io (+ debootstrap for the local base image)
# and starts `dockerd --bridge=none --iptables=false` (no bridge, NAT or iptables changes on the host; the
# tests need no container network), stopped again on exit. Only when no engine can be had at all does it
# print "SKIPPED: no Docker engine could be started: <reason>" and exit 0; once an engine runs, any build
# or test failure fails.
# Env: PYTEST (default .venv/bin/pytest), CLINRISK_DOCKERD_LOG (default /tmp/clinrisk-dockerd.log),
#      CLINRISK_KEEP_DOCKERD=1 leaves a dockerd started here running.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTEST="${PYTEST:-.venv/bin/pytest}"
DOCKERD_LOG="${CLINRISK_DOCKERD_LOG:-/tmp/clinrisk-dockerd.log}"
T0=$(date +%s)
STARTED_PID=""

phase() { echo "[test-images +$(($(date +%s) - T0))s] $*"; }
skip() {
  echo "SKIPPED: no Docker engine could be started: $*"
  exit 0
}
engine_up() { timeout 20 docker info >/dev/null 2>&1; }
stop_dockerd() {
  if [[ -n "$STARTED_PID" ]] && kill -0 "$STARTED_PID" 2>/dev/null; then
    kill "$STARTED_PID"
    for _ in $(seq 1 30); do kill -0 "$STARTED_PID" 2>/dev/null || break; sleep 1; done
  fi
  STARTED_PID=""
}
on_exit() { [[ "${CLINRISK_KEEP_DOCKERD:-0}" == "1" ]] || stop_dockerd; }
trap on_exit EXIT

# Start dockerd with the given extra flags; true when it answers within 60 s.
start_dockerd() {
  echo "dockerd --bridge=none --iptables=false $* (log: $DOCKERD_LOG)"
  nice -n 10 dockerd --bridge=none --iptables=false "$@" >"$DOCKERD_LOG" 2>&1 &
  STARTED_PID=$!
  for _ in $(seq 1 60); do
    engine_up && return 0
    kill -0 "$STARTED_PID" 2>/dev/null || break
    sleep 1
  done
  stop_dockerd
  return 1
}

if ! engine_up; then
  [[ "$(id -u)" == "0" ]] || skip "none is running and this user is not root (cannot install or start dockerd)"
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    phase "installing docker.io debootstrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/tmp/clinrisk-apt.log 2>&1 \
      && apt-get install -y -q docker.io debootstrap >>/tmp/clinrisk-apt.log 2>&1 \
      || skip "apt-get install docker.io debootstrap failed: $(tail -n 3 /tmp/clinrisk-apt.log | tr '\n' ' ')"
  fi
  command -v docker >/dev/null 2>&1 || skip "no docker client on PATH after installing docker.io"
  phase "starting dockerd"
  # overlay2 first; vfs (slow, but needs nothing from the kernel) if the overlay driver cannot start.
  if ! start_dockerd; then
    reason="$(grep -E 'level=(error|fatal)|failed to start' "$DOCKERD_LOG" | tail -n 3 | tr '\n' ' ')"
    start_dockerd --storage-driver=vfs \
      || skip "dockerd did not start or answer within 60 s (overlay2: ${reason:-see log}; vfs: $(tail -n 3 "$DOCKERD_LOG" | tr '\n' ' '))"
  fi
fi
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupVersion}}' || true

# Can the engine run a container at all? A one-file image made from the static tini that docker.io ships.
PROBE_IMAGE="clinrisk/engine-probe:1"
if ! docker image inspect "$PROBE_IMAGE" >/dev/null 2>&1; then
  TINI="$(command -v tini-static || command -v docker-init || true)"
  if [[ -n "$TINI" ]]; then
    PROBE_DIR="$(mktemp -d)"
    cp -L "$TINI" "$PROBE_DIR/tini"
    import_out="$(tar -C "$PROBE_DIR" -c tini | docker import - "$PROBE_IMAGE" 2>&1)" \
      || skip "the engine is up but cannot import an image: $import_out"
    rm -rf "$PROBE_DIR"
  fi
fi
if docker image inspect "$PROBE_IMAGE" >/dev/null 2>&1; then
  probe_out="$(docker run --rm --network none "$PROBE_IMAGE" /tini --version 2>&1)" \
    || skip "the engine is up but cannot run a container: $probe_out"
fi
phase "engine ready"

nice -n 10 images/build.sh all
phase "images built"
# The segmentation use case's two images (the pipeline and serving images plus the JAX stack).
nice -n 10 images/build.sh segmentation
phase "segmentation images built"
CLINRISK_SKIP_IMAGE_BUILD=1 CLINRISK_REQUIRE_DOCKER=1 \
  "$PYTEST" -q -m docker -p no:cacheprovider -s tests/k8s/test_images.py tests/pipeline/test_docker_runner.py \
  tests/platform/test_images_platform.py tests/usecases/segmentation/test_images.py
phase "done: make test-images took $(($(date +%s) - T0))s"
