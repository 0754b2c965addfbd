"""The DAG's exit handler: a failed step never leaves the pipeline's MLflow run RUNNING, and registers nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml

from clinrisk.config import load_config
from clinrisk.errors import StageError
from clinrisk.pipeline_params import PipelineParams, resolve
from clinrisk.pipeline_runner import compile_pipeline, run_local
from clinrisk.stages.catalog import FUSED_MODEL_TASK
from clinrisk.steps import MODEL_URI_TAG, finalize_tracking_step

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "generate.n_patients=1500",
    "generate.block_size=500",
    "select.rounds=2",
    "train.num_boost_round=40",
    "evaluate.bootstrap_replicates=10",
]


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _store(out: Path) -> str:
    return f"sqlite:///{out / 'tiny' / 'mlflow' / 'mlflow.db'}"


@pytest.fixture
def params(tmp_path: Path) -> PipelineParams:
    """The pipeline parameters of a local run: the effective config pasted as YAML."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml", [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    )
    return PipelineParams(config_yaml=yaml.safe_dump(cfg.to_dict()))


def _new_run(params: PipelineParams, kfp_run_id: str) -> tuple[str, str]:
    """Start an MLflow run as start_tracking does; (run id, tracking URI)."""
    from clinrisk.tracking import start_run

    cfg = resolve(params, Path(tempfile.mkdtemp()))
    return start_run(cfg, kfp_run_id=kfp_run_id), str(cfg.tracking.tracking_uri)


@pytest.mark.parametrize(
    "dag_state,expected", [("FAILED", "FAILED"), ("CANCELED", "KILLED"), ("SUCCEEDED", "FINISHED")]
)
def test_a_running_run_is_closed_with_the_dags_state(
    params: PipelineParams, dag_state: str, expected: str
) -> None:
    run_id, uri = _new_run(params, "job-1")
    other, _ = _new_run(params, "job-2")  # another pipeline run's MLflow run: not touched
    assert finalize_tracking_step(params, "job-1", dag_state, "task x failed: boom") == ""
    run = _client(uri).get_run(run_id)
    assert run.info.status == expected
    assert run.data.tags["kfp.pipeline_state"] == dag_state
    assert run.data.tags["kfp.pipeline_error"] == "task x failed: boom"
    assert _client(uri).get_run(other).info.status == "RUNNING"


def test_a_finished_run_is_left_alone_and_its_model_uri_returned(params: PipelineParams) -> None:
    from clinrisk.tracking import end_run

    run_id, uri = _new_run(params, "job-1")
    _client(uri).set_tag(run_id, MODEL_URI_TAG, "models:/clinrisk/7")
    end_run(run_id)
    # The DAG can still fail after register (e.g. the canary deploy): the run keeps what it recorded.
    assert finalize_tracking_step(params, "job-1", "FAILED") == "models:/clinrisk/7"
    run = _client(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kfp.pipeline_state"] == "FAILED"


def test_nothing_to_close_is_a_no_op(params: PipelineParams) -> None:
    assert finalize_tracking_step(params, "no-such-job", "FAILED") == ""
    # resolve_config failed on these parameters, so no MLflow run was opened: nothing to do, no new error.
    assert finalize_tracking_step(PipelineParams(config_name="nope"), "job-1", "FAILED") == ""


def test_failed_step_leaves_a_failed_mlflow_run_and_registers_nothing(tmp_path: Path) -> None:
    # No quarantine tolerated + wrong unit labels on 20% of rows: merge-data fails, after start-tracking.
    with pytest.raises(StageError):
        run_local(
            REPO / "configs" / "tiny.yaml",
            [
                f"run.output_dir={tmp_path}",
                *FAST,
                "validate.max_quarantine_fraction=0.0",
                "generate.unit_wrong_label_rate=0.2",
            ],
        )
    client = _client(_store(tmp_path))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    (run,) = runs
    assert run.info.status == "FAILED", run.info.status
    assert run.data.tags["kfp.pipeline_state"] == "FAILED"
    assert "failed" in run.data.tags["kfp.pipeline_error"]  # kfp.local: "Task exit-handler-1 failed."
    assert client.search_model_versions() == []
    run_dir = next(tmp_path.glob("tiny/runs/*/clinrisk-training-*"))
    assert (run_dir / "finalize-tracking").is_dir()
    assert not (run_dir / "register").exists() and not (run_dir / FUSED_MODEL_TASK).exists()


def test_compiled_dag_has_the_exit_handler(tmp_path: Path) -> None:
    # the pipeline spec: the first document (the second is the Kubernetes platform spec)
    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    root = ir["root"]["dag"]["tasks"]
    exit_task = root["finalize-tracking"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    assert "status" in exit_task["inputs"]["parameters"]
    body = ir["components"][root["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    # The whole DAG runs inside the handler; the exit task takes pipeline parameters only.
    assert {"resolve-config", "start-tracking", "merge-data", "train", "evaluate", "register"} <= set(body)
    assert set(root) == {"finalize-tracking", "exit-handler-1"}
    assert "taskOutputParameter" not in str(exit_task["inputs"]) and "taskOutputArtifact" not in str(
        exit_task
    )
    assert ir["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"
