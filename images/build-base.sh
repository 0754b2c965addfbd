#!/usr/bin/env bash
# Build a local Python 3.11 base image from Debian bookworm (debootstrap + docker import), for machines
# that cannot pull python:3.11-slim from a registry. Same contract as the slim image for our Dockerfiles:
# python3 with venv + pip, libgomp1 (LightGBM), CA certificates, useradd.
# Usage: images/build-base.sh [IMAGE_NAME]   (default clinrisk/base:3.11-bookworm; reused if present)
set -euo pipefail

IMAGE="${1:-clinrisk/base:3.11-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3.11,python3.11-venv,python3-pip,libgomp1,ca-certificates,passwd"

if docker image inspect "$IMAGE" >/dev/null 2>&1 && [[ "${FORCE_BASE:-0}" != "1" ]]; then
  echo "base image $IMAGE present (FORCE_BASE=1 rebuilds)"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "error: debootstrap not found (apt-get install -y debootstrap, as root)" >&2
  exit 1
fi

ROOTFS="$(mktemp -d /tmp/clinrisk-rootfs.XXXXXX)"
cleanup() { rm -rf "$ROOTFS"; }  # the log stays for a failed run
trap cleanup EXIT

echo "debootstrap bookworm into $ROOTFS (log: $ROOTFS.log)"
if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
  tail -n 40 "$ROOTFS.log" >&2
  echo "error: debootstrap failed (full log: $ROOTFS.log)" >&2
  exit 1
fi
# Make `python3` and `python` the 3.11 interpreter like the slim image, and slim the tree down.
chroot "$ROOTFS" ln -sf /usr/bin/python3.11 /usr/local/bin/python
chroot "$ROOTFS" ln -sf /usr/bin/python3.11 /usr/local/bin/python3
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*

tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$IMAGE"
rm -f "$ROOTFS.log"
echo "built base image $IMAGE"
