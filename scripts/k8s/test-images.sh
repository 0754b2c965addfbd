#!/usr/bin/env bash
# `make test-images`: make sure a Docker engine runs (install docker.io + debootstrap and start dockerd
# as root if needed), then build both images and run the docker-marked tests against them.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTEST="${PYTEST:-.venv/bin/pytest}"

engine_up() { docker info >/dev/null 2>&1; }

if ! engine_up; then
  if [[ "$(id -u)" != "0" ]]; then
    echo "error: no Docker engine running and not root: start Docker, then re-run make test-images" >&2
    exit 1
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap
  fi
  echo "starting dockerd (log: /tmp/clinrisk-dockerd.log)"
  nohup dockerd >/tmp/clinrisk-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    engine_up && break
    sleep 1
  done
  engine_up || { echo "error: dockerd did not start; see /tmp/clinrisk-dockerd.log" >&2; exit 1; }
fi

start=$(date +%s)
images/build.sh all
echo "images built in $(( $(date +%s) - start ))s"
CLINRISK_SKIP_IMAGE_BUILD=1 "$PYTEST" -q -m docker tests/k8s/test_images.py
echo "make test-images took $(( $(date +%s) - start ))s (after the engine was up)"
