# syntax=docker/dockerfile:1
# clinrisk pipeline image: the library + kfp executor, used as base_image by every KFP component.
# Build context: the wheelhouse dir made by images/build.sh (wheels/ + requirements-image.txt), so the
# build needs no package index (air-gapped clusters, no-registry CI). No RUN --mount (no buildx needed).
ARG BASE_IMAGE=python:3.11-slim

# Pinned dependencies only (same stage text as serving.Dockerfile, so both images share it): this stage and
# the final stage's copy of it stay cached until requirements.lock changes. The venv never gets its own
# pip: the base image's pip installs into it (`pip --python`).
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements-image.txt /wheels/requirements-image.txt
COPY wheels/deps/ /wheels/deps/
RUN python3 -m venv --without-pip /opt/venv \
 && python3 -m pip --python /opt/venv/bin/python install --no-index --find-links /wheels/deps \
      -r /wheels/requirements-image.txt \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib

FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# libgomp1 is LightGBM's OpenMP runtime; the local debootstrap base already has it.
RUN if ! ldconfig -p | grep -q 'libgomp.so.1'; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 clinrisk && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp clinrisk \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=deps /opt/venv /opt/venv
# The clinrisk wheel changes most often: only this small layer is rebuilt when the code changes.
COPY wheels/clinrisk/ /wheels/clinrisk/
RUN python3 -m pip --python /opt/venv/bin/python install --no-index --no-deps /wheels/clinrisk/clinrisk-*.whl \
 && python3 -m pip --python /opt/venv/bin/python check \
 && rm -rf /wheels
# Read-only root FS: every writable path points at /tmp (an emptyDir/tmpfs in pods).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MLFLOW_TRACKING_URI=file:///tmp/mlruns
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["clinrisk"]
CMD ["--help"]
