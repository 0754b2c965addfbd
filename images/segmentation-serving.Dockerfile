# syntax=docker/dockerfile:1
# clinrisk segmentation predictor: the serving image's layers plus jax, jaxlib and Pillow, running
# `clinrisk segmentation serve` on the checkpoint folder KServe's storage initializer puts in /mnt/models
# (the InferenceService of clinrisk.usecases.segmentation.deploy). Context: the wheelhouse dir made by
# images/build.sh (wheels/ + requirements-*.txt).
#
# Layer order as in segmentation.Dockerfile: pinned deps, then JAX, then the clinrisk wheel (a code change
# rebuilds only the wheel layer). The `deps` stage and the runtime stage up to the wheel are
# images/serving.Dockerfile's text, so Docker's cache shares those layers with the serving image.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements-serving.txt /wheels/requirements-serving.txt
COPY wheels/deps/ /wheels/deps/
RUN python3 -m venv --without-pip /opt/venv \
 && python3 -m pip --python /opt/venv/bin/python install --no-index --find-links /wheels/deps \
      -r /wheels/requirements-serving.txt \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib

# As in segmentation.Dockerfile: install the closure the serving image lacks into a folder (lock only).
FROM ${BASE_IMAGE} AS jax
COPY requirements-segmentation-serving.txt /wheels/requirements-segmentation-serving.txt
COPY wheels/segmentation/ /wheels/segmentation/
RUN python3 -m pip install --no-cache-dir --no-index --no-deps --target /opt/jax-site \
      --find-links /wheels/segmentation -r /wheels/requirements-segmentation-serving.txt \
 && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      -s /opt/jax-site -p /opt/venv/lib/python3.11/site-packages /opt/jax-site

FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! ldconfig -p | grep -q 'libgomp.so.1'; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 clinrisk && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp clinrisk \
 && mkdir -p /mnt/models && chown 10001:10001 /mnt/models
COPY --from=deps /opt/venv /opt/venv
COPY --from=jax /opt/jax-site/ /opt/venv/lib/python3.11/site-packages/
COPY wheels/clinrisk/ /wheels/clinrisk/
# jax's own requirements must be met; the serving image's known gaps (clinrisk's training stack) stay allowed.
RUN set -e; \
    python3 -m pip --python /opt/venv/bin/python install --no-index --no-deps /wheels/clinrisk/clinrisk-*.whl; \
    { python3 -m pip --python /opt/venv/bin/python check || true; } \
      | grep -v -E '^clinrisk [^ ]+ requires (kfp|kfp-kubernetes|mlflow|matplotlib|scikit-learn|docker|dask|distributed|optax), which is not installed\.$' \
      | grep -v '^No broken requirements found\.$' > /tmp/pip-check.txt || true; \
    if [ -s /tmp/pip-check.txt ]; then cat /tmp/pip-check.txt; exit 1; fi; \
    rm -rf /wheels /tmp/pip-check.txt
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    JAX_PLATFORMS=cpu
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v1/models/segmentation', timeout=2)"]
# The default config's serving names (model segmentation); the container binds all interfaces explicitly.
ENTRYPOINT ["clinrisk", "segmentation", "serve"]
CMD ["--ckpt", "/mnt/models/best.npz", "--set", "serving.host=0.0.0.0", "--set", "serving.http_port=8080"]
