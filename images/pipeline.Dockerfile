# syntax=docker/dockerfile:1
# clinrisk pipeline image: the library + kfp executor, used as base_image by every KFP component.
# Build context: the wheelhouse dir made by images/build.sh (wheels/ + requirements-image.txt), so the
# build needs no package index (air-gapped clusters, no-registry CI). No RUN --mount (no buildx needed).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements-image.txt /wheels/requirements-image.txt
COPY wheels/deps/ /wheels/deps/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels/deps -r /wheels/requirements-image.txt
# The clinrisk wheel changes most often: its own layer keeps the dependency layer cached.
COPY wheels/clinrisk/ /wheels/clinrisk/
RUN /opt/venv/bin/pip install --no-index --no-deps /wheels/clinrisk/clinrisk-*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib \
 && /opt/venv/bin/pip uninstall -y -q pip

FROM ${BASE_IMAGE}
# libgomp1 is LightGBM's OpenMP runtime; the local debootstrap base already has it.
RUN if ! ldconfig -p | grep -q 'libgomp.so.1'; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 clinrisk && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp clinrisk \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# Read-only root FS: every writable path points at /tmp (an emptyDir/tmpfs in pods).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MLFLOW_TRACKING_URI=file:///tmp/mlruns
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["clinrisk"]
CMD ["--help"]
