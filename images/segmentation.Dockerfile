# syntax=docker/dockerfile:1
# clinrisk segmentation image: the pipeline image plus the JAX stack (jax, jaxlib, optax) that the shared
# images leave out. The segmentation pipeline's model steps (train, evaluate, register) name it as their
# base_image (pipelines/segmentation.py, CLINRISK_SEGMENTATION_IMAGE); its data steps run in the pipeline
# image. Context: the wheelhouse dir made by images/build.sh (wheels/segmentation/ + requirements-segmentation.txt).
ARG PIPELINE_IMAGE=clinrisk/pipeline:0.1.0

# The JAX wheels go into a separate folder first, so the final image gets one layer of installed files and
# no layer of wheels. --target with --no-deps: the list is exactly the closure the pipeline image lacks
# (images/segmentation_requirements.py), so nothing already in /opt/venv is touched. The bytecode is
# compiled for the path it ends up at, and used unchecked (the root FS is read-only).
FROM ${PIPELINE_IMAGE} AS jax
USER root
COPY requirements-segmentation.txt /wheels/requirements-segmentation.txt
COPY wheels/segmentation/ /wheels/segmentation/
RUN /usr/local/bin/python3 -m pip install --no-cache-dir --no-index --no-deps --target /opt/jax-site \
      --find-links /wheels/segmentation -r /wheels/requirements-segmentation.txt \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      -s /opt/jax-site -p /opt/venv/lib/python3.11/site-packages /opt/jax-site

FROM ${PIPELINE_IMAGE}
COPY --from=jax /opt/jax-site/ /opt/venv/lib/python3.11/site-packages/
# The whole venv must be consistent (jax's own requirements met by the pipeline image's pins).
RUN /usr/local/bin/python3 -m pip --python /opt/venv/bin/python check
# CPU only: no probing for GPU/TPU plugins at import.
ENV JAX_PLATFORMS=cpu
USER 10001:10001
