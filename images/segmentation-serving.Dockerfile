# syntax=docker/dockerfile:1
# clinrisk segmentation predictor: the serving image (kserve.ModelServer) plus jax, jaxlib and Pillow, running
# `clinrisk segmentation serve` on the checkpoint folder KServe's storage initializer puts in /mnt/models
# (the InferenceService of clinrisk.usecases.segmentation.deploy). Context: the wheelhouse dir made by
# images/build.sh (wheels/segmentation/ + requirements-segmentation-serving.txt).
ARG SERVING_IMAGE=clinrisk/serving:0.1.0

# As in segmentation.Dockerfile: install the closure the serving image lacks into a folder, then copy it in.
FROM ${SERVING_IMAGE} AS jax
USER root
COPY requirements-segmentation-serving.txt /wheels/requirements-segmentation-serving.txt
COPY wheels/segmentation/ /wheels/segmentation/
RUN /usr/local/bin/python3 -m pip install --no-cache-dir --no-index --no-deps --target /opt/jax-site \
      --find-links /wheels/segmentation -r /wheels/requirements-segmentation-serving.txt \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      -s /opt/jax-site -p /opt/venv/lib/python3.11/site-packages /opt/jax-site

FROM ${SERVING_IMAGE}
COPY --from=jax /opt/jax-site/ /opt/venv/lib/python3.11/site-packages/
# jax's own requirements must be met; the serving image's known gaps (clinrisk's training stack) stay allowed.
RUN set -e; \
    { /usr/local/bin/python3 -m pip --python /opt/venv/bin/python check || true; } \
      | grep -v -E '^clinrisk [^ ]+ requires (kfp|mlflow|matplotlib|scikit-learn|docker|dask|distributed|optax), which is not installed\.$' \
      | grep -v '^No broken requirements found\.$' > /tmp/pip-check.txt || true; \
    if [ -s /tmp/pip-check.txt ]; then cat /tmp/pip-check.txt; exit 1; fi; \
    rm -f /tmp/pip-check.txt
ENV JAX_PLATFORMS=cpu
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v1/models/segmentation', timeout=2)"]
# The default config's serving names (model segmentation); the container binds all interfaces explicitly.
ENTRYPOINT ["clinrisk", "segmentation", "serve"]
CMD ["--ckpt", "/mnt/models/best.npz", "--set", "serving.host=0.0.0.0", "--set", "serving.http_port=8080"]
