"""Tier 2: ``clinrisk pipeline run --runner docker`` runs the whole DAG with kfp.local's DockerRunner, each
task in the pipeline image (non-root, read-only root FS, no network).

The ``docker``-marked tests run in ``make test-images`` (engine + images built there); the argument tests run
everywhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clinrisk.bundle import load_bundle
from clinrisk.config import load_config
from clinrisk.errors import ConfigError, StageError
from clinrisk.images import pipeline_image
from clinrisk.io import list_shards, read_json
from clinrisk.pipeline_runner import (
    RUN_LABEL,
    docker_run_args,
    ensure_docker_image,
    local_store_path,
    run_local,
)
from clinrisk.stages.catalog import FUSED_MODEL_TASK, Catalog
from tests.pipeline.test_local_pipeline import TASKS, TINY

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
# The plan owns the fan-out: TINY asks for 8 shards, but 3,000 patients are 3 blocks of 1,000 (one shard each).
_TINY_GENERATE = load_config(TINY_CONFIG, TINY).generate
SHARDS = min(_TINY_GENERATE.n_shards, -(-_TINY_GENERATE.n_patients // _TINY_GENERATE.block_size))
# The local runners group the shards into at most run.workers tasks per fan-out.
FANOUT_TASKS = min(SHARDS, load_config(TINY_CONFIG, TINY).run.workers)
EXIT_TASK = "finalize-tracking"  # the DAG's exit handler: runs once, after every other task
# generate + validate (one task) per task group, build-features per task group, plus the tasks that run
# once, the model half's one task and the exit task (the local shape: pipeline.fuse_local_steps).
TASK_COUNT = len(TASKS) + 2 + 2 * FANOUT_TASKS


def test_docker_run_args_mirror_a_restricted_pod(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, [f"tracking.tracking_uri=sqlite:///{tmp_path}/tiny/mlflow/mlflow.db"])
    args = docker_run_args(cfg, tmp_path / "tiny")
    assert args["entrypoint"] == [""]  # the KFP command is a full argv, not `clinrisk` arguments
    assert args["user"] == f"{os.getuid()}:{os.getgid()}"
    assert args["read_only"] is True and "/tmp" in args["tmpfs"]
    assert args["cap_drop"] == ["ALL"] and args["network_mode"] == "none"
    # The run root (store, data cache, promotion records) is mounted around the run's own pipeline root.
    (mount,) = args["mounts"]
    assert mount["Source"] == mount["Target"] == str((tmp_path / "tiny").resolve()) and not mount["ReadOnly"]
    server = load_config(TINY_CONFIG, ["tracking.tracking_uri=http://127.0.0.1:5000"])
    assert docker_run_args(server, tmp_path / "tiny")["network_mode"] == "host"


def test_docker_run_args_pass_the_proxy_only_to_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    server = load_config(TINY_CONFIG, ["tracking.tracking_uri=http://mlflow.mlflow.svc.cluster.local:5000"])
    env = docker_run_args(server, tmp_path / "tiny")["environment"]
    assert env["HTTP_PROXY"] == "http://127.0.0.1:3128" and env["NO_PROXY"] == "127.0.0.1,localhost"
    assert "HTTPS_PROXY" not in env
    local = load_config(TINY_CONFIG, [f"tracking.tracking_uri=sqlite:///{tmp_path}/tiny/mlflow/mlflow.db"])
    assert docker_run_args(local, tmp_path / "tiny")["environment"] == {}  # network none: nothing to reach


def test_docker_run_args_refuse_a_store_the_container_cannot_see(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, [f"tracking.tracking_uri=sqlite:///{tmp_path}/elsewhere/mlflow.db"])
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri.*outside the run directory"):
        docker_run_args(cfg, tmp_path / "tiny")


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:////abs/mlflow/mlflow.db", Path("/abs/mlflow")),
        ("file:///abs/mlruns", Path("/abs/mlruns")),
        ("/abs/mlruns", Path("/abs/mlruns")),
        ("http://mlflow:5000", None),
        ("postgresql://u@db/mlflow", None),
    ],
)
def test_local_store_path(uri: str, path: Path | None) -> None:
    assert local_store_path(uri) == path


def test_no_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(StageError, match="no Docker engine answers"):
        ensure_docker_image(pipeline_image())


def _require_engine_and_image() -> None:
    """Skip without an engine (plain pytest), but fail under make test-images (CLINRISK_REQUIRE_DOCKER=1)."""
    try:
        ensure_docker_image(pipeline_image())
    except StageError as exc:
        if os.environ.get("CLINRISK_REQUIRE_DOCKER") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _container_events(image: str, since: float, until: float, runs: Path) -> list[dict[str, Any]]:
    """The engine's own record of the containers of ``image`` that died in [since, until] and belong to the
    one run under ``runs`` (its label: another test's container stopping in the same second is not
    counted)."""
    (run_id,) = [d.name for d in runs.iterdir() if d.is_dir()]
    proc = subprocess.run(
        ["docker", "events", "--since", str(int(since)), "--until", str(int(until) + 1),
         "--filter", "type=container", "--filter", "event=die", "--filter", f"image={image}",
         "--filter", f"label={RUN_LABEL}={run_id}", "--format", "{{json .}}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _docker_pipeline_cmd(output_dir: Path, *extra: str) -> list[str]:
    """`clinrisk pipeline run --runner docker` on the tiny config, writing under ``output_dir``."""
    sets = [a for s in [f"run.output_dir={output_dir}", *TINY] for a in ("--set", s)]
    return [sys.executable, "-m", "clinrisk", "pipeline", "run", "--runner", "docker", *extra,
            "--config", str(TINY_CONFIG), *sets]  # fmt: skip


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`clinrisk pipeline run --runner docker` on the tiny config, through the real CLI."""
    _require_engine_and_image()
    out = tmp_path_factory.mktemp("docker-pipeline")
    since = time.time()
    # -v: kfp.local's own task lines go to the terminal too (quiet runs keep them in the per-task logs).
    proc = subprocess.run(
        _docker_pipeline_cmd(out, "-v"), cwd=REPO, capture_output=True, text=True, timeout=900
    )
    until = time.time()
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # kfp colours its log lines
    assert proc.returncode == 0, log[-6000:]
    events = _container_events(pipeline_image(), since, until, out / "tiny" / "runs")
    return {"root": out / "tiny", "log": log, "events": events}


@pytest.mark.docker
def test_every_task_ran_in_the_pipeline_image(docker_run: dict[str, Any]) -> None:
    log = docker_run["log"]
    # kfp.local's log lines can be lost under ParallelFor (its print swap is not thread-safe), so the count
    # comes from the engine: one container of the pipeline image per task, each exiting 0.
    exits = [e["Actor"]["Attributes"].get("exitCode") for e in docker_run["events"]]
    assert exits == ["0"] * TASK_COUNT, exits
    executed = set(re.findall(r"Executing task '([a-z-]+)'", log))
    assert executed == {
        *TASKS,
        EXIT_TASK,
        FUSED_MODEL_TASK,
        "generate-validate-shard",
        "build-features-shard",
    }
    assert "FAILURE" not in log
    assert "Pipeline 'clinrisk-training' finished with status SUCCESS" in log


@pytest.mark.docker
def test_outputs_are_valid_and_owned_by_the_caller(docker_run: dict[str, Any]) -> None:
    d = (docker_run["root"] / "latest").resolve()
    for task in TASKS:
        assert (d / task).is_dir(), task
    for loop in ("for-loop-2", "for-loop-3"):  # group 1 is the exit handler around the DAG
        assert len(list(d.glob(f"{loop}-iteration-*"))) == FANOUT_TASKS
    assert len(list_shards(d / "merge-features" / "features")) == SHARDS
    io = Catalog.for_kfp_run(d)
    assert io.path("model_bundle") == d / FUSED_MODEL_TASK / "bundle"  # the model half: one task
    bundle = load_bundle(io.path("model_bundle"))
    assert bundle.feature_names
    assert read_json(io.path("evaluation") / "metrics.json")
    # The register step wrote the MLflow store under the mounted run directory.
    assert (docker_run["root"] / "mlflow" / "mlflow.db").stat().st_size > 0
    assert "registered model : models:/clinrisk/1" in docker_run["log"]
    # DockerRunner(user=uid:gid): files on the host belong to the caller, not to the image's user.
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files and {p.stat().st_uid for p in files} == {os.getuid()}


@pytest.mark.docker
def test_failed_step_in_a_container_stops_the_run(tmp_path: Path) -> None:
    _require_engine_and_image()
    since = time.time()
    with pytest.raises(StageError, match="merge-data"):
        run_local(
            TINY_CONFIG,
            [
                f"run.output_dir={tmp_path}",
                *TINY,
                "validate.max_quarantine_fraction=0.0",
                "generate.unit_wrong_label_rate=0.2",
            ],
            runner="docker",
        )
    exits = [
        e["Actor"]["Attributes"].get("exitCode")
        for e in _container_events(pipeline_image(), since, time.time(), tmp_path / "tiny" / "runs")
    ]
    assert len([x for x in exits if x != "0"]) == 1, exits  # the engine saw the failing step's container
    run_dir = next(tmp_path.glob("tiny/runs/*/clinrisk-training-*"))
    assert not (run_dir / "merge-data" / "validated").exists()
    assert not (run_dir / "fit-feature-spec").exists()
    assert not (run_dir / "train").exists() and not (run_dir / FUSED_MODEL_TASK).exists()


@pytest.mark.docker
def test_interrupt_stops_the_task_containers(tmp_path: Path) -> None:
    """SIGINT mid-step with the Docker runner: the task containers are not the runner's descendants, so the
    stop finds them by the run's environment. Nothing keeps running, nothing is published, and the store
    stays consistent."""
    from clinrisk import run_control as rc
    from clinrisk.integrity import check_store

    _require_engine_and_image()
    proc = subprocess.Popen(
        _docker_pipeline_cmd(tmp_path), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    root = tmp_path / "tiny"
    deadline = time.monotonic() + 600
    while not list(root.glob("runs/*/clinrisk-training-*/merge-data")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "merge-data never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "error: interrupted by SIGINT; nothing was published"
    time.sleep(1)
    assert rc.run_processes(root) == []  # container processes carry the run's environment too
    running = subprocess.run(
        ["docker", "ps", "--filter", f"ancestor={pipeline_image()}", "--format", "{{.ID}}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    assert running == []
    assert not (root / "latest").exists()
    (record,) = rc.run_records(root)
    assert record["status"] == rc.INTERRUPTED
    assert check_store(tmp_path) == []
