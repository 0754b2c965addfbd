# syntax=docker/dockerfile:1
# clinrisk segmentation image: the pipeline image's layers plus the JAX stack (jax, jaxlib, optax) that the
# shared images leave out. The segmentation pipeline's model steps (train, evaluate, register) name it as their
# base_image (pipelines/segmentation.py, CLINRISK_SEGMENTATION_IMAGE); its data steps run in the pipeline
# image. Context: the wheelhouse dir made by images/build.sh (wheels/ + requirements-*.txt).
#
# Layer order is the point of this file: pinned deps, then JAX, then the clinrisk wheel, so a code change
# rebuilds only the small wheel layer (built FROM the finished pipeline image, every code change re-ran the
# JAX install above it: ~217 s). The `deps` stage and the runtime stage up to the wheel are the pipeline
# image's text (images/pipeline.Dockerfile), so Docker's cache shares those layers with it;
# tests/usecases/segmentation/test_image_layers.py holds the two files in step.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements-image.txt /wheels/requirements-image.txt
COPY wheels/deps/ /wheels/deps/
RUN python3 -m venv --without-pip /opt/venv \
 && python3 -m pip --python /opt/venv/bin/python install --no-index --find-links /wheels/deps \
      -r /wheels/requirements-image.txt \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib

# The JAX wheels go into a separate folder first, so the final image gets one layer of installed files and
# no layer of wheels. --target with --no-deps: the list is exactly the closure the pipeline image lacks
# (images/segmentation_requirements.py), so nothing of `deps` is touched. The bytecode is compiled for the
# path it ends up at, and used unchecked (the root FS is read-only). It depends on the lock only.
FROM ${BASE_IMAGE} AS jax
COPY requirements-segmentation.txt /wheels/requirements-segmentation.txt
COPY wheels/segmentation/ /wheels/segmentation/
RUN python3 -m pip install --no-cache-dir --no-index --no-deps --target /opt/jax-site \
      --find-links /wheels/segmentation -r /wheels/requirements-segmentation.txt \
 && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      -s /opt/jax-site -p /opt/venv/lib/python3.11/site-packages /opt/jax-site

FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# libgomp1 is LightGBM's OpenMP runtime; the local debootstrap base already has it.
RUN if ! ldconfig -p | grep -q 'libgomp.so.1'; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 clinrisk && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp clinrisk \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=deps /opt/venv /opt/venv
COPY --from=jax /opt/jax-site/ /opt/venv/lib/python3.11/site-packages/
# The clinrisk wheel changes most often: only this small layer is rebuilt when the code changes. The whole
# venv must be consistent (jax's own requirements met by the pipeline image's pins).
COPY wheels/clinrisk/ /wheels/clinrisk/
RUN python3 -m pip --python /opt/venv/bin/python install --no-index --no-deps /wheels/clinrisk/clinrisk-*.whl \
 && python3 -m pip --python /opt/venv/bin/python check \
 && rm -rf /wheels
# Read-only root FS: every writable path points at /tmp (an emptyDir/tmpfs in pods). CPU only: no probing
# for GPU/TPU plugins at import.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MLFLOW_TRACKING_URI=file:///tmp/mlruns \
    JAX_PLATFORMS=cpu
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["clinrisk"]
CMD ["--help"]
