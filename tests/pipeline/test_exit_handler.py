"""The DAG's exit handler: a failed step never leaves the pipeline's MLflow run RUNNING, and registers nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clinrisk.config import load_config, save_config
from clinrisk.errors import StageError
from clinrisk.pipeline_runner import compile_pipeline, run_local
from clinrisk.steps import CONFIG_FILE, finalize_tracking_step

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "generate.n_patients=1500",
    "generate.block_size=500",
    "select.rounds=2",
    "train.num_boost_round=40",
    "evaluate.bootstrap_replicates=5",
]


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _store(out: Path) -> str:
    return f"sqlite:///{out / 'tiny' / 'mlflow' / 'mlflow.db'}"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    cfg = load_config(
        REPO / "configs" / "tiny.yaml", [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    )
    d = tmp_path / "config"
    d.mkdir()
    save_config(cfg, d / CONFIG_FILE)
    return d


def _new_run(config_dir: Path) -> str:
    from clinrisk.tracking import start_run

    return start_run(load_config(config_dir / CONFIG_FILE))


@pytest.mark.parametrize(
    "dag_state,expected", [("FAILED", "FAILED"), ("CANCELED", "KILLED"), ("SUCCEEDED", "FINISHED")]
)
def test_a_running_run_is_closed_with_the_dags_state(config_dir: Path, dag_state: str, expected: str) -> None:
    run_id = _new_run(config_dir)
    assert finalize_tracking_step(config_dir, run_id, dag_state, "task x failed: boom") == expected
    run = _client(load_config(config_dir / CONFIG_FILE).tracking.tracking_uri or "").get_run(run_id)
    assert run.info.status == expected
    assert run.data.tags["kfp.pipeline_state"] == dag_state
    assert run.data.tags["kfp.pipeline_error"] == "task x failed: boom"


def test_a_finished_run_is_left_alone(config_dir: Path) -> None:
    from clinrisk.tracking import end_run

    run_id = _new_run(config_dir)
    end_run(run_id)
    # The DAG can still fail after register (e.g. the canary deploy): the run keeps what it recorded.
    assert finalize_tracking_step(config_dir, run_id, "FAILED") == "FINISHED"
    run = _client(load_config(config_dir / CONFIG_FILE).tracking.tracking_uri or "").get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kfp.pipeline_state"] == "FAILED"


def test_no_tracking_run_is_a_no_op(config_dir: Path) -> None:
    assert finalize_tracking_step(config_dir, "", "FAILED") == ""


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
    assert "quarantine" in run.data.tags.get("kfp.pipeline_error", "quarantine")
    assert client.search_model_versions() == []
    run_dir = next(tmp_path.glob("tiny/clinrisk-training-*"))
    assert (run_dir / "finalize-tracking").is_dir()
    assert not (run_dir / "register").exists()


def test_compiled_dag_has_the_exit_handler(tmp_path: Path) -> None:
    ir = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    root = ir["root"]["dag"]["tasks"]
    exit_task = root["finalize-tracking"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    assert "status" in exit_task["inputs"]["parameters"]
    body = ir["components"][root["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    # Everything after start-tracking runs inside the handler.
    assert {"plan-generation", "merge-data", "train", "evaluate", "register"} <= set(body)
    assert {"resolve-config", "start-tracking", "finalize-tracking", "exit-handler-1"} == set(root)
