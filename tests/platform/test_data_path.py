"""The cluster's data path on loopback (make test-platform): MLflow on Postgres proxying artifacts into MinIO,
the pipeline logging to it under the in-cluster name, deploy resolution, KServe's storage initializer code,
the serving code answering V1 with the pipeline's own probability, and the failure modes.

Tier 2: with a Docker engine and the images (scripts/platform/test-platform.sh starts dockerd and builds them,
then sets CLINRISK_PLATFORM_RUNNER=docker), every pipeline step runs in the pipeline image (kfp.local's
DockerRunner, host network, the proxy variables passed in) and the serving image answers; without one, the
same tests run the steps as host subprocesses and the server on the host. Each use case (clinical, leads)
goes through the same pipeline → registry → storage URI → storage initializer → V1 path.
"""

from __future__ import annotations

import json
import os
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

from clinrisk.stages.catalog import FUSED_MODEL_TASK, Catalog
from tests.platform import services as sv
from tests.platform.conftest import Stack

pytestmark = pytest.mark.platform
REPO = Path(__file__).resolve().parents[2]
N_PATIENTS = 1500
CONFIGS = {"clinical": REPO / "configs/tiny.yaml", "leads": REPO / "configs/leads/tiny.yaml"}
USECASES = list(CONFIGS)
# docker: each step in the pipeline image, the serving image serves (set by test-platform.sh when an engine runs).
RUNNER = os.environ.get("CLINRISK_PLATFORM_RUNNER", "subprocess")


def _clinrisk(stack: Stack, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinrisk", *args], capture_output=True, text=True, timeout=timeout,
        env=stack.client_env(**env), cwd=stack.work,
    )  # fmt: skip


def _sets(stack: Stack, tracking_uri: str | None = None, usecase: str = "clinical") -> list[str]:
    sets = {
        "run.output_dir": str(stack.work / "outputs" / usecase),
        "tracking.tracking_uri": tracking_uri or stack.tracking_uri,
        "tracking.artifacts_destination": "s3://mlflow",
    }
    if usecase == "clinical":
        sets["generate.n_patients"] = str(N_PATIENTS)
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _pipeline_image_containers(image: str, since: float, until: float) -> list[str]:
    """Exit codes of the containers of ``image`` that died in [since, until] (the engine's own record)."""
    out = subprocess.run(
        ["docker", "events", "--since", str(int(since)), "--until", str(int(until) + 1), "--filter",
         "type=container", "--filter", "event=die", "--filter", f"image={image}", "--format", "{{json .}}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(ln)["Actor"]["Attributes"].get("exitCode") for ln in out.stdout.splitlines() if ln]


def _run_pipeline(stack: Stack, usecase: str) -> dict[str, Any]:
    """The whole pipeline (kfp.local), every step logging to the server under its in-cluster name."""
    from clinrisk.images import pipeline_image

    runner = ["--runner", "docker"] if RUNNER == "docker" else []
    t0, since = time.monotonic(), time.time()
    out = _clinrisk(
        stack, "pipeline", "run", "-v", *runner, "--config", str(CONFIGS[usecase]),
        *_sets(stack, usecase=usecase), timeout=1500,
    )  # fmt: skip
    log = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # kfp colours its log lines
    assert out.returncode == 0, f"{usecase} pipeline failed:\n{log[-6000:]}"
    m = re.search(r"registered model : (models:/\S+)", out.stdout)
    d = re.search(r"pipeline outputs : (\S+)", out.stdout)
    assert m and d, out.stdout
    exits = _pipeline_image_containers(pipeline_image(), since, time.time()) if RUNNER == "docker" else []
    return {"model_uri": m.group(1), "dir": Path(d.group(1)), "seconds": time.monotonic() - t0,
            "containers": exits, "log": log}  # fmt: skip


@pytest.fixture(scope="module")
def pipelines(stack: Stack) -> Any:
    """Per use case, one pipeline run against the stack (run on first use, then shared)."""
    if RUNNER == "docker":
        from clinrisk.images import pipeline_image
        from clinrisk.pipeline_runner import ensure_docker_image

        ensure_docker_image(pipeline_image())
    runs: dict[str, dict[str, Any]] = {}

    def get(usecase: str) -> dict[str, Any]:
        if usecase not in runs:
            runs[usecase] = _run_pipeline(stack, usecase)
        return runs[usecase]

    return get


@pytest.fixture(scope="module", params=USECASES)
def usecase(request: pytest.FixtureRequest) -> str:
    """Module-scoped, so pytest runs one use case's tests together: its served answer follows its own
    registration (the registration → answer time then measures that path, not the other use case's run)."""
    return str(request.param)


@pytest.fixture(scope="module")
def pipeline(pipelines: Any) -> dict[str, Any]:
    return dict(pipelines("clinical"))


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
    stack: Stack, pipelines: Any, usecase: str
) -> None:
    from mlflow.tracking import MlflowClient

    from clinrisk.usecases import get

    pipeline = pipelines(usecase)
    if RUNNER == "docker":  # tier 2: every task was a container of the pipeline image, each exiting 0
        assert pipeline["containers"] and set(pipeline["containers"]) == {"0"}, pipeline["containers"]
        # register ran: its own task, or the local shape's one model task (pipeline.fuse_local_steps)
        assert any(f"Executing task '{t}'" in pipeline["log"] for t in ("register", FUSED_MODEL_TASK))
    client = MlflowClient(stack.tracking_uri)
    assert pipeline["model_uri"].startswith(f"models:/{get(usecase).names.model_name}/")
    name, version = pipeline["model_uri"].removeprefix("models:/").split("/")
    mv = client.get_model_version(name, version)
    run = client.get_run(str(mv.run_id))
    assert run.info.status == "FINISHED" and run.data.metrics, "train/evaluate metrics logged into one run"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    exp_id = run.info.experiment_id
    keys = [
        o["Key"]
        for o in stack.s3().list_objects_v2(Bucket=sv.BUCKET, Prefix=f"{exp_id}/").get("Contents", [])
    ]
    assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
    assert any(k.endswith("evaluation/report.html") for k in keys), keys[:20]
    # The registry holds reports, never row-level data (issue 18): predictions stay in the pipeline's outputs.
    assert not any(k.endswith(".parquet") for k in keys), [k for k in keys if k.endswith(".parquet")]
    # The backend is Postgres: the run is a row there, not in a sqlite file.
    assert not list((stack.work / "outputs" / usecase).rglob("mlflow.db"))
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


def _evaluated_instances(
    usecase: str, pipeline_dir: Path, predictions: pl.DataFrame, model_dir: Path, cfg: Any, n: int = 3
) -> tuple[list[dict[str, Any]], list[float]]:
    """Test-split rows the pipeline evaluated, as V1 instances built by the use case's serving contract from
    the validated tables (the same definitions as training), with the pipeline's probabilities. Rows the
    contract refuses (a clinical patient already diagnosed: not in the risk set) are passed over."""
    from clinrisk.serving.inference import ServingEngine
    from clinrisk.serving.request import InvalidRequest
    from clinrisk.usecase_io import scan_validated
    from clinrisk.usecases import get

    uc = get(usecase)
    tables = {
        t: lf.collect() for t, lf in scan_validated(uc, pipeline_dir / "merge-data" / "validated").items()
    }
    engine = ServingEngine.from_dir(model_dir, cfg.serving)
    instances: list[dict[str, Any]] = []
    expected: list[float] = []
    for pid, year, prob in predictions.select("patient_id", "year", "probability").iter_rows():
        (inst,) = uc.serving.instances(tables, [(pid, year)])
        try:
            engine.score({"instances": [inst]})
        except InvalidRequest:
            continue
        instances.append(inst)
        expected.append(float(prob))
        if len(instances) == n:
            return instances, expected
    raise AssertionError(f"{usecase}: fewer than {n} servable evaluated rows in the validated data")


def _serve(stack: Stack, model_dir: Path, usecase: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The serving image on the downloaded model dir (tier 2), else `clinrisk serve` on the host."""
    from clinrisk.images import serving_image

    port = sv.free_port()
    log = stack.work / f"serving-{usecase}.log"
    serve_args = ["--bundle", "/mnt/models" if RUNNER == "docker" else str(model_dir),
                  "--set", f"run.usecase={usecase}", "--set", "serving.host=127.0.0.1",
                  "--set", f"serving.http_port={port}", "--set", f"serving.grpc_port={sv.free_port()}"]  # fmt: skip
    if RUNNER == "docker":
        image = serving_image()
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode \
            == 0, f"serving image {image} not built (images/build.sh serving)"  # fmt: skip
        argv = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host",
                "-v", f"{model_dir}:/mnt/models:ro", image, *serve_args]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "clinrisk", "serve", *serve_args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def test_registered_version_is_served_bit_equal_to_the_pipelines_evaluation(
    stack: Stack, pipelines: Any, usecase: str
) -> None:
    from mlflow.tracking import MlflowClient

    from clinrisk.config import load_config
    from clinrisk.serving.client import predict, wait_ready
    from clinrisk.tracking import resolve_storage_uri

    pipeline = pipelines(usecase)
    config = CONFIGS[usecase]
    cfg = load_config(config, _sets(stack, usecase=usecase)[1::2])
    client = MlflowClient(stack.tracking_uri)
    name, version = pipeline["model_uri"].removeprefix("models:/").split("/")
    mv = client.get_model_version(name, version)
    registered_at = mv.creation_timestamp / 1000.0

    # The deploy step's resolution: registry URI -> storage URI in the bucket (not mlflow-artifacts:/).
    storage_uri = resolve_storage_uri(cfg, pipeline["model_uri"])
    assert re.fullmatch(r"s3://mlflow/\d+/models/m-[0-9a-f]+/artifacts/.+", storage_uri), storage_uri
    cli = _clinrisk(stack, "storage-uri", pipeline["model_uri"], "--config", str(config),
                    *_sets(stack, usecase=usecase))  # fmt: skip
    assert cli.returncode == 0 and cli.stdout.strip() == storage_uri, cli.stderr

    # KServe's storage initializer code downloads it from the object store, as in the init container.
    model_dir = stack.work / f"mnt-models-{usecase}"
    dl = _storage_initializer(stack, storage_uri, model_dir)
    assert dl.returncode == 0, f"storage initializer failed:\n{dl.stderr[-3000:]}"
    assert (model_dir / "model.txt").is_file() or any(model_dir.iterdir()), list(model_dir.iterdir())

    client.get_run(str(mv.run_id))  # the version points at a run the server knows
    # The pipeline's own evaluation of the test rows (its outputs; MLflow holds no row-level data).
    preds_file = Catalog.for_kfp_run(pipeline["dir"]).path("predictions")
    instances, expected = _evaluated_instances(
        usecase, pipeline["dir"], pl.read_parquet(preds_file), model_dir, cfg
    )

    proc, base, log = _serve(stack, model_dir, usecase)
    try:
        try:
            wait_ready(base, cfg.serving.model_name, timeout_s=180)
            answer = predict(base, instances, cfg.serving.model_name)
        except Exception as exc:
            raise AssertionError(f"serving failed: {exc}\n--- {log} ---\n{log.read_text()[-3000:]}") from exc
        served_at = time.time()
    finally:
        proc.terminate()
        proc.wait(30)
    got = [p["probability"] for p in answer["predictions"]]
    assert np.array(got, dtype=np.float64).tolist() == expected, (got, expected)  # bit-equal, no tolerance
    print(
        f"\nPLATFORM-MEASURE {usecase} runner={RUNNER}: pipeline {pipeline['seconds']:.1f} s (tiny); "
        f"registration -> served answer {served_at - registered_at:.1f} s; storage URI {storage_uri}"
    )
    measure = {
        "runner": RUNNER,
        "pipeline_s": pipeline["seconds"],
        "registration_to_answer_s": served_at - registered_at,
    }
    (stack.work.parent / f"platform-measure-{usecase}.json").write_text(json.dumps(measure))


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


def test_register_against_an_unreachable_server_is_one_line(stack: Stack, pipeline: dict[str, Any]) -> None:
    """The register step (what the pipeline's last task runs) against a dead endpoint: one line naming it,
    exit 2, and the real registry gains no version."""
    dead = f"http://127.0.0.1:{sv.free_port()}"
    before = _versions(stack)
    bundle = next(pipeline["dir"].rglob("bundle/model.txt"))
    out = _clinrisk(
        stack, "register", "--config", str(CONFIGS["clinical"]), *_sets(stack, dead), "--bundle",
        str(bundle.parent), timeout=300, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
    )  # fmt: skip
    line = _one_error_line(out)
    assert dead in line, line
    assert _versions(stack) == before


def test_missing_model_version_names_the_uri(stack: Stack, pipeline: dict[str, Any]) -> None:
    line = _one_error_line(_clinrisk(stack, "storage-uri", "models:/clinrisk/999", *_sets(stack)))
    assert "models:/clinrisk/999: cannot resolve registered model" in line


def _challenger(stack: Stack) -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(
            MlflowClient(stack.tracking_uri).get_model_version_by_alias("clinrisk", "challenger").version
        )
    except MlflowException:
        return None


def _versions(stack: Stack) -> int:
    from mlflow.tracking import MlflowClient

    return len(MlflowClient(stack.tracking_uri).search_model_versions("name='clinrisk'"))


# The bundle is the pipeline's, already registered through the good server: registration reuses its version
# and uploads nothing, so what fails it is reading that version's files back through this server
# (registry.check_stored_model). That check was missing after the registry rework, and this exited 0.
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
        # A fresh server's first API call can take longer than the client's connection check allows on a
        # loaded machine; warm it so the failure under test is the object store's, not a slow first answer.
        status, body = sv.http_status(
            f"http://127.0.0.1:{bad.info['port']}/api/2.0/mlflow/experiments/search?max_results=1",
            {"Host": host}, timeout=180,
        )  # fmt: skip
        assert status == 200, f"{case}: the second server does not answer its API: {status} {body[:300]}"
        before = _versions(stack)
        alias_before = _challenger(stack)
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
        assert "(artifact store mlflow-artifacts:/" in line, line  # names the store, not only the server
        assert _versions(stack) == before
        assert _challenger(stack) == alias_before
    finally:
        bad.stop()
