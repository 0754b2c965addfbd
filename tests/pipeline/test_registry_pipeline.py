"""The registry after real pipeline runs (kfp.local, configs/clinical/tiny.yaml), issues 18 and 19.

- The run holds only small artefacts: validation report (JSON + Markdown), evaluation report and plots, the
  config, the registered model (bundle + code); under 5 MB, no Parquet, no truth table, no raw data.
- Tracking metadata: source, user, git commit or package version, a description with the headline result,
  ``test.*`` beside ``validation.*``, an experiment description.
- Bootstrap: the first model that passes the gate is ``champion`` as well as ``challenger``.
- An identical re-run (kfp.local re-runs every step) reuses the registered version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clinrisk.pipeline_runner import run_local

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "clinical" / "tiny.yaml"
FAST = [
    "select.rounds=2",
    "select.probe_rounds_boost=20",
    "train.num_boost_round=60",
    "evaluate.bootstrap_replicates=10",
]
ROW_LEVEL_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc", ".csv")
MAX_RUN_BYTES = 5 * 1024 * 1024
# Two tiny pipeline runs in one fixture (a few minutes idle; far more on a loaded machine).
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The same config twice into one output dir (one store)."""
    out = tmp_path_factory.mktemp("registry_pipeline")
    first = run_local(TINY, [f"run.output_dir={out}", *FAST])
    second = run_local(TINY, [f"run.output_dir={out}", *FAST])
    return first, second


def _client(result: Any) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=result.tracking_uri, registry_uri=result.tracking_uri)


def _name(result: Any) -> str:
    return result.model_uri.removeprefix("models:/").split("/")[0]


def _run_of(result: Any) -> Any:
    client = _client(result)
    version = result.model_uri.rsplit("/", 1)[1]
    return client.get_run(client.get_model_version(_name(result), version).run_id)


def run_artefacts(tracking_uri: str, name: str, version: str) -> dict[str, int]:
    """Every file the registered version's run holds (its artifacts and, MLflow 3, the logged model's
    folder), relative path -> size."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(name, version)
    roots = [Path(client.get_run(mv.run_id).info.artifact_uri.removeprefix("file://"))]
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    roots.append(Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://")))
    return {str(f.relative_to(r)): f.stat().st_size for r in roots for f in r.rglob("*") if f.is_file()}


def assert_small_and_without_row_level_data(files: dict[str, int]) -> None:
    """Under 5 MB; no Parquet (or other table) file; nothing from the raw, truth or quarantine folders."""
    assert sum(files.values()) < MAX_RUN_BYTES, f"{sum(files.values())} bytes"
    assert not [f for f in files if f.lower().endswith(ROW_LEVEL_SUFFIXES)]
    data = [f for f in files if not f.startswith("code/")]  # code/: the clinrisk package (truth.py etc.)
    assert not [f for f in data if any(p.startswith(("truth", "raw", "quarantine")) for p in Path(f).parts)]
    assert "evaluation/predictions.parquet" not in files  # patient ids + true labels stay on disk


def test_run_artefacts_are_small_and_hold_no_row_level_data(two_runs) -> None:  # type: ignore[no-untyped-def]
    first, _ = two_runs
    files = run_artefacts(first.tracking_uri, _name(first), "1")
    assert_small_and_without_row_level_data(files)
    for want in (
        "validation/report.json",
        "validation/report.md",
        "evaluation/report.md",
        "evaluation/metrics.json",
        "config/config.yaml",
        "MLmodel",
        "requirements.txt",
        "input_example.json",
        "code/clinrisk/mlflow_model.py",
    ):
        assert want in files, (want, sorted(files))
    assert any(f.startswith("evaluation/plots/") and f.endswith(".png") for f in files)
    assert any(f.startswith("artifacts/bundle/") for f in files), "the bundle travels with the model"


def test_run_has_the_metadata_users_expect(two_runs) -> None:  # type: ignore[no-untyped-def]
    first, _ = two_runs
    run = _run_of(first)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["mlflow.source.name"].startswith("clinrisk-training pipeline")
    assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.user"]
    assert tags["clinrisk.version"]
    assert len(tags.get("mlflow.source.git.commit", "")) == 40  # the tests run from a checkout
    note = tags["mlflow.note.content"]
    assert "Test split" in note and "AUC" in note and "Registered" in note and "@champion" in note
    assert "test.true_auc" in metrics and "test.recorded_auc" in metrics
    assert any(k.startswith("validation.") for k in metrics)
    assert "true_auc" not in metrics and "recorded_auc" not in metrics  # no unprefixed test metrics
    exp = _client(first).get_experiment(run.info.experiment_id)
    assert "challenger" in exp.tags["mlflow.note.content"]


def test_first_model_becomes_champion(two_runs) -> None:  # type: ignore[no-untyped-def]
    first, _ = two_runs
    client, name = _client(first), _name(first)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    assert champion.tags["gate_decision"] == "promote"
    records = list((first.run_root / "promotion").glob("*-v1/decision.json"))
    assert len(records) == 1


def test_identical_rerun_reuses_the_version(two_runs) -> None:  # type: ignore[no-untyped-def]
    from clinrisk import registry

    first, second = two_runs
    assert second.pipeline_dir != first.pipeline_dir
    assert second.model_uri == first.model_uri
    client, name = _client(second), _name(second)
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    exp_id = _run_of(first).info.experiment_id
    latest = client.search_runs([exp_id], order_by=["attributes.start_time DESC"])[0]
    assert latest.info.run_id != _run_of(first).info.run_id
    assert latest.data.tags["clinrisk.registration"].startswith("reused v1")
    assert latest.info.status == "FINISHED"
    assert registry.registry_problems(client, name) == []
