"""The cluster's data path on loopback (make test-platform): MLflow on Postgres proxying artifacts into MinIO,
the pipeline logging to it under the in-cluster name, deploy resolution, KServe's storage initializer code,
the serving code answering V1 with the pipeline's own probability, and the failure modes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from tests.platform import services as sv
from tests.platform.conftest import Stack

pytestmark = pytest.mark.platform
REPO = Path(__file__).resolve().parents[2]
N_PATIENTS = 1500


def _clinrisk(stack: Stack, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinrisk", *args], capture_output=True, text=True, timeout=timeout,
        env=stack.client_env(**env), cwd=stack.work,
    )  # fmt: skip


def _sets(stack: Stack, tracking_uri: str | None = None) -> list[str]:
    sets = {
        "run.output_dir": str(stack.work / "outputs"),
        "generate.n_patients": str(N_PATIENTS),
        "tracking.tracking_uri": tracking_uri or stack.tracking_uri,
        "tracking.artifacts_destination": "s3://mlflow",
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def pipeline(stack: Stack) -> dict[str, Any]:
    """The whole pipeline (kfp.local), every step logging to the server under its in-cluster name."""
    t0 = time.monotonic()
    out = _clinrisk(stack, "pipeline", "run", "--config", str(REPO / "configs/tiny.yaml"), *_sets(stack))
    assert out.returncode == 0, f"pipeline failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    m = re.search(r"registered model : (models:/\S+)", out.stdout)
    d = re.search(r"pipeline outputs : (\S+)", out.stdout)
    assert m and d, out.stdout
    return {"model_uri": m.group(1), "dir": Path(d.group(1)), "seconds": time.monotonic() - t0}


def test_mlflow_runs_with_the_charts_arguments(stack: Stack) -> None:
    argv = stack.mlflow.info["argv"]
    assert "--serve-artifacts" in argv and "--artifacts-destination=s3://mlflow" in argv
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://mlflow:") for a in argv)
    assert stack.mlflow.info["env"]["MLFLOW_S3_ENDPOINT_URL"] == f"http://{sv.MINIO_HOST}"
    hosts = next(a for a in argv if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"mlflow.mlflow.svc.cluster.local:*", "mlflow:*"} <= set(hosts)


@pytest.mark.parametrize(
    "host", [sv.MLFLOW_HOST, "mlflow:5000", "mlflow.mlflow:5000", "mlflow.mlflow.svc:5000", "localhost:5000"]
)
def test_in_cluster_host_headers_reach_the_api(stack: Stack, host: str) -> None:
    port = stack.mlflow.info["port"]
    status, body = sv.http_status(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", {"Host": host}
    )
    assert status == 200, f"Host {host}: {status} {body[:200]}"


def test_foreign_host_is_rejected_while_health_stays_green(stack: Stack) -> None:
    """What the chart's allow-list guards against, and why /health readiness could not reveal it."""
    port = stack.mlflow.info["port"]
    status, body = sv.http_status(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
        {"Host": "evil.example:5000"},
    )
    assert status == 403 and "Invalid Host header" in body
    assert sv.http_status(f"http://127.0.0.1:{port}/health", {"Host": "evil.example:5000"})[0] == 200


def test_pipeline_logs_to_the_server_and_artifacts_land_in_the_object_store(
    stack: Stack, pipeline: dict[str, Any]
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.tracking_uri)
    name, version = pipeline["model_uri"].removeprefix("models:/").split("/")
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics, "train/evaluate metrics logged into one run"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    exp_id = run.info.experiment_id
    keys = [
        o["Key"]
        for o in stack.s3().list_objects_v2(Bucket=sv.BUCKET, Prefix=f"{exp_id}/").get("Contents", [])
    ]
    assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
    assert any(k.endswith("evaluation/predictions.parquet") for k in keys), keys[:20]
    # The backend is Postgres: the run is a row there, not in a sqlite file.
    assert not list((stack.work / "outputs").rglob("mlflow.db"))
    psql = [sv.postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(stack.postgres.info["port"]), "-U", "mlflow",
            "-d", "mlflow", "-tAc", f"select status from runs where run_uuid = '{run.info.run_id}'"]  # fmt: skip
    out = subprocess.run(psql, capture_output=True, text=True, env={"PGPASSWORD": stack.pg_password})
    assert out.stdout.strip() == "FINISHED", out.stderr


def _kserve_env(stack: Stack) -> dict[str, str]:
    """What KServe (s3_secret.go) gives the storage-initializer from the kind overlay's clinrisk-s3 Secret."""
    kust = yaml.safe_load((REPO / "manifests/overlays/kind/kustomization.yaml").read_text())
    (secret,) = [s for s in kust["secretGenerator"] if s["name"] == "clinrisk-s3"]
    ann = secret["options"]["annotations"]
    lit = dict(item.split("=", 1) for item in secret["literals"])
    https = ann.get("serving.kserve.io/s3-usehttps", "1") != "0"
    return stack.client_env(
        AWS_ACCESS_KEY_ID=lit["AWS_ACCESS_KEY_ID"], AWS_SECRET_ACCESS_KEY=lit["AWS_SECRET_ACCESS_KEY"],
        S3_ENDPOINT=ann["serving.kserve.io/s3-endpoint"],
        AWS_ENDPOINT_URL=("https://" if https else "http://") + ann["serving.kserve.io/s3-endpoint"],
        S3_USE_HTTPS="1" if https else "0", S3_VERIFY_SSL=ann.get("serving.kserve.io/s3-verifyssl", "1"),
        AWS_DEFAULT_REGION=ann.get("serving.kserve.io/s3-region", "us-east-1"),
    )  # fmt: skip


def _storage_initializer(stack: Stack, uri: str, dest: Path) -> subprocess.CompletedProcess[str]:
    # The init container runs kserve_storage's Storage.download(storageUri, /mnt/models).
    code = "import sys; from kserve_storage import Storage; print(Storage.download(sys.argv[1], sys.argv[2]))"
    return subprocess.run([stack.kserve_python, "-c", code, uri, str(dest)], capture_output=True, text=True,
                          timeout=300, env=_kserve_env(stack))  # fmt: skip


def _patient_instance(
    pipeline_dir: Path, predictions: pl.DataFrame, window: int
) -> tuple[dict[str, Any], float]:
    """A test-set patient-year the pipeline evaluated, as a V1 instance with that patient's full history."""
    from clinrisk.serving.request import instances_from_raw

    # validate-shard's output, one file per shard (the merged copies would duplicate patient-years).
    shards = sorted(pipeline_dir.glob("*/validate-shard/validated_shard/validated/**/shard=*/*.parquet"))
    assert shards, f"no validated shards under {pipeline_dir}"
    raw = pl.concat([pl.read_parquet(f) for f in shards], how="diagonal")
    for pid, year, prob in predictions.select("patient_id", "year", "probability").iter_rows():
        hist = raw.filter((pl.col("patient_id") == pid) & (pl.col("year") <= year))
        if hist.is_empty() or hist["dx_E11"].any():
            continue
        (inst,) = instances_from_raw(hist, window, full_history=True)
        return inst, float(prob)
    raise AssertionError("no evaluated patient-year found in the validated data")


def _serve(stack: Stack, model_dir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The serving image on the downloaded model dir when an engine and the image exist, else the host server."""
    import clinrisk

    port = sv.free_port()
    log = stack.work / "serving.log"
    image = f"clinrisk/serving:{clinrisk.__version__}"
    docker = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode == 0 \
        if _which("docker") else False  # fmt: skip
    if docker:
        argv = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001",
                "--cap-drop", "ALL", "--network", "host", "-v", f"{model_dir}:/mnt/models:ro", image,
                "--bundle", "/mnt/models", "--set", "serving.host=127.0.0.1", "--set", f"serving.http_port={port}",
                "--set", f"serving.grpc_port={sv.free_port()}"]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "clinrisk", "serve", "--bundle", str(model_dir), "--set",
                "serving.host=127.0.0.1", "--set", f"serving.http_port={port}", "--set",
                f"serving.grpc_port={sv.free_port()}"]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def test_registered_version_is_served_bit_equal_to_the_pipelines_evaluation(
    stack: Stack, pipeline: dict[str, Any]
) -> None:
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from clinrisk.config import load_config
    from clinrisk.serving.client import predict, wait_ready
    from clinrisk.tracking import resolve_storage_uri

    cfg = load_config(REPO / "configs/tiny.yaml", _sets(stack)[1::2])
    client = MlflowClient(stack.tracking_uri)
    name, version = pipeline["model_uri"].removeprefix("models:/").split("/")
    mv = client.get_model_version(name, version)
    registered_at = mv.creation_timestamp / 1000.0

    # The deploy step's resolution: registry URI -> storage URI in the bucket (not mlflow-artifacts:/).
    storage_uri = resolve_storage_uri(cfg, pipeline["model_uri"])
    assert re.fullmatch(r"s3://mlflow/\d+/models/m-[0-9a-f]+/artifacts/.+", storage_uri), storage_uri
    cli = _clinrisk(stack, "storage-uri", pipeline["model_uri"], "--config", str(REPO / "configs/tiny.yaml"),
                    *_sets(stack))  # fmt: skip
    assert cli.returncode == 0 and cli.stdout.strip() == storage_uri, cli.stderr

    # KServe's storage initializer code downloads it from the object store, as in the init container.
    model_dir = stack.work / "mnt-models"
    dl = _storage_initializer(stack, storage_uri, model_dir)
    assert dl.returncode == 0, f"storage initializer failed:\n{dl.stderr[-3000:]}"
    assert (model_dir / "model.txt").is_file() or any(model_dir.iterdir()), list(model_dir.iterdir())

    run = client.get_run(mv.run_id)
    preds_file = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="evaluation/predictions.parquet", dst_path=str(stack.work / "eval"),
        tracking_uri=stack.tracking_uri,
    )  # fmt: skip
    instance, expected = _patient_instance(
        pipeline["dir"], pl.read_parquet(preds_file), cfg.features.window_years
    )

    proc, base, log = _serve(stack, model_dir)
    try:
        try:
            wait_ready(base, cfg.serving.model_name, timeout_s=180)
            answer = predict(base, [instance], cfg.serving.model_name)
        except Exception as exc:
            raise AssertionError(f"serving failed: {exc}\n--- {log} ---\n{log.read_text()[-3000:]}") from exc
        served_at = time.time()
    finally:
        proc.terminate()
        proc.wait(30)
    got = answer["predictions"][0]["probability"]
    assert np.float64(got) == np.float64(expected), (got, expected)  # bit-equal, no tolerance
    print(
        f"\nPLATFORM-MEASURE pipeline {pipeline['seconds']:.1f} s (tiny, {N_PATIENTS} patients); "
        f"registration -> served answer {served_at - registered_at:.1f} s; storage URI {storage_uri}"
    )
    (stack.work.parent / "platform-measure.json").write_text(
        json.dumps({"pipeline_s": pipeline["seconds"], "registration_to_answer_s": served_at - registered_at})
    )


# ---- bad input ---------------------------------------------------------------------------------------


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, f"exit {out.returncode}:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and out.stderr.rstrip().endswith(errors[0]), out.stderr
    assert "Traceback" not in out.stderr
    print(f"\nPLATFORM-ERROR {errors[0]}")
    return errors[0]


def test_unreachable_tracking_server_is_one_line(stack: Stack) -> None:
    dead = f"http://127.0.0.1:{sv.free_port()}"
    line = _one_error_line(
        _clinrisk(stack, "storage-uri", "models:/clinrisk/1", *_sets(stack, dead), timeout=120)
    )
    assert f"tracking server {dead}: unreachable" in line


def test_missing_model_version_names_the_uri(stack: Stack, pipeline: dict[str, Any]) -> None:
    line = _one_error_line(_clinrisk(stack, "storage-uri", "models:/clinrisk/999", *_sets(stack)))
    assert "models:/clinrisk/999: cannot resolve registered model" in line


def _versions(stack: Stack) -> int:
    from mlflow.tracking import MlflowClient

    return len(MlflowClient(stack.tracking_uri).search_model_versions("name='clinrisk'"))


@pytest.mark.parametrize(
    "case,port,values,secret",
    [
        ("wrong-credentials", 5001, {}, {"secret_key": "not-the-minio-password"}),
        ("missing-bucket", 5002, {"artifacts.destination": "s3://no-such-bucket"}, {}),
    ],
)
def test_broken_object_store_registers_nothing(
    stack: Stack,
    pipeline: dict[str, Any],
    case: str,
    port: int,
    values: dict[str, str],
    secret: dict[str, str],
) -> None:
    """A second MLflow server from the same chart, whose object store is broken: register fails with one
    line naming the server, exit 2, and the registry holds no new (half-registered) version."""
    container = sv.chart_mlflow_container(stack.helm, values)
    bad = sv.start_mlflow(stack.work, sys.executable, container, stack.postgres.info["port"],
                          stack.secret_values(**secret), stack.dns.env(), name=f"mlflow-{case}")  # fmt: skip
    host = f"mlflow.mlflow.svc.cluster.local:{port}"  # same Service name, another port (allowed: name:*)
    stack.dns.routes[host] = ("127.0.0.1", bad.info["port"])
    try:
        before = _versions(stack)
        bundle = next(pipeline["dir"].rglob("bundle/model.txt"), None) or next(
            pipeline["dir"].rglob("model.txt")
        )
        out = _clinrisk(
            stack, "register", "--config", str(REPO / "configs/tiny.yaml"), *_sets(stack, f"http://{host}"),
            "--bundle", str(bundle.parent), timeout=600,
            # The client's retry budget only changes how long a failure takes to surface.
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        )  # fmt: skip
        line = _one_error_line(out)
        assert f"http://{host}: cannot register clinrisk" in line, line
        assert _versions(stack) == before
    finally:
        bad.stop()
