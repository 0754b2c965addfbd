"""Fixtures for `make test-platform` (marker ``platform``): the data-path services, started once per session.

scripts/platform/test-platform.sh provides what the services need and exports:
  CLINRISK_MINIO_BIN              MinIO built from its Go module
  CLINRISK_HELM                   helm, to render charts/mlflow (make k8s-tools)
  CLINRISK_KSERVE_STORAGE_PYTHON  a venv with KServe's storage-initializer package (kserve-storage)
  CLINRISK_REQUIRE_PLATFORM=1     a missing prerequisite fails instead of skipping
The tests themselves run in a venv that layers boto3 + psycopg2 (images/mlflow-requirements.txt, what the
mlflow image adds) over the project's .venv, so ``sys.executable``'s mlflow is the server's.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.platform import services as sv


@dataclass
class Stack:
    work: Path
    dns: sv.ClusterDns
    postgres: sv.Service
    minio: sv.Service
    mlflow: sv.Service
    helm: str
    pg_password: str
    kserve_python: str

    @property
    def tracking_uri(self) -> str:
        return f"http://{sv.MLFLOW_HOST}"

    def secret_values(
        self, access_key: str = sv.MINIO_USER, secret_key: str = sv.MINIO_PASSWORD
    ) -> dict[str, str]:
        return {"mlflow-postgres/password": self.pg_password, "mlflow-s3/AWS_ACCESS_KEY_ID": access_key,
                "mlflow-s3/AWS_SECRET_ACCESS_KEY": secret_key}  # fmt: skip

    def client_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.dns.env(), **extra}

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=f"http://{sv.MINIO_HOST}", aws_access_key_id=sv.MINIO_USER,
            aws_secret_access_key=sv.MINIO_PASSWORD, region_name="us-east-1",
        )  # fmt: skip


def _require(var: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        msg = f"{var} is not set: run `make test-platform` (scripts/platform/test-platform.sh)"
        if os.environ.get("CLINRISK_REQUIRE_PLATFORM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return value


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    minio_bin = _require("CLINRISK_MINIO_BIN")
    helm = _require("CLINRISK_HELM")
    kserve_python = _require("CLINRISK_KSERVE_STORAGE_PYTHON")
    work = tmp_path_factory.mktemp("platform")
    dns = sv.ClusterDns({})
    started: list[sv.Service] = []
    # Clients in this process (MLflow, boto3) reach the in-cluster names through the proxy.
    saved = {k: os.environ.get(k) for k in dns.env()}
    os.environ.update(dns.env())
    try:
        pg_password = sv.new_password()
        pg = sv.start_postgres(work, database="mlflow", user="mlflow", password=pg_password)
        started.append(pg)
        minio = sv.start_minio(work, minio_bin)
        started.append(minio)
        dns.routes[sv.MINIO_HOST] = ("127.0.0.1", minio.info["port"])
        stack = Stack(work, dns, pg, minio, minio, helm, pg_password, kserve_python)
        stack.s3().create_bucket(Bucket=sv.BUCKET)  # install-minio.sh: mc mb local/mlflow
        container = sv.chart_mlflow_container(helm)
        mlflow = sv.start_mlflow(
            work, sys.executable, container, pg.info["port"], stack.secret_values(), dns.env()
        )
        started.append(mlflow)
        stack.mlflow = mlflow
        for name in (sv.MLFLOW_HOST, "mlflow:5000", "mlflow.mlflow:5000", "mlflow.mlflow.svc:5000"):
            dns.routes[name] = ("127.0.0.1", mlflow.info["port"])
        yield stack
    finally:
        for svc in reversed(started):
            svc.stop()
        dns.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for svc in started:
            for key in ("data", "socket"):
                if svc.name == "postgres" and key in svc.info:
                    shutil.rmtree(svc.info[key], ignore_errors=True)
