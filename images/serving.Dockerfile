# syntax=docker/dockerfile:1
# clinrisk serving image: kserve.ModelServer + clinrisk.serving predictor (`clinrisk serve`), loads the bundle from
# /mnt/models (KServe's storage initializer puts STORAGE_URI there). Same wheelhouse context as the
# pipeline image.
ARG BASE_IMAGE=python:3.11-slim

# Pinned dependencies only: requirements-serving.txt is the lock's subset that `clinrisk serve` needs
# (images/serving_requirements.py; no kfp, mlflow, matplotlib, scikit-learn). This stage stays cached until
# requirements.lock changes. The venv never gets its own pip: the base image's pip installs into it.
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements-serving.txt /wheels/requirements-serving.txt
COPY wheels/deps/ /wheels/deps/
RUN python3 -m venv --without-pip /opt/venv \
 && python3 -m pip --python /opt/venv/bin/python install --no-index --find-links /wheels/deps \
      -r /wheels/requirements-serving.txt \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib

FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! ldconfig -p | grep -q 'libgomp.so.1'; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 clinrisk && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp clinrisk \
 && mkdir -p /mnt/models && chown 10001:10001 /mnt/models
COPY --from=deps /opt/venv /opt/venv
COPY wheels/clinrisk/ /wheels/clinrisk/
# `pip check` must be clean except for clinrisk's own training-stack requirements, left out on purpose.
RUN set -e; \
    python3 -m pip --python /opt/venv/bin/python install --no-index --no-deps /wheels/clinrisk/clinrisk-*.whl; \
    { python3 -m pip --python /opt/venv/bin/python check || true; } \
      | grep -v -E '^clinrisk [^ ]+ requires (kfp|kfp-kubernetes|mlflow|matplotlib|scikit-learn|docker|dask|distributed), which is not installed\.$' \
      | grep -v '^No broken requirements found\.$' > /tmp/pip-check.txt || true; \
    if [ -s /tmp/pip-check.txt ]; then cat /tmp/pip-check.txt; exit 1; fi; \
    rm -rf /wheels /tmp/pip-check.txt
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v1/models/clinrisk', timeout=2)"]
# `clinrisk serve` runs kserve.ModelServer with the clinrisk predictor; the config default host is
# 127.0.0.1 (safe for tier 1), so the container binds all interfaces explicitly.
ENTRYPOINT ["clinrisk", "serve"]
CMD ["--bundle", "/mnt/models", "--set", "serving.host=0.0.0.0", "--set", "serving.http_port=8080"]
