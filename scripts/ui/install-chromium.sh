#!/usr/bin/env bash
# Install Debian's headless Chromium for the browser tier (`make test-ui`). Idempotent: exits at once when a
# chromium binary is already on PATH. Needs root (CI runs as root) and the Debian apt mirror.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "error: chromium: not installed and installing it needs root (apt-get install chromium)" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
