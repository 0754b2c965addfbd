# syntax=docker/dockerfile:1
# MLflow tracking server for the cluster tier: the pipeline image (same pinned mlflow) plus the Postgres
# driver and boto3 for MinIO/S3 artifacts. Context: the wheelhouse dir made by images/build.sh.
ARG PIPELINE_IMAGE=clinrisk/pipeline:0.1.0
FROM ${PIPELINE_IMAGE}
USER root
COPY mlflow-requirements.txt /tmp/wheels-mlflow/requirements.txt
COPY wheels/mlflow/ /tmp/wheels-mlflow/
# The venv has no pip (removed from the image); the base interpreter's pip installs into it.
RUN /usr/local/bin/python3 -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
      --find-links /tmp/wheels-mlflow -r /tmp/wheels-mlflow/requirements.txt \
 && rm -rf /tmp/wheels-mlflow
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
